//! The packet path: XDP and TC programs on the interfaces that face workloads whose
//! sockets live elsewhere (a VM's tap, a bridge, the LAN side of a gateway).
//!
//! - `ingress`: a SYN from a workload asks its breaker, as connect4/6 would; a
//!   passed one starts a flow in `PACKET_FLOWS`, a rejected one is answered with a
//!   reset or dropped.
//! - `egress`: the upstream's answer (SYN-ACK, reset, ICMP error) ends the flow
//!   and is its outcome, concluded as sock_ops concludes one.
//! - `expire`: run by the daemon for a flow past its timeout.
//!
//! Whatever a hook cannot read (truncated, malformed, fragments, other protocols)
//! passes untouched: the packet path never drops what it does not understand.
pub mod egress;
pub mod expire;
pub mod ingress;
pub mod nat;

use breaker_common::{
    abi::{AF_INET, AF_INET6},
    dest::v4_mapped,
    packet::{csum_replace2, csum_replace4, FlowKey, PacketCounters},
};

use aya_ebpf::{
    bindings::BPF_F_PSEUDO_HDR,
    helpers::generated::{bpf_skb_change_tail, bpf_xdp_adjust_tail},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use nat::{Rewrite, OFFSET_MASK};

use crate::maps::PACKET_COUNTERS;

/// A program context that hands over packet bytes (XDP or TC).
pub trait Packet: EbpfContext {
    /// The packet as it is now: read again after anything that may move it.
    fn frame(&self) -> Frame;
    /// Makes the packet `len` bytes long (cut or grown at its end).
    fn resize(&self, len: usize) -> bool;
    /// Changes one address and port, checksums kept right.
    fn rewrite(&self, rw: &Rewrite) -> bool;
}

impl Packet for XdpContext {
    #[inline(always)]
    fn frame(&self) -> Frame {
        Frame {
            data: self.data(),
            end: self.data_end(),
        }
    }

    #[inline(always)]
    fn resize(&self, len: usize) -> bool {
        let frame = self.frame();
        let delta = len as i32 - (frame.end - frame.data) as i32;
        // SAFETY: the program's own context; the kernel bounds the change.
        unsafe { bpf_xdp_adjust_tail(self.ctx, delta) == 0 }
    }

    /// By hand: a frame from a NIC's driver carries complete checksums, updated
    /// here incrementally.
    #[inline(always)]
    fn rewrite(&self, rw: &Rewrite) -> bool {
        let f = self.frame();
        let (Some(tcp_sum), Some(port)) = (
            f.at::<[u8; 2]>(rw.tcp_csum_off & OFFSET_MASK),
            f.at::<[u8; 2]>(rw.port_off & OFFSET_MASK),
        ) else {
            return false;
        };
        // SAFETY: `at` checked every pointer written through is inside the packet.
        unsafe {
            let mut check = *tcp_sum;
            if rw.v4 != 0 {
                let (Some(addr), Some(ip_sum)) = (
                    f.at::<[u8; 4]>(rw.addr_off & OFFSET_MASK),
                    f.at::<[u8; 2]>(rw.ip_csum_off & OFFSET_MASK),
                ) else {
                    return false;
                };
                let (old, new) = (rw.old_addr[3].to_ne_bytes(), rw.new_addr[3].to_ne_bytes());
                *ip_sum = csum_replace4(*ip_sum, old, new);
                // A quoted header's address and checksum cancel out.
                if rw.quoted == 0 {
                    check = csum_replace4(check, old, new);
                }
                *addr = new;
            } else {
                let Some(addr) = f.at::<[[u8; 4]; 4]>(rw.addr_off & OFFSET_MASK) else {
                    return false;
                };
                for i in 0..4 {
                    let (old, new) = (rw.old_addr[i].to_ne_bytes(), rw.new_addr[i].to_ne_bytes());
                    check = csum_replace4(check, old, new);
                    (*addr)[i] = new;
                }
            }
            let (old, new) = (rw.old_port.to_ne_bytes(), rw.new_port.to_ne_bytes());
            *tcp_sum = csum_replace2(check, old, new);
            *port = new;
        }
        true
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn frame(&self) -> Frame {
        Frame {
            data: self.data(),
            end: self.data_end(),
        }
    }

    #[inline(always)]
    fn resize(&self, len: usize) -> bool {
        // SAFETY: the program's own skb; the kernel bounds the change.
        unsafe { bpf_skb_change_tail(self.skb.skb.cast(), len as u32, 0) == 0 }
    }

    /// Through the kernel's helpers: an skb may carry a partial checksum (a local
    /// sender's, offloaded), which they update as it needs and a by-hand update
    /// would break.
    #[inline(always)]
    fn rewrite(&self, rw: &Rewrite) -> bool {
        // A quoted packet's address is plain bytes of the ICMP message.
        let pseudo = if rw.quoted == 0 {
            BPF_F_PSEUDO_HDR as u64
        } else {
            0
        };
        let tcp_sum = rw.tcp_csum_off;
        let ok = if rw.v4 != 0 {
            let (old, new) = (rw.old_addr[3] as u64, rw.new_addr[3] as u64);
            // A quoted header's address and checksum cancel out of the ICMP one.
            self.l3_csum_replace(rw.ip_csum_off, old, new, 4).is_ok()
                && (rw.quoted != 0 || self.l4_csum_replace(tcp_sum, old, new, pseudo | 4).is_ok())
                && self.store(rw.addr_off, &rw.new_addr[3], 0).is_ok()
        } else {
            let mut ok = true;
            for i in 0..4 {
                let (old, new) = (rw.old_addr[i] as u64, rw.new_addr[i] as u64);
                ok = ok && self.l4_csum_replace(tcp_sum, old, new, pseudo | 4).is_ok();
            }
            ok && self.store(rw.addr_off, &rw.new_addr, 0).is_ok()
        };
        ok && self
            .l4_csum_replace(tcp_sum, rw.old_port as u64, rw.new_port as u64, 2)
            .is_ok()
            && self.store(rw.port_off, &rw.new_port, 0).is_ok()
    }
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 extension headers walked before giving up on a packet (and passing it).
const MAX_EXTENSION_HEADERS: usize = 4;

/// A packet's bytes, as the XDP or TC context hands them over.
#[derive(Clone, Copy)]
pub struct Frame {
    pub data: usize,
    pub end: usize,
}

impl Frame {
    /// A pointer to a `T` at `offset`, if the packet holds all of it.
    #[inline(always)]
    pub fn at<T>(&self, offset: usize) -> Option<*mut T> {
        let start = self.data + offset;
        if start + core::mem::size_of::<T>() > self.end {
            return None;
        }
        Some(start as *mut T)
    }

    /// The byte at `offset`, if the packet holds it and the byte after it: a
    /// one-byte check compiles to `start < end`, which the verifier takes as no
    /// range at all. Every byte read here has more header after it.
    #[inline(always)]
    pub fn u8(&self, offset: usize) -> Option<u8> {
        // SAFETY: `at` checked both bytes are inside the packet.
        self.at::<[u8; 2]>(offset).map(|p| unsafe { (*p)[0] })
    }

    /// Two bytes as they are in the packet (network order).
    #[inline(always)]
    pub fn raw_u16(&self, offset: usize) -> Option<u16> {
        // SAFETY: `at` checked both bytes; unaligned reads are allowed on packets.
        self.at::<[u8; 2]>(offset)
            .map(|p| u16::from_ne_bytes(unsafe { *p }))
    }

    /// Four bytes as they are in the packet (network order).
    #[inline(always)]
    pub fn raw_u32(&self, offset: usize) -> Option<u32> {
        // SAFETY: as in `raw_u16`.
        self.at::<[u8; 4]>(offset)
            .map(|p| u32::from_ne_bytes(unsafe { *p }))
    }

    /// Sixteen bytes as four network-order words.
    #[inline(always)]
    pub fn raw_addr6(&self, offset: usize) -> Option<[u32; 4]> {
        // SAFETY: as in `raw_u16`.
        self.at::<[u32; 4]>(offset)
            .map(|p| unsafe { core::ptr::read_unaligned(p) })
    }
}

/// Why a packet is passed without a look: counted as `skipped`.
pub struct Skip;

/// The IP layer of a packet: its addresses (IPv4 v4-mapped, as in `DestKey`), the
/// transport protocol and where the transport header starts.
#[derive(Clone, Copy)]
pub struct Ip {
    pub family: u16,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub proto: u8,
    /// Offset of the IP header (after Ethernet and any VLAN tag).
    pub l3: usize,
    /// Offset of the transport header.
    pub l4: usize,
    /// Offset just past the IP packet, as its length field says.
    pub end: usize,
    /// TTL or hop limit.
    pub hops: u8,
}

/// The Ethernet header, with at most one VLAN tag: the IP layer's ethertype and offset.
#[inline(always)]
fn link(frame: &Frame) -> Option<(u16, usize)> {
    let ethertype = u16::from_be(frame.raw_u16(12)?);
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        Some((u16::from_be(frame.raw_u16(16)?), ETH_HLEN + 4))
    } else {
        Some((ethertype, ETH_HLEN))
    }
}

/// The IP layer of the frame. `Ok(None)`: not IP at all; `Err(Skip)`: IP this
/// hook cannot read (truncated, a fragment, too many extension headers).
#[inline(always)]
pub fn ip(frame: &Frame) -> Result<Option<Ip>, Skip> {
    let Some((ethertype, l3)) = link(frame) else {
        return Err(Skip);
    };
    match ethertype {
        ETH_P_IP => ipv4(frame, l3).map(Some),
        ETH_P_IPV6 => ipv6(frame, l3).map(Some),
        _ => Ok(None),
    }
}

#[inline(always)]
fn ipv4(frame: &Frame, l3: usize) -> Result<Ip, Skip> {
    let vihl = frame.u8(l3).ok_or(Skip)?;
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(Skip);
    }
    // More fragments, or an offset: only a first fragment carries the TCP
    // header, and even that one is not a whole segment.
    let frag = u16::from_be(frame.raw_u16(l3 + 6).ok_or(Skip)?);
    if frag & 0x3fff != 0 {
        return Err(Skip);
    }
    let total = u16::from_be(frame.raw_u16(l3 + 2).ok_or(Skip)?) as usize;
    let hops = frame.u8(l3 + 8).ok_or(Skip)?;
    let proto = frame.u8(l3 + 9).ok_or(Skip)?;
    let src = frame.raw_u32(l3 + 12).ok_or(Skip)?;
    let dst = frame.raw_u32(l3 + 16).ok_or(Skip)?;
    Ok(Ip {
        family: AF_INET,
        src: v4_mapped(src),
        dst: v4_mapped(dst),
        proto,
        l3,
        l4: l3 + ihl,
        end: l3 + total,
        hops,
    })
}

#[inline(always)]
fn ipv6(frame: &Frame, l3: usize) -> Result<Ip, Skip> {
    if frame.u8(l3).ok_or(Skip)? >> 4 != 6 {
        return Err(Skip);
    }
    let payload = u16::from_be(frame.raw_u16(l3 + 4).ok_or(Skip)?) as usize;
    let mut next = frame.u8(l3 + 6).ok_or(Skip)?;
    let hops = frame.u8(l3 + 7).ok_or(Skip)?;
    let src = frame.raw_addr6(l3 + 8).ok_or(Skip)?;
    let dst = frame.raw_addr6(l3 + 24).ok_or(Skip)?;
    let mut l4 = l3 + 40;
    for _ in 0..MAX_EXTENSION_HEADERS {
        let len = match next {
            // Hop-by-hop, routing, destination options: 8-byte units past the first 8.
            0 | 43 | 60 => (frame.u8(l4 + 1).ok_or(Skip)? as usize + 1) * 8,
            // Authentication header: 4-byte units past the first 8.
            51 => (frame.u8(l4 + 1).ok_or(Skip)? as usize + 2) * 4,
            // A fragment: never a whole segment.
            44 => return Err(Skip),
            _ => {
                return Ok(Ip {
                    family: AF_INET6,
                    src,
                    dst,
                    proto: next,
                    l3,
                    l4,
                    end: l3 + 40 + payload,
                    hops,
                })
            }
        };
        next = frame.u8(l4).ok_or(Skip)?;
        l4 += len;
    }
    match next {
        0 | 43 | 60 | 51 | 44 => Err(Skip),
        _ => Ok(Ip {
            family: AF_INET6,
            src,
            dst,
            proto: next,
            l3,
            l4,
            end: l3 + 40 + payload,
            hops,
        }),
    }
}

/// The TCP flags of a segment laid out the common way (Ethernet without a tag,
/// then IPv4 without options and no fragment, or IPv6 without extension headers),
/// read with one bounds check and a few byte loads: the fast way past the many
/// segments of established flows. `None` for any other layout, which is read in
/// full (and counted as skipped if it cannot be).
#[inline(always)]
pub fn plain_tcp_flags(frame: &Frame) -> Option<u8> {
    const V4_FLAGS: usize = ETH_HLEN + 20 + 13;
    const V6_FLAGS: usize = ETH_HLEN + 40 + 13;
    let h = frame.at::<[u8; V4_FLAGS + 1]>(0)?;
    // SAFETY: `at` checked the bytes read here are inside the packet.
    let b = |i: usize| unsafe { (*h)[i] };
    match u16::from_be_bytes([b(12), b(13)]) {
        ETH_P_IP => {
            let fragment = (b(ETH_HLEN + 6) & 0x3f) | b(ETH_HLEN + 7) != 0;
            let plain = b(ETH_HLEN) == 0x45 && b(ETH_HLEN + 9) == IPPROTO_TCP && !fragment;
            (plain && b(V4_FLAGS - 1) >> 4 >= 5).then(|| b(V4_FLAGS))
        }
        ETH_P_IPV6 => {
            let h = frame.at::<[u8; V6_FLAGS + 1]>(0)?;
            // SAFETY: as above.
            let b = |i: usize| unsafe { (*h)[i] };
            let plain = b(ETH_HLEN) >> 4 == 6 && b(ETH_HLEN + 6) == IPPROTO_TCP;
            (plain && b(V6_FLAGS - 1) >> 4 >= 5).then(|| b(V6_FLAGS))
        }
        _ => None,
    }
}

/// The fields of a TCP header the packet path reads.
#[derive(Clone, Copy)]
pub struct Tcp {
    /// Ports as in the packet (network order).
    pub src_port: u16,
    pub dst_port: u16,
    /// Host order.
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The header's length, options included.
    pub header_len: usize,
}

#[inline(always)]
pub fn tcp(frame: &Frame, l4: usize) -> Result<Tcp, Skip> {
    // The whole 20-byte header must be there, options aside.
    let header = frame.at::<[u8; 20]>(l4).ok_or(Skip)?;
    // SAFETY: `at` checked the 20 bytes are inside the packet.
    let h = unsafe { *header };
    if h[12] >> 4 < 5 {
        return Err(Skip);
    }
    Ok(Tcp {
        src_port: u16::from_ne_bytes([h[0], h[1]]),
        dst_port: u16::from_ne_bytes([h[2], h[3]]),
        seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        ack: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        flags: h[13],
        header_len: (h[12] >> 4) as usize * 4,
    })
}

/// The flow a TCP segment belongs to, as the client sends it (`from_client`:
/// source = client) or as the upstream answers it (destination = client).
#[inline(always)]
pub fn flow_of(ip: &Ip, tcp: &Tcp, from_client: bool) -> FlowKey {
    let (client, upstream, client_port, upstream_port) = if from_client {
        (ip.src, ip.dst, tcp.src_port, tcp.dst_port)
    } else {
        (ip.dst, ip.src, tcp.dst_port, tcp.src_port)
    };
    FlowKey {
        client,
        upstream,
        client_port,
        upstream_port,
        family: ip.family,
        _pad: 0,
    }
}

/// Bumps the packet path's own counters on this CPU.
#[inline(always)]
pub fn count(f: impl FnOnce(&mut PacketCounters)) {
    if let Some(c) = PACKET_COUNTERS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; no other writer while this program runs.
        f(unsafe { &mut *c });
    }
}

/// Whether `family` is IPv4 (the other is IPv6).
#[inline(always)]
pub fn is_v4(family: u16) -> bool {
    family == AF_INET
}

const _: () = assert!(AF_INET != AF_INET6);
