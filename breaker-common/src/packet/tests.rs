use etherparse::{IpSlice, Ipv4Slice, Ipv6Slice, TcpSlice};

use super::*;
use crate::dest::v4_mapped;

const CLIENT4: [u8; 4] = [10, 0, 2, 2];
const UPSTREAM4: [u8; 4] = [10, 0, 3, 2];

fn ne4(a: [u8; 4]) -> u32 {
    u32::from_ne_bytes(a)
}

fn ne6(a: [u8; 16]) -> [u32; 4] {
    crate::dest::bytes_to_words(a)
}

#[test]
fn an_ipv4_reset_comes_from_the_upstream_acks_the_syn_and_checks_out() {
    let isn = 0xffff_ffff; // wraps to ack 0
    let p = reset_v4(
        ne4(CLIENT4),
        ne4(UPSTREAM4),
        40000u16.to_be(),
        80u16.to_be(),
        isn,
    );
    let ip = Ipv4Slice::from_slice(&p).expect("a valid IPv4 packet");
    let h = ip.header();
    assert_eq!(h.source(), UPSTREAM4);
    assert_eq!(h.destination(), CLIENT4);
    assert_eq!(h.ttl(), RESET_TTL);
    assert_eq!(h.total_len() as usize, RESET_V4_LEN);
    assert_eq!(
        h.header_checksum(),
        h.to_header().calc_header_checksum(),
        "the IPv4 header checksum"
    );
    let tcp = TcpSlice::from_slice(ip.payload().payload).expect("a TCP header");
    assert_eq!(tcp.source_port(), 80);
    assert_eq!(tcp.destination_port(), 40000);
    assert!(tcp.rst() && tcp.ack() && !tcp.syn() && !tcp.fin());
    assert_eq!(tcp.sequence_number(), 0);
    assert_eq!(tcp.acknowledgment_number(), 0, "isn + 1, wrapped");
    assert_eq!(tcp.data_offset(), 5);
    let expected = tcp
        .to_header()
        .calc_checksum_ipv4_raw(UPSTREAM4, CLIENT4, &[])
        .expect("checksum");
    assert_eq!(tcp.checksum(), expected, "the TCP checksum");
}

#[test]
fn an_ipv6_reset_comes_from_the_upstream_acks_the_syn_and_checks_out() {
    let client: [u8; 16] = [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let upstream: [u8; 16] = [0xfd, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd, 0, 2];
    let p = reset_v6(
        ne6(client),
        ne6(upstream),
        51000u16.to_be(),
        443u16.to_be(),
        41,
    );
    let ip = Ipv6Slice::from_slice(&p).expect("a valid IPv6 packet");
    let h = ip.header();
    assert_eq!(h.source(), upstream);
    assert_eq!(h.destination(), client);
    assert_eq!(h.hop_limit(), RESET_TTL);
    assert_eq!(h.payload_length(), 20);
    let tcp = TcpSlice::from_slice(ip.payload().payload).expect("a TCP header");
    assert_eq!((tcp.source_port(), tcp.destination_port()), (443, 51000));
    assert!(tcp.rst() && tcp.ack() && !tcp.syn());
    assert_eq!(tcp.acknowledgment_number(), 42);
    let expected = tcp
        .to_header()
        .calc_checksum_ipv6_raw(upstream, client, &[])
        .expect("checksum");
    assert_eq!(tcp.checksum(), expected, "the TCP checksum");
    assert!(matches!(IpSlice::from_slice(&p), Ok(IpSlice::Ipv6(_))));
}

#[test]
fn only_a_segment_acknowledging_the_syn_answers_it() {
    let isn = 1000;
    let cases: [(&str, u8, u32, Option<Answer>); 8] = [
        ("syn-ack", TCP_SYN | TCP_ACK, 1001, Some(Answer::Accepted)),
        ("rst-ack", TCP_RST | TCP_ACK, 1001, Some(Answer::Refused)),
        ("syn-ack acking another syn", TCP_SYN | TCP_ACK, 1002, None),
        ("rst-ack acking another syn", TCP_RST | TCP_ACK, 1000, None),
        ("rst without ack", TCP_RST, 0, None),
        ("a bare syn (simultaneous open)", TCP_SYN, 1001, None),
        ("data", TCP_ACK, 1001, None),
        ("fin-ack", TCP_FIN | TCP_ACK, 1001, None),
    ];
    for (name, flags, ack, expected) in cases {
        assert_eq!(answer(flags, ack, isn), expected, "{name}");
    }
    assert_eq!(
        answer(TCP_SYN | TCP_ACK, 0, u32::MAX),
        Some(Answer::Accepted),
        "wraps"
    );
}

#[test]
fn a_connect_is_a_syn_alone() {
    assert!(is_connect(TCP_SYN));
    assert!(
        is_connect(TCP_SYN | 0x08 | 0x40 | 0x80),
        "PSH, ECE, CWR do not matter"
    );
    for flags in [
        TCP_SYN | TCP_ACK,
        TCP_SYN | TCP_RST,
        TCP_SYN | TCP_FIN,
        TCP_ACK,
        0,
    ] {
        assert!(!is_connect(flags), "{flags:#x}");
    }
}

#[test]
fn unreachable_is_every_destination_unreachable_but_path_mtu() {
    for code in 0..16 {
        assert_eq!(icmp4_unreachable(3, code), code != 4, "code {code}");
    }
    assert!(!icmp4_unreachable(11, 0), "time exceeded");
    assert!(!icmp4_unreachable(0, 0), "echo reply");
    assert!(icmp6_unreachable(1));
    assert!(!icmp6_unreachable(2), "packet too big");
    assert!(!icmp6_unreachable(3), "time exceeded");
}

#[test]
fn errors_that_quote_a_packet_are_rewritten_for_a_redirected_flow_and_nothing_else() {
    // Destination unreachable, time exceeded, parameter problem.
    for t in [3, 11, 12] {
        assert!(icmp4_error(t), "ICMP type {t}");
    }
    // Echo reply and request, source quench, redirect, timestamps.
    for t in [0, 4, 5, 8, 13, 14] {
        assert!(!icmp4_error(t), "ICMP type {t}");
    }
    // Destination unreachable, packet too big, time exceeded, parameter problem.
    for t in [1, 2, 3, 4] {
        assert!(icmp6_error(t), "ICMPv6 type {t}");
    }
    // Echo, neighbour discovery, and the unassigned 0.
    for t in [0, 128, 129, 135, 136] {
        assert!(!icmp6_error(t), "ICMPv6 type {t}");
    }
}

#[test]
fn a_flow_times_out_at_its_timeout_across_the_wrap() {
    assert!(!timed_out(100, 149, 50));
    assert!(timed_out(100, 150, 50));
    let started = u32::MAX as u64 - 10;
    assert!(!timed_out(started, started + 49, 50));
    assert!(timed_out(started, started + 50, 50), "the low 32 bits wrap");
    assert!(
        timed_out(7 << 32, (7 << 32) + 60, 50),
        "high bits do not matter"
    );
}

#[test]
fn the_flow_key_keeps_ipv4_as_v4_mapped() {
    let key = FlowKey {
        client: v4_mapped(ne4(CLIENT4)),
        ..FlowKey::default()
    };
    assert_eq!(crate::dest::unmap_v4(key.client), Some(ne4(CLIENT4)));
    assert_eq!(core::mem::size_of::<FlowKey>(), 40);
    assert_eq!(core::mem::size_of::<FlowRecord>(), 48);
}

#[test]
fn an_ipv4_port_unreachable_quotes_the_syn_and_checks_out() {
    let syn = QuotedSyn {
        isn: 0xdead_beef,
        ip_len: 60,
        hops: 63,
    };
    let p = port_unreachable_v4(
        ne4(CLIENT4),
        ne4(UPSTREAM4),
        40000u16.to_be(),
        80u16.to_be(),
        syn,
    );
    let ip = Ipv4Slice::from_slice(&p).expect("a valid IPv4 packet");
    let h = ip.header();
    assert_eq!((h.source(), h.destination()), (UPSTREAM4, CLIENT4));
    assert_eq!(h.protocol(), etherparse::IpNumber::ICMP);
    assert_eq!(h.total_len() as usize, ICMP_REPLY_V4_LEN);
    assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
    let icmp = etherparse::Icmpv4Slice::from_slice(ip.payload().payload).expect("ICMP");
    assert_eq!((icmp.type_u8(), icmp.code_u8()), (3, 3), "port unreachable");
    assert_eq!(
        icmp.checksum(),
        icmp.icmp_type().calc_checksum(icmp.payload()),
        "the ICMP checksum"
    );
    // The quoted SYN, as the client's stack looks its socket up with it.
    // A header slice: the quote is cut short of the length it names.
    let q = etherparse::Ipv4HeaderSlice::from_slice(icmp.payload()).expect("the quoted header");
    assert_eq!((q.source(), q.destination()), (CLIENT4, UPSTREAM4));
    assert_eq!((q.total_len(), q.ttl()), (60, 63));
    assert_eq!(q.protocol(), etherparse::IpNumber::TCP);
    assert_eq!(q.header_checksum(), q.to_header().calc_header_checksum());
    let tcp = &icmp.payload()[20..];
    assert_eq!(tcp.len(), 8);
    assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 40000);
    assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 80);
    assert_eq!(
        u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        syn.isn
    );
}

#[test]
fn an_ipv6_port_unreachable_quotes_the_syn_and_checks_out() {
    let client: [u8; 16] = [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let upstream: [u8; 16] = [0xfd, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd, 0, 2];
    let syn = QuotedSyn {
        isn: 7,
        ip_len: 40,
        hops: 64,
    };
    let p = port_unreachable_v6(
        ne6(client),
        ne6(upstream),
        51000u16.to_be(),
        443u16.to_be(),
        syn,
    );
    let ip = Ipv6Slice::from_slice(&p).expect("a valid IPv6 packet");
    let h = ip.header();
    assert_eq!((h.source(), h.destination()), (upstream, client));
    assert_eq!(h.payload_length() as usize, ICMP_REPLY_V6_LEN - 40);
    assert_eq!(h.next_header(), etherparse::IpNumber::IPV6_ICMP);
    let icmp = etherparse::Icmpv6Slice::from_slice(ip.payload().payload).expect("ICMPv6");
    assert_eq!((icmp.type_u8(), icmp.code_u8()), (1, 4), "port unreachable");
    assert!(
        icmp.is_checksum_valid(upstream, client),
        "the ICMPv6 checksum"
    );
    let q = etherparse::Ipv6HeaderSlice::from_slice(&icmp.slice()[8..]).expect("the quoted header");
    assert_eq!((q.source(), q.destination()), (client, upstream));
    assert_eq!((q.payload_length(), q.hop_limit()), (40, 64));
    assert_eq!(q.next_header(), etherparse::IpNumber::TCP);
    let tcp = &icmp.slice()[48..];
    assert_eq!(tcp.len(), 8);
    assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 51000);
    assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 443);
    assert_eq!(u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]), 7);
}

/// The incremental update gives what a checksum computed afresh gives, for every
/// field a redirect rewrites (an address word, a port), over many values.
#[test]
fn an_incremental_checksum_update_matches_a_fresh_one() {
    let mut seed = 0x2545_f491_u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for _ in 0..10_000 {
        let mut data = [0u8; 20];
        for chunk in data.chunks_mut(4) {
            chunk.copy_from_slice(&next().to_ne_bytes());
        }
        // Checksum at 10..12, as in an IPv4 header.
        data[10..12].copy_from_slice(&[0, 0]);
        let check = fold(sum_words(&data, 0)).to_be_bytes();
        let new4 = next().to_ne_bytes();
        let mut changed = data;
        changed[16..20].copy_from_slice(&new4);
        let fresh = fold(sum_words(&changed, 0)).to_be_bytes();
        let old4: [u8; 4] = data[16..20].try_into().unwrap();
        assert_eq!(csum_replace4(check, old4, new4), fresh, "4 bytes");
        let new2 = [next() as u8, (next() >> 8) as u8];
        let mut changed2 = changed;
        changed2[0..2].copy_from_slice(&new2);
        let fresh2 = fold(sum_words(&changed2, 0)).to_be_bytes();
        let old2 = [changed[0], changed[1]];
        assert_eq!(csum_replace2(fresh, old2, new2), fresh2, "2 bytes");
    }
}

#[test]
fn a_redirected_flow_closes_on_a_fin_both_ways_or_a_refusal_never_on_another_reset() {
    let side = |fin: u8, answer: u8| NatTarget {
        fin,
        answer,
        ..NatTarget::default()
    };
    let cases = [
        // (client side, fallback side, closed)
        (side(0, 0), side(0, 0), false),
        (side(1, 0), side(0, 0), false),
        (side(0, 0), side(1, 0), false),
        (side(1, 0), side(1, 0), true),
        (side(0, 0), side(0, NAT_ACCEPTED), false),
        (side(1, 0), side(1, NAT_ACCEPTED), true),
        (side(0, 0), side(0, NAT_REFUSED), true),
        // A client side's answer byte means nothing.
        (side(0, NAT_REFUSED), side(0, 0), false),
    ];
    for (out, back, closed) in cases {
        assert_eq!(out.closed_with(&back), closed, "{out:?} / {back:?}");
    }
}

#[test]
fn only_the_first_answer_to_a_redirected_syn_is_kept_and_only_an_exact_one() {
    const ISN: u32 = 0xffff_fffe;
    let back = |answer: u8| NatTarget {
        answer,
        isn: ISN,
        ..NatTarget::default()
    };
    let (syn_ack, rst_ack, rst) = (TCP_SYN | TCP_ACK, TCP_RST | TCP_ACK, TCP_RST);
    let exact = ISN.wrapping_add(1);
    let cases = [
        // (answer so far, flags, ack, answer after)
        (NAT_UNANSWERED, syn_ack, exact, NAT_ACCEPTED),
        (NAT_UNANSWERED, rst_ack, exact, NAT_REFUSED),
        // Not acknowledging the SYN exactly: a stray or forged reset.
        (
            NAT_UNANSWERED,
            rst_ack,
            exact.wrapping_add(1),
            NAT_UNANSWERED,
        ),
        (NAT_UNANSWERED, rst_ack, ISN, NAT_UNANSWERED),
        (NAT_UNANSWERED, rst, exact, NAT_UNANSWERED),
        (NAT_UNANSWERED, TCP_ACK, exact, NAT_UNANSWERED),
        // After a SYN-ACK, a reset is no refusal, whatever it acknowledges.
        (NAT_ACCEPTED, rst_ack, exact, NAT_ACCEPTED),
        (NAT_REFUSED, syn_ack, exact, NAT_REFUSED),
    ];
    for (before, flags, ack, after) in cases {
        assert_eq!(
            back(before).answered(flags, ack),
            after,
            "{before} + flags {flags:#x} ack {ack:#x}"
        );
    }
}
