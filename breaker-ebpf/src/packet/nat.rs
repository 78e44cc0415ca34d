//! `packet_action = "redirect"`: a rejected SYN's flow goes to the upstream's
//! fallback. The ingress hook rewrites the destination of every segment the client
//! sends on it, the egress hook the source of every segment the fallback answers
//! with, so the client's stack sees the upstream it asked for throughout.
use aya_ebpf::bindings::BPF_NOEXIST;
use breaker_common::{
    abi::FallbackHop,
    dest::v4_mapped,
    fallback::HopUse,
    packet::{
        icmp4_error, icmp6_error, FlowKey, NatTarget, NAT_UNANSWERED, TCP_FIN, TCP_RST, TCP_SYN,
    },
};

use super::{
    count, flow_of, ingress::track, ip, is_v4, tcp, Frame, IPPROTO_ICMP, IPPROTO_ICMPV6,
    IPPROTO_TCP,
};
use crate::{
    breaker::{self, count_extra},
    hops,
    maps::{PACKET_FLOWS, PACKET_NAT_BACK, PACKET_NAT_OUT, SETTINGS},
};

/// One address and one port of a segment changed, with the checksums they are in:
/// offsets from the start of the frame, values as in the packet.
#[derive(Clone, Copy, Default)]
pub struct Rewrite {
    /// Non-zero for IPv4 (an IP header checksum to fix, a 4-byte address).
    pub v4: u32,
    pub addr_off: usize,
    pub port_off: usize,
    /// The IPv4 header checksum (unused for IPv6).
    pub ip_csum_off: usize,
    /// The TCP checksum, whose pseudo-header holds the address; for a quoted
    /// packet, the ICMP error's checksum.
    pub tcp_csum_off: usize,
    /// Non-zero when the address and port are those of the packet an ICMP
    /// error quotes: the ICMP checksum covers them as plain bytes (ICMPv6 with
    /// no pseudo-header of theirs), and for IPv4 the quoted header's checksum
    /// changes with its address, so the two cancel out of the ICMP checksum.
    pub quoted: u32,
    pub old_addr: [u32; 4],
    pub new_addr: [u32; 4],
    pub old_port: u16,
    pub new_port: u16,
}

/// Offsets a rewrite may touch are masked to this: bounded for the verifier, and
/// past anything a parsed header can reach (Ethernet, VLAN, IPv6 with 4 extension
/// headers of at most 2 KiB each).
pub const OFFSET_MASK: usize = 0x3fff;

/// The sequence number of the SYN of the redirected flow whose fallback side is
/// `key` (as an ICMP error from the fallback's way quotes it); the client's side
/// of the flow then in `key`, so the error ends the flow it is about.
#[inline(always)]
pub fn redirected_isn(key: &mut FlowKey) -> Option<u32> {
    if !active() {
        return None;
    }
    // SAFETY: the value is copied out at once.
    let back = (unsafe { PACKET_NAT_BACK.get(*key) }).copied()?;
    key.upstream = back.addr;
    key.upstream_port = back.port;
    Some(back.isn)
}

/// Whether some upstream redirects on the packet path (else no segment is looked up).
#[inline(always)]
pub fn active() -> bool {
    SETTINGS.get(0).is_some_and(|s| s.packet_nat != 0)
}

/// Which way a segment crosses the interface.
pub const OUT: u32 = 0;
pub const BACK: u32 = 1;

/// The rewrite a TCP segment of a redirected flow needs, into `rw`: going `OUT`
/// (client to upstream: the destination becomes the fallback) or `BACK` (fallback
/// to client: the source becomes the upstream). False for any other packet. Out of
/// line: the parse and the lookup never add to the caller's walks.
#[inline(never)]
pub fn rewrite_of(frame: &Frame, way: u32, rw: &mut Rewrite) -> bool {
    let Ok(Some(ip)) = ip(frame) else {
        return false;
    };
    if ip.proto != IPPROTO_TCP {
        return false;
    }
    let Ok(tcp) = tcp(frame, ip.l4) else {
        return false;
    };
    let v4 = is_v4(ip.family);
    let out = way == OUT;
    let key = flow_of(&ip, &tcp, out);
    let map = if out {
        &PACKET_NAT_OUT
    } else {
        &PACKET_NAT_BACK
    };
    let Some(entry) = map.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: a map value pointer from the lookup above, copied out at once.
    let to = unsafe { *entry };
    // This side ends the flow: noted, so its fallback side is free once the
    // flow has closed both ways (`NatTarget::closed_with`; a reset is not
    // trusted for it, but the fallback's refusal of the SYN).
    if tcp.flags & (TCP_FIN | TCP_RST | TCP_SYN) == TCP_FIN && to.fin == 0 {
        // SAFETY: as above; one byte, only ever set to 1, so racing writers
        // store the same value.
        unsafe { (*entry).fin = 1 };
    }
    if !out && to.answer == NAT_UNANSWERED {
        let answer = to.answered(tcp.flags, tcp.ack);
        if answer != NAT_UNANSWERED {
            // SAFETY: as above; one byte, set once from unanswered (a SYN-ACK
            // and a reset racing for it is a broken fallback's flow).
            unsafe { (*entry).answer = answer };
        }
    }
    // Destination (out) or source (back): address and port.
    let (addr_off, port_off) = match (v4, out) {
        (true, true) => (ip.l3 + 16, ip.l4 + 2),
        (true, false) => (ip.l3 + 12, ip.l4),
        (false, true) => (ip.l3 + 24, ip.l4 + 2),
        (false, false) => (ip.l3 + 8, ip.l4),
    };
    *rw = Rewrite {
        v4: v4 as u32,
        addr_off,
        port_off,
        ip_csum_off: ip.l3 + 10,
        tcp_csum_off: ip.l4 + 16,
        quoted: 0,
        old_addr: key.upstream,
        new_addr: to.addr,
        old_port: key.upstream_port,
        new_port: to.port,
    };
    true
}

/// The rewrite an ICMP or ICMPv6 error on its way back to a client needs, into
/// `rw`, when it quotes a redirected flow's SYN or segment as it left for the
/// fallback: the quoted destination becomes the upstream's again, so that the
/// client's stack finds its socket (a connect fails at once on an unreachable
/// fallback; the client learns a smaller path MTU towards it). False for any
/// other packet. Out of line, as [`rewrite_of`]. The quote is read as
/// `egress::icmp_error` reads it.
#[inline(never)]
pub fn quoted_rewrite_of(frame: &Frame, rw: &mut Rewrite) -> bool {
    let Ok(Some(ip)) = ip(frame) else {
        return false;
    };
    let v4 = is_v4(ip.family);
    let is_error = match (ip.proto, frame.u8(ip.l4)) {
        (IPPROTO_ICMP, Some(t)) => v4 && icmp4_error(t),
        (IPPROTO_ICMPV6, Some(t)) => !v4 && icmp6_error(t),
        _ => false,
    };
    if !is_error {
        return false;
    }
    let inner = ip.l4 + 8;
    let (client, fallback, dst_off, l4) = if v4 {
        let Some(vihl) = frame.u8(inner) else {
            return false;
        };
        let ihl = (vihl & 0x0f) as usize * 4;
        if vihl >> 4 != 4 || ihl < 20 || frame.u8(inner + 9) != Some(IPPROTO_TCP) {
            return false;
        }
        let (Some(src), Some(dst)) = (frame.raw_u32(inner + 12), frame.raw_u32(inner + 16)) else {
            return false;
        };
        (v4_mapped(src), v4_mapped(dst), inner + 16, inner + ihl)
    } else {
        if frame.u8(inner + 6) != Some(IPPROTO_TCP) {
            return false;
        }
        let (Some(src), Some(dst)) = (frame.raw_addr6(inner + 8), frame.raw_addr6(inner + 24))
        else {
            return false;
        };
        (src, dst, inner + 24, inner + 40)
    };
    // Only an error on its way to the client that sent the quoted packet.
    if client != ip.dst {
        return false;
    }
    let (Some(client_port), Some(fallback_port)) = (frame.raw_u16(l4), frame.raw_u16(l4 + 2))
    else {
        return false;
    };
    let key = FlowKey {
        client,
        upstream: fallback,
        client_port,
        upstream_port: fallback_port,
        family: ip.family,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    let Some(to) = (unsafe { PACKET_NAT_BACK.get(key) }).copied() else {
        return false;
    };
    *rw = Rewrite {
        v4: v4 as u32,
        addr_off: dst_off,
        port_off: l4 + 2,
        ip_csum_off: inner + 10,
        tcp_csum_off: ip.l4 + 2,
        quoted: 1,
        old_addr: fallback,
        new_addr: to.addr,
        old_port: fallback_port,
        new_port: to.port,
    };
    true
}

/// Sends flow `key` (its SYN's sequence number `isn`) to another endpoint of
/// its service that takes it (a `per_endpoint` service's), else to the first
/// fallback of `upstream` of its family that takes it (an address, or another
/// upstream while its breaker lets its own connects through, the flow then
/// tracked as that upstream's): both NAT entries written, and the
/// connect counted as redirected. False, counted as rejected, when no hop takes
/// it, the tables refused an entry, or the fallback's side of the flow is taken
/// by a live redirected flow of another upstream (the same client port, the same
/// fallback): the caller answers with a reset. Out of line, a sibling of `decide`.
#[inline(never)]
pub fn redirect(key: &FlowKey, isn: u32, upstream: u32) -> bool {
    let v4 = is_v4(key.family);
    // A service's endpoints are picked with its random sequence number: random
    // per flow, the same for its retransmitted SYN.
    let chosen = hops::choose(upstream, v4, isn);
    let sent = chosen
        .as_ref()
        .is_some_and(|c| redirect_to(key, isn, &c.hop));
    if let (true, Some(c)) = (sent, &chosen) {
        if matches!(c.how, HopUse::GoWatched | HopUse::WouldSkip) {
            hand_over(key, isn, &c.hop, c.how.to_u32());
        }
    }
    breaker::count(upstream, |c| {
        if sent {
            c.redirected += 1
        } else {
            c.rejected += 1
        }
    });
    if let (true, Some(c)) = (sent, &chosen) {
        count_extra(upstream, |n| {
            if let Some(n) = n.redirected_to.get_mut(c.slot) {
                *n += 1;
            }
        });
    }
    sent
}

/// A flow sent to another upstream (`hop`, which takes it as `how`, a
/// `HopUse`) is that upstream's: counted and tracked under it, so its answer
/// (or silence) counts for its breaker. Out of line, as [`redirect_to`].
#[inline(never)]
fn hand_over(key: &FlowKey, isn: u32, hop: &FallbackHop, how: u32) {
    let to = hop.upstream;
    breaker::count(to, |n| {
        n.attempts += 1;
        if HopUse::from_u32(how) == HopUse::WouldSkip {
            n.would_reject += 1;
        }
    });
    track(key, to, hop.dest(is_v4(key.family)), isn, 0, 0);
}

/// Out of line: its entries are not in `redirect`'s frame, which the walk of
/// a service's endpoints (`hops::choose`, a `bpf_loop`) stacks two more on:
/// 6.1 counts the four frames against the 512-byte stack.
#[inline(never)]
fn redirect_to(key: &FlowKey, isn: u32, hop: &FallbackHop) -> bool {
    let to = if is_v4(key.family) {
        NatTarget {
            addr: v4_mapped(hop.ip4),
            // The low half, in memory order: the port as the packet has it.
            port: hop.port_v4 as u16,
            isn,
            ..NatTarget::default()
        }
    } else {
        NatTarget {
            addr: hop.ip6,
            port: hop.port_v6 as u16,
            isn,
            ..NatTarget::default()
        }
    };
    let back_key = FlowKey {
        upstream: to.addr,
        upstream_port: to.port,
        ..*key
    };
    let back = NatTarget {
        addr: key.upstream,
        port: key.upstream_port,
        isn,
        ..NatTarget::default()
    };
    // The client's side first: of two SYNs racing for one fallback side, the
    // second to take it then finds the first's client side in place, live.
    if PACKET_NAT_OUT.insert(key, to, 0).is_err() {
        return false;
    }
    let taken = PACKET_NAT_BACK
        .insert(back_key, back, BPF_NOEXIST as u64)
        .is_ok()
        || (!held_by_other(&back_key, &back) && PACKET_NAT_BACK.insert(back_key, back, 0).is_ok());
    if !taken {
        let _ = PACKET_NAT_OUT.remove(key);
        return false;
    }
    count(|c| c.flows_redirected += 1);
    true
}

/// Whether the fallback's side `back_key` is held by a live redirected flow other
/// than the one `back` names: its entry points elsewhere, and that flow's client
/// side still sends to this fallback, and it has not closed. An entry whose
/// client side is gone (ended, evicted) or whose flow closed (a FIN both ways,
/// or refused: `NatTarget::closed_with`) is no one's.
#[inline(always)]
fn held_by_other(back_key: &FlowKey, back: &NatTarget) -> bool {
    // SAFETY: the value is copied out at once.
    let Some(held) = (unsafe { PACKET_NAT_BACK.get(back_key) }).copied() else {
        return false;
    };
    if held.addr == back.addr && held.port == back.port {
        return false;
    }
    let client_side = FlowKey {
        upstream: held.addr,
        upstream_port: held.port,
        ..*back_key
    };
    // SAFETY: as above.
    (unsafe { PACKET_NAT_OUT.get(client_side) }).is_some_and(|o| {
        o.addr == back_key.upstream && o.port == back_key.upstream_port && !o.closed_with(&held)
    })
}

/// Ends the redirect of flow `key`: its entries go (its fallback's side if still
/// its own: [`end_redirect`]), so the client's SYN sent again on these ports is
/// decided anew (and reset again if its reset was lost), and the fallback's side
/// of the flow is no one's.
#[inline(always)]
pub fn forget(key: &FlowKey) {
    // SAFETY: the value is copied out at once.
    let Some(to) = (unsafe { PACKET_NAT_OUT.get(key) }).copied() else {
        return;
    };
    end_redirect(key, &to);
}

/// Ends the redirect whose client side is `key`, sent to `to`: its client side
/// goes, and its fallback's side too unless another flow holds it now (one
/// that took it over once this flow had closed, whose answers must keep their
/// rewrite).
#[inline(always)]
fn end_redirect(key: &FlowKey, to: &NatTarget) {
    let back_key = FlowKey {
        upstream: to.addr,
        upstream_port: to.port,
        ..*key
    };
    let _ = PACKET_NAT_OUT.remove(key);
    // SAFETY: two fields are read, at once.
    let ours = unsafe { PACKET_NAT_BACK.get(back_key) }
        .is_some_and(|b| b.addr == key.upstream && b.port == key.upstream_port);
    if ours {
        let _ = PACKET_NAT_BACK.remove(back_key);
    }
}

/// A SYN from the client (sequence number `isn`) of flow `key`, before anything
/// is decided for it: true when it is a redirected flow's SYN sent again (it goes
/// the same way, decided and counted once). Otherwise these ports start anew:
/// whatever redirected them before is forgotten, and so is any fallback's side of
/// an ended redirected flow that this SYN's own tuple would be taken for. Out of
/// line, a sibling of `decide`.
#[inline(never)]
pub fn syn_seen(key: &FlowKey, isn: u32) -> bool {
    // This tuple as the fallback's side of an earlier redirected flow whose
    // client side is gone: no one's, and never to rewrite this connect's answers.
    // A live one keeps it (this connect then collides with it on the wire).
    let nobody = NatTarget::default();
    if !held_by_other(key, &nobody) {
        let _ = PACKET_NAT_BACK.remove(key);
    }
    // SAFETY: the value is copied out at once.
    let Some(to) = (unsafe { PACKET_NAT_OUT.get(key) }).copied() else {
        return false;
    };
    if to.isn == isn {
        if resent(key, &to) {
            return true;
        }
        // Its side is another flow's now: this SYN is decided anew (reset,
        // while that flow lives), never passed on as the retransmission of a
        // flow tracked under its hop, whose rewrite is gone. That flow is no
        // trial, with no HALF_OPEN slot to give back: a hop takes connects
        // only while its breaker turns none away (`hand_over` tracks them so).
        // SAFETY: one field is read, at once.
        if unsafe { PACKET_FLOWS.get(key) }.is_some_and(|f| f.isn == isn) {
            let _ = PACKET_FLOWS.remove(key);
        }
    }
    end_redirect(key, &to);
    false
}

/// The SYN of the redirected flow `key` (sent to `to`) sent again: whatever
/// answered it did not reach the client, or the client did not take it (a
/// refusal lost on the way, or dropped by the client's checks), which is in
/// SYN_SENT still, so the flow's side waits for an answer again. False when
/// its fallback side is no longer its own (taken by the next flow once this
/// one was refused, or evicted): the SYN is then decided anew. The BACK entry
/// may have been taken out by `syn_seen` only when the fallback is the
/// upstream itself, which check-config refuses.
#[inline(always)]
fn resent(key: &FlowKey, to: &NatTarget) -> bool {
    let back_key = FlowKey {
        upstream: to.addr,
        upstream_port: to.port,
        ..*key
    };
    let Some(back) = PACKET_NAT_BACK.get_ptr_mut(back_key) else {
        return false;
    };
    // SAFETY: a map value pointer from the lookup above, read at once.
    let held = unsafe { *back };
    if held.addr != key.upstream || held.port != key.upstream_port {
        return false;
    }
    if held.answer != NAT_UNANSWERED {
        // SAFETY: as above; one byte.
        unsafe { (*back).answer = NAT_UNANSWERED };
    }
    true
}
