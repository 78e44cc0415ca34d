//! The upstreams' answers leaving through a watched interface towards the
//! workload: a SYN-ACK or a reset acknowledging a tracked SYN, or an ICMP error
//! quoting it exactly, ends the flow with its outcome. Segments of a redirected
//! flow get the upstream's address back. The hook never drops a packet.
use aya_ebpf::bindings::BPF_NOEXIST;
use breaker_common::{
    abi::{CAUSE_FAILURE_REFUSED, CAUSE_FAILURE_UNREACHABLE, CAUSE_SUCCESS},
    dest::v4_mapped,
    packet::{
        answer, icmp4_unreachable, icmp6_unreachable, Answer, FlowKey, FlowRecord, FLOW_ENDED,
        FLOW_TRIAL, TCP_RST, TCP_SYN,
    },
};

use super::{
    count, flow_of, ip, is_v4, nat, plain_tcp_flags, tcp, Frame, Ip, Packet, Skip, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_TCP,
};
use crate::{breaker::jiffies, detect::conclude, maps::PACKET_FLOWS};

pub fn on_egress<C: Packet>(ctx: &C) {
    // Data of established flows answers nothing: known at once for most packets.
    let answers_nothing =
        plain_tcp_flags(&ctx.frame()).is_some_and(|flags| flags & (TCP_SYN | TCP_RST) == 0);
    // A redirected flow's segment first: from here on it is the upstream's.
    if nat::active() {
        rewrite_back(ctx, answers_nothing);
    }
    if answers_nothing {
        return;
    }
    let mut key = FlowKey::default();
    let cause = answer_of(&ctx.frame(), &mut key);
    if cause != NO_ANSWER {
        end(&key, cause);
    }
}

/// A redirected flow's segment, or an ICMP error about one (unless the packet
/// `answers_nothing`, a plain segment), rewritten as from the upstream the
/// client asked for: an error then quotes the client's side of the flow, and
/// ends it as any other flow's. Out of line, a sibling of [`end`]: its rewrite
/// is never in the frames under `end`.
#[inline(never)]
fn rewrite_back<C: Packet>(ctx: &C, answers_nothing: bool) {
    let mut rw = nat::Rewrite::default();
    let found = nat::rewrite_of(&ctx.frame(), nat::BACK, &mut rw)
        || (!answers_nothing && nat::quoted_rewrite_of(&ctx.frame(), &mut rw));
    if found && ctx.rewrite(&rw) {
        count(|c| c.segments_rewritten += 1);
    }
}

/// [`answer_of`]: the packet answers no tracked flow.
const NO_ANSWER: u32 = 0;

/// Whether the packet answers a tracked flow: its cause (`CAUSE_SUCCESS` or a
/// failure's), with the flow in `key`; [`NO_ANSWER`] otherwise. Out of line, a
/// sibling of [`end`] rather than its caller, so the two frames never add up.
#[inline(never)]
fn answer_of(frame: &Frame, key: &mut FlowKey) -> u32 {
    let ip = match ip(frame) {
        Ok(Some(ip)) => ip,
        Ok(None) => return NO_ANSWER,
        Err(_) => {
            count(|c| c.skipped += 1);
            return NO_ANSWER;
        }
    };
    let read = match ip.proto {
        IPPROTO_TCP => segment(frame, &ip, key),
        IPPROTO_ICMP if is_v4(ip.family) => icmp_error(frame, &ip, key),
        IPPROTO_ICMPV6 if !is_v4(ip.family) => icmp_error(frame, &ip, key),
        _ => Ok(NO_ANSWER),
    };
    read.unwrap_or_else(|_| {
        count(|c| c.skipped += 1);
        NO_ANSWER
    })
}

/// A TCP segment from the upstream: a SYN-ACK or a reset may answer a flow.
#[inline(always)]
fn segment(frame: &Frame, ip: &Ip, key: &mut FlowKey) -> Result<u32, Skip> {
    let tcp = tcp(frame, ip.l4)?;
    // Data of established flows leaves here, with no lookup.
    if tcp.flags & (TCP_SYN | TCP_RST) == 0 {
        return Ok(NO_ANSWER);
    }
    *key = flow_of(ip, &tcp, false);
    // SAFETY: only the sequence number is read, at once.
    let Some(isn) = waiting_isn(key) else {
        return Ok(NO_ANSWER);
    };
    Ok(match answer(tcp.flags, tcp.ack, isn) {
        Some(Answer::Accepted) => CAUSE_SUCCESS,
        Some(Answer::Refused) => CAUSE_FAILURE_REFUSED,
        None => NO_ANSWER,
    })
}

/// An ICMP or ICMPv6 error towards the client: a destination unreachable that
/// quotes a tracked SYN (addresses, ports and sequence number) ends it as
/// `unreachable`. One that quotes anything else is counted and ignored, so a
/// forged error cannot trip a breaker without knowing the SYN's sequence number.
#[inline(always)]
fn icmp_error(frame: &Frame, ip: &Ip, key: &mut FlowKey) -> Result<u32, Skip> {
    let icmp_type = frame.u8(ip.l4).ok_or(Skip)?;
    let code = frame.u8(ip.l4 + 1).ok_or(Skip)?;
    let v4 = is_v4(ip.family);
    let unreachable = if v4 {
        icmp4_unreachable(icmp_type, code)
    } else {
        icmp6_unreachable(icmp_type)
    };
    if !unreachable {
        return Ok(NO_ANSWER);
    }
    // The quoted packet: the SYN as the client sent it.
    let inner = ip.l4 + 8;
    let (client, upstream, l4) = if v4 {
        let vihl = frame.u8(inner).ok_or(Skip)?;
        let ihl = (vihl & 0x0f) as usize * 4;
        if vihl >> 4 != 4 || ihl < 20 || frame.u8(inner + 9).ok_or(Skip)? != IPPROTO_TCP {
            return Ok(NO_ANSWER);
        }
        (
            v4_mapped(frame.raw_u32(inner + 12).ok_or(Skip)?),
            v4_mapped(frame.raw_u32(inner + 16).ok_or(Skip)?),
            inner + ihl,
        )
    } else {
        if frame.u8(inner + 6).ok_or(Skip)? != IPPROTO_TCP {
            return Ok(NO_ANSWER);
        }
        (
            frame.raw_addr6(inner + 8).ok_or(Skip)?,
            frame.raw_addr6(inner + 24).ok_or(Skip)?,
            inner + 40,
        )
    };
    // The error goes to the client that sent the SYN, or it is not about its SYN.
    if client != ip.dst {
        count(|c| c.icmp_unmatched += 1);
        return Ok(NO_ANSWER);
    }
    // Ports and sequence number: the 8 bytes every ICMP error quotes.
    *key = FlowKey {
        client,
        upstream,
        client_port: frame.raw_u16(l4).ok_or(Skip)?,
        upstream_port: frame.raw_u16(l4 + 2).ok_or(Skip)?,
        family: ip.family,
        _pad: 0,
    };
    let seq = u32::from_be(frame.raw_u32(l4 + 4).ok_or(Skip)?);
    // Not a flow of its own: perhaps a redirected flow's, quoted as it left for
    // the fallback (the client's side of it is what is tracked).
    let isn = match waiting_isn(key) {
        Some(isn) => Some(isn),
        None => nat::redirected_isn(key)
            .filter(|isn| *isn == seq)
            .and_then(|_| waiting_isn(key)),
    };
    match isn {
        Some(isn) if isn == seq => Ok(CAUSE_FAILURE_UNREACHABLE),
        _ => {
            count(|c| c.icmp_unmatched += 1);
            Ok(NO_ANSWER)
        }
    }
}

/// The sequence number of flow `key`'s SYN, if the flow waits for an answer (a
/// timed-out one was counted already: a late answer counts nothing).
#[inline(always)]
fn waiting_isn(key: &FlowKey) -> Option<u32> {
    // SAFETY: two fields are read, at once.
    unsafe { PACKET_FLOWS.get(key) }
        .filter(|f| f.flags & FLOW_ENDED == 0)
        .map(|f| f.isn)
}

/// Puts flow `key` back, ended (see [`end`]). Out of line, so that its copy of
/// the record is not in `end`'s frame, which calls on into the breaker's cap
/// (`record_capped`): the three frames must fit the 512-byte stack.
#[inline(never)]
fn keep_ended(key: &FlowKey, flow: &FlowRecord) -> u32 {
    let ended = FlowRecord {
        flags: flow.flags | FLOW_ENDED,
        started_jiffies: jiffies(),
        ..*flow
    };
    let _ = PACKET_FLOWS.insert(key, ended, BPF_NOEXIST as u64);
    0
}

/// Ends a flow with its outcome, once: only the program that removes the flow
/// concludes it. Out of line and given no packet pointer, so the verifier walks
/// its paths (the state machine's) once whatever the packet's layout.
#[inline(never)]
fn end(key: &FlowKey, cause: u32) {
    // SAFETY: the value is copied out at once.
    let Some(flow) = (unsafe { PACKET_FLOWS.get(key) }).copied() else {
        return;
    };
    if flow.flags & FLOW_ENDED != 0 {
        return;
    }
    if PACKET_FLOWS.remove(key).is_err() {
        return;
    }
    count(|c| c.answers_matched += 1);
    // An unreachable error may not end the client's connect (Linux only notes one
    // that reaches a socket its owner holds, and sends the SYN again): kept,
    // ended, so that SYN is known as a retransmission, not a second attempt to
    // count. A new SYN of the same ports in between keeps its own flow.
    if cause == CAUSE_FAILURE_UNREACHABLE {
        keep_ended(key, &flow);
    }
    let trial = (flow.flags & FLOW_TRIAL != 0).then_some(flow.epoch as u8);
    conclude(
        flow.upstream,
        &flow.dest,
        cause,
        trial,
        flow.started_jiffies,
    );
}
