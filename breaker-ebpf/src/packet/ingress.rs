//! A SYN arriving on a watched interface: the packet path's connect4/6. It asks the
//! breaker of its destination, starts a flow for a passed one, and answers a
//! rejected one with a reset or an ICMP error from the upstream's address, drops
//! it, or sends its flow to the fallback. Segments of redirected flows are
//! rewritten here too.
use aya_ebpf::bindings::BPF_NOEXIST;
use breaker_common::{
    abi::{
        DestKey, Settings, CAUSE_OPEN_EXPIRED, DEFAULT_UPSTREAM_ID, POLICY_DRY_RUN,
        POLICY_PACKET_DROP, POLICY_PACKET_ICMP, POLICY_PACKET_REDIRECT,
    },
    machine::{self, abandon, Admission, Mode, State},
    packet::{
        is_connect, port_unreachable_v4, port_unreachable_v6, reset_v4, reset_v6, FlowKey,
        FlowRecord, QuotedSyn, FLOW_ENDED, FLOW_TRIAL, ICMP_REPLY_V4_LEN, ICMP_REPLY_V6_LEN,
        RESET_V4_LEN, RESET_V6_LEN,
    },
};

use super::{count, flow_of, ip, is_v4, nat, plain_tcp_flags, tcp, Frame, Packet, IPPROTO_TCP};
use crate::{
    breaker::{self, jiffies, now_ms, Breaker},
    destination,
    maps::{PACKET_FLOWS, SETTINGS},
};

/// What the hook does with the packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// On its way (rewritten, for a redirected flow).
    Pass,
    /// Turned into a reply to the client, sized: send it back out of the
    /// interface it came in by.
    Reply,
    /// Dropped (`packet_action = "drop"`).
    Drop,
}

pub fn on_ingress<C: Packet>(ctx: &C) -> Verdict {
    // Most packets are segments of established flows: past them at once.
    let segment = plain_tcp_flags(&ctx.frame()).is_some_and(|flags| !is_connect(flags));
    let mut key = FlowKey::default();
    let mut isn = 0;
    let syn = if segment {
        SYN_NONE
    } else {
        connect_of(&ctx.frame(), &mut key, &mut isn)
    };
    // A redirected flow's SYN sent again goes the same way, decided once; any
    // other SYN ends what redirected its ports before.
    let nat = nat::active();
    let again = syn != SYN_NONE && nat && nat::syn_seen(&key, isn);
    // Most SYNs start a new flow that their breaker lets go as it is: the
    // insert is then the flow table's only lookup. Any other SYN is decided.
    if syn == SYN_FOLLOWED && !again && !started_as_passed(&key, isn) {
        // Nothing of the parse stays live across the decision (the packet is read
        // again from the context for a reply): the verifier's walks of the
        // decision from every packet layout then end in the same state, and merge.
        let decided = decide(&key, isn);
        match decided & DECIDED_KIND {
            DECIDED_PASS => {}
            DECIDED_DROP => return Verdict::Drop,
            DECIDED_REDIRECT => {
                if !nat::redirect(&key, isn, decided >> DECIDED_UPSTREAM_SHIFT) {
                    return reply(ctx, DECIDED_RESET);
                }
            }
            kind => return reply(ctx, kind),
        }
    }
    if again {
        count(|c| c.syns_retransmitted += 1);
        if syn == SYN_FOLLOWED && redirected_gives_up(&key, isn) {
            return reply(ctx, DECIDED_RESET);
        }
    }
    if nat {
        let mut rw = nat::Rewrite::default();
        if nat::rewrite_of(&ctx.frame(), nat::OUT, &mut rw) && ctx.rewrite(&rw) {
            count(|c| c.segments_rewritten += 1);
        }
    }
    Verdict::Pass
}

/// The least a SYN that starts a flow costs as the design has it (a flow in the
/// bounded LRU `PACKET_FLOWS`): its parse and its flow's insert, nothing looked
/// up or decided. `brk_flow_floor` runs it for the bench; never attached. Its
/// flows are marked ended, so an expiry never counts them.
pub fn flow_floor<C: Packet>(ctx: &C) {
    let mut key = FlowKey::default();
    let mut isn = 0;
    if connect_of(&ctx.frame(), &mut key, &mut isn) != SYN_FOLLOWED {
        return;
    }
    let flow = flow_record(DEFAULT_UPSTREAM_ID, key.upstream_dest(), isn, FLOW_ENDED, 0);
    let _ = PACKET_FLOWS.insert(key, flow, 0);
}

/// The least a SYN answered with a reset costs as the design has it: its parse,
/// the flow table's lookup that tells a SYN sent again from a new attempt, and
/// the reset written over it; no breaker asked. `brk_reset_floor` runs it for
/// the bench; never attached.
pub fn reset_floor<C: Packet>(ctx: &C) -> Verdict {
    let mut key = FlowKey::default();
    let mut isn = 0;
    if connect_of(&ctx.frame(), &mut key, &mut isn) != SYN_FOLLOWED || has_flow(&key) {
        return Verdict::Pass;
    }
    reply(ctx, DECIDED_RESET)
}

/// Whether the ports of `key` have a flow. Out of line, a sibling of `reply`.
#[inline(never)]
fn has_flow(key: &FlowKey) -> bool {
    // SAFETY: only whether there is a value is read.
    unsafe { PACKET_FLOWS.get(key) }.is_some()
}

/// [`connect_of`]: not a connect's first segment (or unreadable).
const SYN_NONE: u32 = 0;
/// A SYN the breaker decides for.
const SYN_FOLLOWED: u32 = 1;
/// A SYN that never reaches the upstream or is not followed (hops spent, lengths
/// that do not add up, data): passed, but its ports start anew all the same.
const SYN_UNFOLLOWED: u32 = 2;

/// Whether the packet is a connect's first segment ([`SYN_FOLLOWED`] or
/// [`SYN_UNFOLLOWED`]), with its flow in `key` and sequence number in `isn`;
/// [`SYN_NONE`] for any other packet (counted as skipped when it could not be
/// read). Out of line, a sibling of `decide`: the parse's stack never adds to its.
#[inline(never)]
fn connect_of(frame: &Frame, key: &mut FlowKey, isn: &mut u32) -> u32 {
    let ip = match ip(frame) {
        Ok(Some(ip)) if ip.proto == IPPROTO_TCP => ip,
        // Not TCP, or not IP: nothing a connect is made of.
        Ok(_) => return SYN_NONE,
        Err(_) => {
            count(|c| c.skipped += 1);
            return SYN_NONE;
        }
    };
    let Ok(tcp) = tcp(frame, ip.l4) else {
        count(|c| c.skipped += 1);
        return SYN_NONE;
    };
    // Everything but a connect's first segment leaves here: established flows
    // cost the parse and nothing else.
    if !is_connect(tcp.flags) {
        return SYN_NONE;
    }
    *key = flow_of(&ip, &tcp, true);
    *isn = tcp.seq;
    // A SYN this host will not forward (its hops are spent), or one whose
    // lengths do not add up, never reaches the upstream: it must not count as
    // the upstream's failure. A SYN carrying data (TCP Fast Open) is acked past
    // its data: not followed (its connect is counted nowhere).
    let segment_end = ip.l4 + tcp.header_len;
    if ip.hops <= 1 || ip.end < segment_end || ip.end > frame.end - frame.data {
        count(|c| c.skipped += 1);
        return SYN_UNFOLLOWED;
    }
    if ip.end != segment_end {
        return SYN_UNFOLLOWED;
    }
    SYN_FOLLOWED
}

/// Turns the SYN into the reply `kind` asks for (`DECIDED_RESET` or
/// `DECIDED_ICMP`): what it quotes is read, the packet sized to the reply, and the
/// reply written over it. Pass when any step fails: a SYN that goes on is never
/// worse than the breaker not being there.
#[inline(always)]
fn reply<C: Packet>(ctx: &C, kind: u32) -> Verdict {
    let mut syn = Syn::default();
    if !syn_of(&ctx.frame(), &mut syn) {
        return Verdict::Pass;
    }
    let l3 = syn.l3 & 0x1f;
    let v4 = syn.v4 != 0;
    let mut kind = kind;
    let mut len = l3 + reply_len(kind, v4);
    // Growing may fail (no room past the frame): a reset fits in any SYN.
    if !ctx.resize(len) {
        kind = DECIDED_RESET;
        len = l3 + reply_len(kind, v4);
        if !ctx.resize(len) {
            return Verdict::Pass;
        }
    }
    if write_reply(&ctx.frame(), &syn, kind) {
        if kind == DECIDED_ICMP {
            count(|c| c.replies_icmp += 1);
        } else {
            count(|c| c.replies_reset += 1);
        }
        Verdict::Reply
    } else {
        // Cannot happen for a packet that parsed and was sized; should it, the
        // mangled SYN is dropped rather than sent on.
        Verdict::Drop
    }
}

#[inline(always)]
fn reply_len(kind: u32, v4: bool) -> usize {
    match (kind == DECIDED_ICMP, v4) {
        (true, true) => ICMP_REPLY_V4_LEN,
        (true, false) => ICMP_REPLY_V6_LEN,
        (false, true) => RESET_V4_LEN,
        (false, false) => RESET_V6_LEN,
    }
}

/// What a reply to a SYN is made of, read before the packet is resized.
#[derive(Clone, Copy, Default)]
struct Syn {
    v4: u32,
    l3: usize,
    client: [u32; 4],
    upstream: [u32; 4],
    client_port: u16,
    upstream_port: u16,
    quoted: QuotedSyn,
}

/// Reads the SYN's fields for its reply. Out of line: its frame never adds to
/// `decide`'s.
#[inline(never)]
fn syn_of(frame: &Frame, syn: &mut Syn) -> bool {
    let Ok(Some(ip)) = ip(frame) else {
        return false;
    };
    let Ok(tcp) = tcp(frame, ip.l4) else {
        return false;
    };
    let v4 = is_v4(ip.family);
    // The length field as sent: IPv4's counts its header, IPv6's does not.
    let ip_len = (ip.end - ip.l3 - if v4 { 0 } else { 40 }) as u16;
    *syn = Syn {
        v4: v4 as u32,
        l3: ip.l3,
        client: ip.src,
        upstream: ip.dst,
        client_port: tcp.src_port,
        upstream_port: tcp.dst_port,
        quoted: QuotedSyn {
            isn: tcp.seq,
            ip_len,
            hops: ip.hops,
        },
    };
    true
}

/// Writes the reply over the sized frame: MAC addresses swapped (a VLAN tag
/// stays), the IP packet replaced. Out of line, a sibling of `decide`: the reply
/// lives in a stack frame of its own.
#[inline(never)]
fn write_reply(frame: &Frame, syn: &Syn, kind: u32) -> bool {
    let Some(macs) = frame.at::<[u8; 12]>(0) else {
        return false;
    };
    let l3 = syn.l3 & 0x1f;
    let icmp = kind == DECIDED_ICMP;
    let s = syn;
    // SAFETY: `at` checked each region written is inside the packet.
    unsafe {
        match (s.v4 != 0, icmp) {
            (true, false) => {
                let Some(at) = frame.at::<[u8; RESET_V4_LEN]>(l3) else {
                    return false;
                };
                let (c, u) = (s.client[3], s.upstream[3]);
                *at = reset_v4(c, u, s.client_port, s.upstream_port, s.quoted.isn);
            }
            (true, true) => {
                let Some(at) = frame.at::<[u8; ICMP_REPLY_V4_LEN]>(l3) else {
                    return false;
                };
                let (c, u) = (s.client[3], s.upstream[3]);
                *at = port_unreachable_v4(c, u, s.client_port, s.upstream_port, s.quoted);
            }
            (false, false) => {
                let Some(at) = frame.at::<[u8; RESET_V6_LEN]>(l3) else {
                    return false;
                };
                *at = reset_v6(
                    s.client,
                    s.upstream,
                    s.client_port,
                    s.upstream_port,
                    s.quoted.isn,
                );
            }
            (false, true) => {
                let Some(at) = frame.at::<[u8; ICMP_REPLY_V6_LEN]>(l3) else {
                    return false;
                };
                *at = port_unreachable_v6(
                    s.client,
                    s.upstream,
                    s.client_port,
                    s.upstream_port,
                    s.quoted,
                );
            }
        }
        let m = *macs;
        let mut swapped = [0u8; 12];
        swapped[..6].copy_from_slice(&m[6..]);
        swapped[6..].copy_from_slice(&m[..6]);
        *macs = swapped;
    }
    true
}

/// [`decide`]'s answers.
const DECIDED_PASS: u32 = 0;
const DECIDED_RESET: u32 = 1;
const DECIDED_DROP: u32 = 2;
const DECIDED_ICMP: u32 = 3;
/// To the fallback: the upstream's id is in the bits from
/// [`DECIDED_UPSTREAM_SHIFT`]; the caller writes the flow's NAT entries (out of
/// `decide`, whose walks they would multiply) and rewrites the SYN.
const DECIDED_REDIRECT: u32 = 4;
const DECIDED_KIND: u32 = 0xff;
const DECIDED_UPSTREAM_SHIFT: u32 = 8;

/// What to do with a SYN of flow `key` with sequence number `isn`: ask its
/// breaker, as connect4/6 do, and start the flow if it goes. Out of line and
/// given no packet pointer, so its paths are walked once whatever the packet's
/// layout, and its stack is its own.
#[inline(never)]
fn decide(key: &FlowKey, isn: u32) -> u32 {
    let Some(settings) = SETTINGS.get(0) else {
        return DECIDED_PASS;
    };

    let dest = key.upstream_dest();
    // SAFETY: the value is copied out at once.
    if let Some(flow) = unsafe { PACKET_FLOWS.get(key) }.copied() {
        if flow.isn == isn {
            return retransmitted(key, &flow);
        }
        // The same ports again with a new sequence number: the earlier attempt
        // was given up without an answer. A trial gives its slot back, if this
        // program is the one that ends it (removes it): an answer or a timeout on
        // another CPU may be concluding it right now.
        let waiting_trial = flow.flags & (FLOW_TRIAL | FLOW_ENDED) == FLOW_TRIAL;
        if PACKET_FLOWS.remove(key).is_ok() && waiting_trial {
            if let Some(b) = Breaker::of_record(flow.upstream, &flow.dest, false) {
                b.update(CAUSE_OPEN_EXPIRED, |w| abandon(w, flow.epoch as u8));
            }
        }
    }
    admit(key, &dest, isn, settings)
}

/// The SYN's flow started, and counted as an attempt, if its breaker lets new
/// connects go and changes nothing doing it (CLOSED and automatic, or none yet
/// before a first failure) and its ports have no flow: an insert refused when
/// they have one (`BPF_NOEXIST`) is the lookup. False (nothing done) for any
/// other SYN, which [`decide`] looks up and admits. Out of line, a sibling of
/// `decide`: the verifier walks its paths once, not before each of `decide`'s,
/// and its stack is its own.
#[inline(never)]
fn started_as_passed(key: &FlowKey, isn: u32) -> bool {
    let Some(settings) = SETTINGS.get(0) else {
        return false;
    };
    let dest = key.upstream_dest();
    let Some(id) = destination::judged_by(&dest, settings) else {
        return false;
    };
    if !passes_unchanged(id, &dest) || !start_new(key, id, dest, isn) {
        return false;
    }
    breaker::count(id, |c| c.attempts += 1);
    true
}

/// Whether upstream `id`'s breaker for `dest` admits a new connect and changes
/// nothing doing it (as `Breaker::admit` answers a CLOSED, automatic word), or
/// there is none yet to ask (a per-destination breaker before its first failure).
#[inline(always)]
fn passes_unchanged(id: u32, dest: &DestKey) -> bool {
    match Breaker::of_record(id, dest, false) {
        Some(b) => {
            let word = b.peek();
            word.state() == State::Closed && word.mode() == Mode::Auto
        }
        None => Breaker::unfailed(id),
    }
}

#[inline(always)]
fn admit(key: &FlowKey, dest: &DestKey, isn: u32, settings: &Settings) -> u32 {
    let dest = *dest;
    let Some(id) = destination::judged_by(&dest, settings) else {
        return DECIDED_PASS;
    };
    let breaker = match Breaker::of_record(id, &dest, false) {
        Some(b) => b,
        // No failure yet: watch it, so its first failure makes a breaker.
        None if Breaker::unfailed(id) => {
            breaker::count(id, |c| c.attempts += 1);
            track(key, id, dest, isn, 0, 0);
            return DECIDED_PASS;
        }
        None => return DECIDED_PASS,
    };
    let admission = breaker.admit();
    if admission == Admission::Ignore {
        return DECIDED_PASS;
    }
    breaker.count(|c| c.attempts += 1);
    let dry_run = breaker.policy.flags & POLICY_DRY_RUN != 0;
    match admission {
        Admission::Pass => {
            track(key, breaker.upstream, dest, isn, 0, 0);
            DECIDED_PASS
        }
        Admission::Trial { epoch } => {
            if track(key, breaker.upstream, dest, isn, FLOW_TRIAL, epoch) {
                return DECIDED_PASS;
            }
            // Nobody would see this trial end: give its slot back and treat it as
            // rejected, as the breaker is not closed.
            breaker.update(CAUSE_OPEN_EXPIRED, |w| abandon(w, epoch));
            if dry_run {
                breaker.count(|c| c.would_reject += 1);
                return DECIDED_PASS;
            }
            reject(&breaker)
        }
        Admission::Reject if dry_run => {
            breaker.count(|c| c.would_reject += 1);
            track(key, breaker.upstream, dest, isn, 0, 0);
            DECIDED_PASS
        }
        Admission::Reject => reject(&breaker),
        Admission::Ignore => DECIDED_PASS,
    }
}

/// A SYN the client sends again: not a new attempt. If its breaker has opened
/// since, the client stops waiting on it now (no application waits on a
/// blackhole once its breaker has tripped): a flow still waiting ends uncounted,
/// one that timed out was counted already.
#[inline(always)]
fn retransmitted(key: &FlowKey, flow: &FlowRecord) -> u32 {
    count(|c| c.syns_retransmitted += 1);
    let Some(breaker) = Breaker::of_record(flow.upstream, &flow.dest, false) else {
        return DECIDED_PASS;
    };
    if !gives_up(&breaker, flow) {
        return DECIDED_PASS;
    }
    // Only the one that removes the flow acts on it.
    if PACKET_FLOWS.remove(key).is_err() {
        return DECIDED_PASS;
    }
    reject(&breaker)
}

/// A redirected flow's SYN sent again, whose flow is another upstream's (the
/// fallback hop it went to): if that upstream's breaker has turned connects
/// away since, as [`retransmitted`] judges, the client stops waiting on it now,
/// with a reset, whatever that upstream's own `packet_action` (the flow was
/// redirected once already: it is not sent on again). Out of line, a sibling of
/// `decide`.
#[inline(never)]
fn redirected_gives_up(key: &FlowKey, isn: u32) -> bool {
    // SAFETY: the value is copied out at once.
    let Some(flow) = (unsafe { PACKET_FLOWS.get(key) }).copied() else {
        return false;
    };
    if flow.isn != isn {
        return false;
    }
    let Some(breaker) = Breaker::of_record(flow.upstream, &flow.dest, false) else {
        return false;
    };
    if !gives_up(&breaker, &flow) || PACKET_FLOWS.remove(key).is_err() {
        return false;
    }
    // The redirect ends with it: a SYN sent again is decided anew (reset again,
    // should this reset be lost), and the hop's side of the ports is free.
    nat::forget(key);
    breaker.count(|c| c.rejected += 1);
    true
}

/// Whether a flow's breaker now turns its SYN sent again away: as admission
/// would see the word now (an OPEN past its open_duration is HALF_OPEN, and an
/// operator's override wins); never in dry run.
#[inline(always)]
fn gives_up(breaker: &Breaker, flow: &FlowRecord) -> bool {
    let word = machine::expire_open(breaker.peek(), now_ms(), &breaker.policy.thresholds());
    let state = word.state();
    let rejects = match word.mode() {
        Mode::ForceOpen => true,
        Mode::ForceClosed | Mode::Disabled => false,
        // Counted already, and no trial of HALF_OPEN's: only CLOSED lets it on.
        Mode::Auto if flow.flags & FLOW_ENDED != 0 => state != State::Closed,
        // Still waiting: only OPEN gives up on it (a trial is HALF_OPEN's own).
        Mode::Auto => state == State::Open && flow.flags & FLOW_TRIAL == 0,
    };
    rejects && breaker.policy.flags & POLICY_DRY_RUN == 0
}

/// Starts a flow; false (counted) when the table refused it.
#[inline(always)]
pub(super) fn track(
    key: &FlowKey,
    upstream: u32,
    dest: DestKey,
    isn: u32,
    flags: u32,
    epoch: u8,
) -> bool {
    let flow = flow_record(upstream, dest, isn, flags, epoch);
    if PACKET_FLOWS.insert(key, flow, 0).is_ok() {
        count(|c| c.syns_tracked += 1);
        true
    } else {
        count(|c| c.flows_untracked += 1);
        breaker::count(upstream, |c| c.unwatched += 1);
        false
    }
}

/// Starts a flow whose ports have none (`BPF_NOEXIST`); false, uncounted, when
/// they have one or the table refused it: [`decide`] then looks the SYN up.
#[inline(always)]
fn start_new(key: &FlowKey, upstream: u32, dest: DestKey, isn: u32) -> bool {
    let flow = flow_record(upstream, dest, isn, 0, 0);
    if PACKET_FLOWS.insert(key, flow, BPF_NOEXIST as u64).is_err() {
        return false;
    }
    count(|c| c.syns_tracked += 1);
    true
}

#[inline(always)]
fn flow_record(upstream: u32, dest: DestKey, isn: u32, flags: u32, epoch: u8) -> FlowRecord {
    FlowRecord {
        started_jiffies: jiffies(),
        dest,
        upstream,
        isn,
        epoch: epoch as u32,
        flags,
        _pad: 0,
    }
}

/// A rejected SYN, as its upstream's `packet_action` says: dropped, answered (a
/// reset or an ICMP error), or its flow sent to the fallback (counted there).
#[inline(always)]
fn reject(breaker: &Breaker) -> u32 {
    let flags = breaker.policy.flags;
    if flags & POLICY_PACKET_REDIRECT != 0 {
        return DECIDED_REDIRECT | breaker.upstream << DECIDED_UPSTREAM_SHIFT;
    }
    breaker.count(|c| c.rejected += 1);
    if flags & POLICY_PACKET_DROP != 0 {
        count(|c| c.syns_dropped += 1);
        return DECIDED_DROP;
    }
    if flags & POLICY_PACKET_ICMP != 0 {
        return DECIDED_ICMP;
    }
    DECIDED_RESET
}
