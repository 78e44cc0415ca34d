//! Frames for the packet path's programs under BPF_PROG_TEST_RUN: SYNs, answers
//! and ICMP errors as a workload and an upstream would send them, built with
//! etherparse (checksums included), and the odd and broken ones a hook must pass.
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use etherparse::{icmpv4, icmpv6, Icmpv4Type, Icmpv6Type, PacketBuilder, TcpHeader, VlanId};

/// The workload's MAC, and the host's side of its link.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const WINDOW: u16 = 64240;
/// Bytes of TCP options a SYN carries here (MSS, SACK-permitted, timestamps,
/// window scale), so a reset must shed them.
const SYN_OPTIONS: [etherparse::TcpOptionElement; 5] = [
    etherparse::TcpOptionElement::MaximumSegmentSize(1460),
    etherparse::TcpOptionElement::SelectiveAcknowledgementPermitted,
    etherparse::TcpOptionElement::Timestamp(1, 0),
    etherparse::TcpOptionElement::Noop,
    etherparse::TcpOptionElement::WindowScale(7),
];

fn syn_header(src_port: u16, dst_port: u16, isn: u32) -> TcpHeader {
    let mut tcp = TcpHeader::new(src_port, dst_port, isn, WINDOW);
    tcp.syn = true;
    tcp.set_options(&SYN_OPTIONS).expect("options fit");
    tcp
}

/// A SYN from `client` to `upstream`, as it arrives from the workload.
pub fn syn_v4(client: SocketAddrV4, upstream: SocketAddrV4, isn: u32) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, HOST_MAC)
        .ipv4(client.ip().octets(), upstream.ip().octets(), 64)
        .tcp_header(syn_header(client.port(), upstream.port(), isn));
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("a SYN");
    out
}

/// As [`syn_v4`], carrying `data` (a TCP Fast Open SYN).
pub fn syn_v4_with_data(
    client: SocketAddrV4,
    upstream: SocketAddrV4,
    isn: u32,
    data: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, HOST_MAC)
        .ipv4(client.ip().octets(), upstream.ip().octets(), 64)
        .tcp_header(syn_header(client.port(), upstream.port(), isn));
    let mut out = Vec::new();
    b.write(&mut out, data).expect("a SYN");
    out
}

/// As [`syn_v4`], with one 802.1Q tag.
pub fn syn_v4_vlan(client: SocketAddrV4, upstream: SocketAddrV4, isn: u32, vlan: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, HOST_MAC)
        .single_vlan(VlanId::try_new(vlan).expect("a VLAN id"))
        .ipv4(client.ip().octets(), upstream.ip().octets(), 64)
        .tcp_header(syn_header(client.port(), upstream.port(), isn));
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("a SYN");
    out
}

/// As [`syn_v4`], IPv6.
pub fn syn_v6(client: SocketAddrV6, upstream: SocketAddrV6, isn: u32) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, HOST_MAC)
        .ipv6(client.ip().octets(), upstream.ip().octets(), 64)
        .tcp_header(syn_header(client.port(), upstream.port(), isn));
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("a SYN");
    out
}

/// As [`syn_v6`], with a hop-by-hop options header (PadN) before TCP.
pub fn syn_v6_hop_by_hop(client: SocketAddrV6, upstream: SocketAddrV6, isn: u32) -> Vec<u8> {
    let mut p = syn_v6(client, upstream, isn);
    let ip = 14;
    // Next header: hop-by-hop; payload 8 bytes longer.
    p[ip + 6] = 0;
    let len = u16::from_be_bytes([p[ip + 4], p[ip + 5]]) + 8;
    p[ip + 4..ip + 6].copy_from_slice(&len.to_be_bytes());
    // Next: TCP; length 0 (8 bytes); PadN of 4 bytes of data.
    let ext = [6u8, 0, 1, 4, 0, 0, 0, 0];
    p.splice(ip + 40..ip + 40, ext);
    p
}

/// The first fragment of a SYN (More Fragments set).
pub fn fragment_v4(client: SocketAddrV4, upstream: SocketAddrV4, isn: u32) -> Vec<u8> {
    let mut p = syn_v4(client, upstream, isn);
    p[14 + 6] |= 0x20;
    fix_ipv4_checksum(&mut p, 14);
    p
}

/// A data segment of an established flow, from the workload.
pub fn data_v4(client: SocketAddrV4, upstream: SocketAddrV4, seq: u32, ack: u32) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, HOST_MAC)
        .ipv4(client.ip().octets(), upstream.ip().octets(), 64)
        .tcp(client.port(), upstream.port(), seq, WINDOW)
        .ack(ack)
        .psh();
    let mut out = Vec::new();
    b.write(&mut out, b"GET / HTTP/1.1\r\n\r\n")
        .expect("a segment");
    out
}

/// How one side ends a flow.
#[derive(Clone, Copy, Debug)]
pub enum Close {
    /// FIN|ACK.
    Fin,
    /// RST|ACK.
    Reset,
}

/// The workload's FIN or reset on an established flow.
pub fn close_v4(
    client: SocketAddrV4,
    upstream: SocketAddrV4,
    seq: u32,
    ack: u32,
    how: Close,
) -> Vec<u8> {
    let mut tcp = TcpHeader::new(client.port(), upstream.port(), seq, WINDOW);
    tcp.ack = true;
    tcp.acknowledgment_number = ack;
    match how {
        Close::Fin => tcp.fin = true,
        Close::Reset => tcp.rst = true,
    }
    let b = PacketBuilder::ethernet2(CLIENT_MAC, HOST_MAC)
        .ipv4(client.ip().octets(), upstream.ip().octets(), 64)
        .tcp_header(tcp);
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("a segment");
    out
}

/// How an upstream answers a SYN.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    SynAck,
    Reset,
    /// A bare ACK (answers nothing).
    Ack,
    /// FIN|ACK: the upstream ends an established flow.
    Fin,
}

/// `reply` from `upstream` to `client`, acknowledging `ack`.
pub fn answer_v4(upstream: SocketAddrV4, client: SocketAddrV4, reply: Reply, ack: u32) -> Vec<u8> {
    let mut tcp = TcpHeader::new(upstream.port(), client.port(), 7_000_000, WINDOW);
    tcp.ack = true;
    tcp.acknowledgment_number = ack;
    match reply {
        Reply::SynAck => tcp.syn = true,
        Reply::Reset => {
            tcp.rst = true;
            tcp.sequence_number = 0;
            tcp.window_size = 0;
        }
        Reply::Ack => {}
        Reply::Fin => tcp.fin = true,
    }
    let b = PacketBuilder::ethernet2(HOST_MAC, CLIENT_MAC)
        .ipv4(upstream.ip().octets(), client.ip().octets(), 63)
        .tcp_header(tcp);
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("an answer");
    out
}

/// As [`answer_v4`], IPv6.
pub fn answer_v6(upstream: SocketAddrV6, client: SocketAddrV6, reply: Reply, ack: u32) -> Vec<u8> {
    let mut tcp = TcpHeader::new(upstream.port(), client.port(), 7_000_000, WINDOW);
    tcp.ack = true;
    tcp.acknowledgment_number = ack;
    match reply {
        Reply::SynAck => tcp.syn = true,
        Reply::Reset => tcp.rst = true,
        Reply::Ack => {}
        Reply::Fin => tcp.fin = true,
    }
    let b = PacketBuilder::ethernet2(HOST_MAC, CLIENT_MAC)
        .ipv6(upstream.ip().octets(), client.ip().octets(), 63)
        .tcp_header(tcp);
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("an answer");
    out
}

/// An ICMP destination unreachable from `router` to the SYN's sender, quoting the
/// SYN's IP header and the first 8 bytes of its TCP header (RFC 792).
pub fn icmp4_unreachable(
    router: Ipv4Addr,
    syn: &[u8],
    code: icmpv4::DestUnreachableHeader,
) -> Vec<u8> {
    let ip = &syn[14..];
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let quoted = &ip[..ihl + 8];
    let client: [u8; 4] = ip[12..16].try_into().expect("4 bytes");
    let b = PacketBuilder::ethernet2(HOST_MAC, CLIENT_MAC)
        .ipv4(router.octets(), client, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(code));
    let mut out = Vec::new();
    b.write(&mut out, quoted).expect("an ICMP error");
    out
}

/// As [`icmp4_unreachable`], ICMPv6, quoting the SYN's IPv6 header and 8 bytes.
pub fn icmp6_unreachable(router: Ipv6Addr, syn: &[u8]) -> Vec<u8> {
    let ip = &syn[14..];
    let quoted = &ip[..40 + 8];
    let client: [u8; 16] = ip[8..24].try_into().expect("16 bytes");
    let b = PacketBuilder::ethernet2(HOST_MAC, CLIENT_MAC)
        .ipv6(router.octets(), client, 64)
        .icmpv6(Icmpv6Type::DestinationUnreachable(
            icmpv6::DestUnreachableCode::Port,
        ));
    let mut out = Vec::new();
    b.write(&mut out, quoted).expect("an ICMPv6 error");
    out
}

/// Recomputes the IPv4 header checksum of the header at `at`, with the
/// project's own one's complement sum.
pub fn fix_ipv4_checksum(p: &mut [u8], at: usize) {
    let ihl = (p[at] & 0x0f) as usize * 4;
    p[at + 10..at + 12].copy_from_slice(&[0, 0]);
    let c = breaker_common::packet::fold(breaker_common::packet::sum_words(&p[at..at + ihl], 0));
    p[at + 10..at + 12].copy_from_slice(&c.to_be_bytes());
}
