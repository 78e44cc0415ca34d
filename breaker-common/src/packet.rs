//! The packet path's shared pieces: the flow a SYN crossing a watched interface
//! starts, how an answer to it is recognised, and the reset the ingress hook
//! answers a rejected SYN with, built here whole, checksums included.
//!
//! Byte order: addresses and ports are kept as they are in the packet (network
//! order in native-endian integers), the convention of [`crate::dest`]; sequence
//! numbers are host order.
use crate::abi::DestKey;

/// One connect seen as packets: the client (the workload behind the watched
/// interface) and the upstream it sent its SYN to. IPv4 addresses are v4-mapped,
/// as in [`DestKey`], so one key type serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client: [u32; 4],
    pub upstream: [u32; 4],
    pub client_port: u16,
    pub upstream_port: u16,
    /// `AF_INET` or `AF_INET6`, as in [`DestKey`].
    pub family: u16,
    pub _pad: u16,
}

impl FlowKey {
    /// The destination the SYN named, as the breakers key it.
    #[inline(always)]
    pub const fn upstream_dest(&self) -> DestKey {
        DestKey {
            addr: self.upstream,
            port: self.upstream_port,
            family: self.family,
        }
    }
}

/// `FlowRecord.flags`: the flow is a HALF_OPEN trial of `FlowRecord.epoch`.
pub const FLOW_TRIAL: u32 = 1 << 0;
/// `FlowRecord.flags`: the flow timed out and was counted; kept so that the
/// client's retransmitted SYNs are known as such (not new attempts, and reset
/// once the breaker opens), and answers that come late count nothing.
pub const FLOW_ENDED: u32 = 1 << 1;

/// How long a timed-out flow is remembered for its retransmitted SYNs: past the
/// kernel's default SYN retries (127 s), the client has given up.
pub const ENDED_FLOW_KEPT_SECS: u32 = 130;

/// What the ingress hook decided for one SYN, kept until the flow's outcome.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowRecord {
    /// The kernel's jiffies when the SYN was first seen.
    pub started_jiffies: u64,
    /// The destination as the SYN named it: the default-policy key.
    pub dest: DestKey,
    /// The breaker: a configured upstream id, or the default policy's (0).
    pub upstream: u32,
    /// The SYN's sequence number (host order): an answer must acknowledge it, an
    /// ICMP error must quote it.
    pub isn: u32,
    /// The HALF_OPEN epoch of a trial (low 8 bits).
    pub epoch: u32,
    /// `FLOW_*` bits.
    pub flags: u32,
    pub _pad: u32,
}

/// The query of a `brk_flow_expire` run: the flow, and the age (in jiffies) from
/// which it has timed out. After an Ethernet-header-sized gap, as the resolve query.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpireQuery {
    pub flow: FlowKey,
    pub timeout_jiffies: u32,
    pub _pad: u32,
}

/// `brk_flow_expire`: the flow timed out, and this run counted it.
pub const EXPIRE_COUNTED: u32 = 1;
/// `brk_flow_expire`: the flow is younger than its timeout, or already gone.
pub const EXPIRE_NOT_YET: u32 = 0;

/// Where a redirected flow's packets are rewritten to, the value of both NAT maps:
/// `PACKET_NAT_OUT` (keyed by the flow as the client sends it: the destination
/// becomes the fallback) and `PACKET_NAT_BACK` (keyed by the flow as the fallback
/// answers it: the source becomes the upstream again). Address and port as in
/// [`FlowKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatTarget {
    pub addr: [u32; 4],
    pub port: u16,
    /// Non-zero once the side that sends with this key's source has sent a FIN
    /// (the client's side in `PACKET_NAT_OUT`, the fallback's in
    /// `PACKET_NAT_BACK`). Set by the hook that rewrites that side's segments,
    /// only ever to 1, one byte: writers racing on it store the same value.
    pub fin: u8,
    /// How the fallback answered the redirected SYN (`PACKET_NAT_BACK` only):
    /// [`NAT_UNANSWERED`], [`NAT_ACCEPTED`] or [`NAT_REFUSED`]; see
    /// [`NatTarget::answered`]. Set by the egress hook, once, from unanswered.
    pub answer: u8,
    /// The redirected SYN's sequence number (host order): the same SYN sent again
    /// is a retransmission of this flow, one with another is a new connect.
    pub isn: u32,
}

/// `NatTarget.answer`: nothing from the fallback has answered the SYN yet.
pub const NAT_UNANSWERED: u8 = 0;
/// `NatTarget.answer`: the fallback's SYN-ACK acknowledged the SYN.
pub const NAT_ACCEPTED: u8 = 1;
/// `NatTarget.answer`: the fallback reset the connect before any SYN-ACK, with
/// a reset acknowledging exactly the SYN: the one reset a SYN_SENT client
/// accepts, and it fails the connect (ECONNREFUSED).
pub const NAT_REFUSED: u8 = 2;

// The NAT maps are pinned and adopted by the next daemon only with this layout:
// a redirected flow lives through an upgrade only if it stays.
const _: () = assert!(core::mem::size_of::<NatTarget>() == 24);

impl NatTarget {
    /// Whether the redirected flow whose client side is `self` (its
    /// `PACKET_NAT_OUT` entry) and whose fallback side is `back` has closed: a
    /// FIN both ways. Its fallback side is then no one's, free for the next
    /// flow that needs it; its entries still rewrite its late segments until
    /// then. A reset is not taken for a close: the stack it reaches ignores one
    /// outside its window (RFC 5961, and anyone who knows the ports can send
    /// one), and a client whose connect sees an unacceptable answer resets it
    /// and sends its SYN again, so a live flow would be taken over.
    ///
    /// Nor a reset of a connect under way, but one: a reset from the fallback
    /// that acknowledges exactly the SYN, before any SYN-ACK (`NAT_REFUSED`),
    /// is the only reset a client in SYN_SENT accepts (RFC 793, 9293 3.10.7.3),
    /// and it ends that connect with ECONNREFUSED. A client that did not take
    /// it (lost on the way, or dropped by its own checks) sends the same SYN
    /// again, which puts the flow back to unanswered (the ingress' `syn_seen`),
    /// or has it decided anew if the next flow took the side meanwhile.
    #[inline(always)]
    pub const fn closed_with(&self, back: &NatTarget) -> bool {
        (self.fin != 0 && back.fin != 0) || back.answer == NAT_REFUSED
    }

    /// The fallback side's `answer` after the fallback's segment with `flags`
    /// and acknowledgement `ack`: the first answer to the SYN (`isn`) is kept,
    /// later segments change nothing (a reset after a SYN-ACK may be out of the
    /// client's window, and is not a refusal).
    #[inline(always)]
    pub const fn answered(&self, flags: u8, ack: u32) -> u8 {
        if self.answer != NAT_UNANSWERED {
            return self.answer;
        }
        match answer(flags, ack, self.isn) {
            Some(Answer::Accepted) => NAT_ACCEPTED,
            Some(Answer::Refused) => NAT_REFUSED,
            None => NAT_UNANSWERED,
        }
    }
}

/// Packet-path counters that belong to no upstream, one slot per CPU in
/// `PACKET_COUNTERS`, summed by the daemon. Outcomes and rejections go to the
/// upstream's own [`crate::abi::Counters`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounters {
    /// SYNs that started a flow.
    pub syns_tracked: u64,
    /// SYNs of a flow already tracked (same addresses, ports and sequence number).
    pub syns_retransmitted: u64,
    /// Rejected SYNs answered with a reset.
    pub replies_reset: u64,
    /// Rejected SYNs dropped (`packet_action = "drop"`).
    pub syns_dropped: u64,
    /// Rejected SYNs answered with an ICMP port unreachable (`packet_action = "icmp"`).
    pub replies_icmp: u64,
    /// Rejected SYNs whose flow was sent to the fallback (`packet_action = "redirect"`).
    pub flows_redirected: u64,
    /// Segments of redirected flows rewritten, both ways, and ICMP errors about
    /// them on their way back (the quoted packet's destination).
    pub segments_rewritten: u64,
    /// Answers (SYN-ACK, reset, ICMP error) that ended a tracked flow.
    pub answers_matched: u64,
    /// ICMP errors that quoted no tracked flow exactly (late, or forged).
    pub icmp_unmatched: u64,
    /// Flows that got no answer within their timeout.
    pub flows_timed_out: u64,
    /// SYNs passed untracked because the flow table refused an entry.
    pub flows_untracked: u64,
    /// Packets passed untouched because the hook could not read them: truncated,
    /// malformed, fragments.
    pub skipped: u64,
}

impl PacketCounters {
    /// Each counter under its name (the `event` label of
    /// `breaker_packet_events_total`): the one list of them the daemon, the
    /// metrics and the tests go by.
    pub const fn events(&self) -> [(&'static str, u64); 12] {
        [
            ("syn_tracked", self.syns_tracked),
            ("syn_retransmitted", self.syns_retransmitted),
            ("reset_sent", self.replies_reset),
            ("syn_dropped", self.syns_dropped),
            ("icmp_sent", self.replies_icmp),
            ("flow_redirected", self.flows_redirected),
            ("segment_rewritten", self.segments_rewritten),
            ("answer_matched", self.answers_matched),
            ("icmp_unmatched", self.icmp_unmatched),
            ("flow_timed_out", self.flows_timed_out),
            ("flow_untracked", self.flows_untracked),
            ("skipped", self.skipped),
        ]
    }

    /// Every counter of `self` and `other` combined with `f` (a sum over CPUs,
    /// a difference between two reads).
    pub fn zip(&self, other: &Self, f: impl Fn(u64, u64) -> u64) -> Self {
        PacketCounters {
            syns_tracked: f(self.syns_tracked, other.syns_tracked),
            syns_retransmitted: f(self.syns_retransmitted, other.syns_retransmitted),
            replies_reset: f(self.replies_reset, other.replies_reset),
            syns_dropped: f(self.syns_dropped, other.syns_dropped),
            replies_icmp: f(self.replies_icmp, other.replies_icmp),
            flows_redirected: f(self.flows_redirected, other.flows_redirected),
            segments_rewritten: f(self.segments_rewritten, other.segments_rewritten),
            answers_matched: f(self.answers_matched, other.answers_matched),
            icmp_unmatched: f(self.icmp_unmatched, other.icmp_unmatched),
            flows_timed_out: f(self.flows_timed_out, other.flows_timed_out),
            flows_untracked: f(self.flows_untracked, other.flows_untracked),
            skipped: f(self.skipped, other.skipped),
        }
    }
}

/// TCP header flags.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// How the upstream answered a tracked SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A SYN-ACK acknowledging the SYN.
    Accepted,
    /// A reset acknowledging the SYN (the only reset a SYN_SENT socket accepts).
    Refused,
}

/// What a TCP segment from the upstream says about the flow whose SYN had
/// sequence number `isn`: only a segment acknowledging exactly that SYN answers it,
/// so a stray or forged segment never ends a flow.
pub const fn answer(flags: u8, ack: u32, isn: u32) -> Option<Answer> {
    if flags & TCP_ACK == 0 || ack != isn.wrapping_add(1) {
        return None;
    }
    if flags & TCP_RST != 0 {
        Some(Answer::Refused)
    } else if flags & TCP_SYN != 0 {
        Some(Answer::Accepted)
    } else {
        None
    }
}

/// Whether a TCP segment with `flags` opens a connection: SYN alone (no ACK, no
/// RST, no FIN).
pub const fn is_connect(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
}

/// Whether an ICMPv4 error of `icmp_type`/`code` means the destination cannot be
/// reached: a destination unreachable, except "fragmentation needed", which is
/// path MTU discovery and no failure.
pub const fn icmp4_unreachable(icmp_type: u8, code: u8) -> bool {
    icmp_type == 3 && code != 4
}

/// Whether an ICMPv6 error of `icmp_type` means the destination cannot be reached
/// (every destination unreachable code; "packet too big" is path MTU discovery).
pub const fn icmp6_unreachable(icmp_type: u8) -> bool {
    icmp_type == 1
}

/// Whether an ICMPv4 message of `icmp_type` is an error that quotes the packet
/// it is about: destination unreachable (fragmentation needed among them), time
/// exceeded, parameter problem. The client's stack matches each to its socket
/// by the quoted header.
pub const fn icmp4_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 3 | 11 | 12)
}

/// As [`icmp4_error`] for ICMPv6: destination unreachable, packet too big, time
/// exceeded, parameter problem.
pub const fn icmp6_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 1..=4)
}

/// Whether a flow started at `started` (jiffies) has gone unanswered for at least
/// `timeout` jiffies at `now`. Wraps with the low 32 bits, as the daemon reads them.
pub const fn timed_out(started: u64, now: u64, timeout: u32) -> bool {
    (now as u32).wrapping_sub(started as u32) >= timeout
}

/// Length of the reset answering an IPv4 SYN: IPv4 and TCP headers, no options.
pub const RESET_V4_LEN: usize = 40;
/// Length of the reset answering an IPv6 SYN: IPv6 and TCP headers, no options.
pub const RESET_V6_LEN: usize = 60;
/// The hop limit of a reset sent back to the client.
pub const RESET_TTL: u8 = 64;

/// The reset (RST|ACK) that refuses a SYN from `client` to `upstream` with
/// sequence number `isn`, from the upstream's address and port, as an IPv4
/// packet. The client's stack takes it as the upstream's own: seq 0, ack isn+1
/// (RFC 9293 3.10.7.1 for a segment without ACK).
pub fn reset_v4(
    client: u32,
    upstream: u32,
    client_port: u16,
    upstream_port: u16,
    isn: u32,
) -> [u8; RESET_V4_LEN] {
    let mut p = [0u8; RESET_V4_LEN];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(RESET_V4_LEN as u16).to_be_bytes());
    // Don't fragment: 20 bytes never need it.
    p[6] = 0x40;
    p[8] = RESET_TTL;
    p[9] = 6;
    p[12..16].copy_from_slice(&upstream.to_ne_bytes());
    p[16..20].copy_from_slice(&client.to_ne_bytes());
    let ip_sum = fold(sum_words(&p[..20], 0));
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    write_reset_tcp(&mut p[20..], client_port, upstream_port, isn);
    let pseudo = sum_words(&p[12..20], 6 + 20);
    let tcp_sum = fold(sum_words(&p[20..], pseudo));
    p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// As [`reset_v4`], as an IPv6 packet.
pub fn reset_v6(
    client: [u32; 4],
    upstream: [u32; 4],
    client_port: u16,
    upstream_port: u16,
    isn: u32,
) -> [u8; RESET_V6_LEN] {
    let mut p = [0u8; RESET_V6_LEN];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&20u16.to_be_bytes());
    p[6] = 6;
    p[7] = RESET_TTL;
    let mut i = 0;
    while i < 4 {
        p[8 + 4 * i..12 + 4 * i].copy_from_slice(&upstream[i].to_ne_bytes());
        p[24 + 4 * i..28 + 4 * i].copy_from_slice(&client[i].to_ne_bytes());
        i += 1;
    }
    write_reset_tcp(&mut p[40..], client_port, upstream_port, isn);
    let pseudo = sum_words(&p[8..40], 6 + 20);
    let tcp_sum = fold(sum_words(&p[40..], pseudo));
    p[56..58].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// Length of the ICMP port unreachable answering an IPv4 SYN: IPv4 and ICMP
/// headers, then the SYN's IPv4 header (without options) and its first 8 bytes.
pub const ICMP_REPLY_V4_LEN: usize = 56;
/// Length of the ICMPv6 port unreachable answering an IPv6 SYN: IPv6 and ICMPv6
/// headers, then the SYN's IPv6 header (without extension headers) and its first
/// 8 bytes.
pub const ICMP_REPLY_V6_LEN: usize = 96;

/// What an ICMP error quotes of the SYN it answers, beyond addresses and ports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotedSyn {
    /// Sequence number (host order).
    pub isn: u32,
    /// The IP packet's length field as sent: IPv4 total length, IPv6 payload length.
    pub ip_len: u16,
    /// TTL or hop limit as sent.
    pub hops: u8,
}

/// The ICMP destination unreachable (port unreachable) that refuses a SYN from
/// `client` to `upstream`, from the upstream's address. The client's stack takes
/// it as a hard error for the SYN it quotes: connect() fails with ECONNREFUSED.
pub fn port_unreachable_v4(
    client: u32,
    upstream: u32,
    client_port: u16,
    upstream_port: u16,
    syn: QuotedSyn,
) -> [u8; ICMP_REPLY_V4_LEN] {
    let mut p = [0u8; ICMP_REPLY_V4_LEN];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(ICMP_REPLY_V4_LEN as u16).to_be_bytes());
    p[8] = RESET_TTL;
    p[9] = 1;
    p[12..16].copy_from_slice(&upstream.to_ne_bytes());
    p[16..20].copy_from_slice(&client.to_ne_bytes());
    let ip_sum = fold(sum_words(&p[..20], 0));
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    // Destination unreachable, port unreachable.
    p[20] = 3;
    p[21] = 3;
    // The SYN's header as sent, options left out (the length says what it was).
    let q = 28;
    p[q] = 0x45;
    p[q + 2..q + 4].copy_from_slice(&syn.ip_len.to_be_bytes());
    p[q + 6] = 0x40;
    p[q + 8] = syn.hops;
    p[q + 9] = 6;
    p[q + 12..q + 16].copy_from_slice(&client.to_ne_bytes());
    p[q + 16..q + 20].copy_from_slice(&upstream.to_ne_bytes());
    let quoted_sum = fold(sum_words(&p[q..q + 20], 0));
    p[q + 10..q + 12].copy_from_slice(&quoted_sum.to_be_bytes());
    write_quoted_tcp(&mut p[q + 20..], client_port, upstream_port, syn.isn);
    let icmp_sum = fold(sum_words(&p[20..], 0));
    p[22..24].copy_from_slice(&icmp_sum.to_be_bytes());
    p
}

/// As [`port_unreachable_v4`], as an ICMPv6 destination unreachable (port
/// unreachable, code 4).
pub fn port_unreachable_v6(
    client: [u32; 4],
    upstream: [u32; 4],
    client_port: u16,
    upstream_port: u16,
    syn: QuotedSyn,
) -> [u8; ICMP_REPLY_V6_LEN] {
    let mut p = [0u8; ICMP_REPLY_V6_LEN];
    let upper_len = (ICMP_REPLY_V6_LEN - 40) as u16;
    p[0] = 0x60;
    p[4..6].copy_from_slice(&upper_len.to_be_bytes());
    p[6] = 58;
    p[7] = RESET_TTL;
    let q = 48;
    p[q] = 0x60;
    p[q + 4..q + 6].copy_from_slice(&syn.ip_len.to_be_bytes());
    p[q + 6] = 6;
    p[q + 7] = syn.hops;
    let mut i = 0;
    while i < 4 {
        p[8 + 4 * i..12 + 4 * i].copy_from_slice(&upstream[i].to_ne_bytes());
        p[24 + 4 * i..28 + 4 * i].copy_from_slice(&client[i].to_ne_bytes());
        p[q + 8 + 4 * i..q + 12 + 4 * i].copy_from_slice(&client[i].to_ne_bytes());
        p[q + 24 + 4 * i..q + 28 + 4 * i].copy_from_slice(&upstream[i].to_ne_bytes());
        i += 1;
    }
    p[40] = 1;
    p[41] = 4;
    write_quoted_tcp(&mut p[q + 40..], client_port, upstream_port, syn.isn);
    let pseudo = sum_words(&p[8..40], 58 + upper_len as u32);
    let icmp_sum = fold(sum_words(&p[40..], pseudo));
    p[42..44].copy_from_slice(&icmp_sum.to_be_bytes());
    p
}

/// The first 8 bytes of the SYN as the client sent it: ports and sequence number.
fn write_quoted_tcp(t: &mut [u8], client_port: u16, upstream_port: u16, isn: u32) {
    t[0..2].copy_from_slice(&client_port.to_ne_bytes());
    t[2..4].copy_from_slice(&upstream_port.to_ne_bytes());
    t[4..8].copy_from_slice(&isn.to_be_bytes());
}

/// A checksum field updated for one 32-bit word of what it covers changing from
/// `old` to `new` (RFC 1624, eqn. 3): the field and both words as they are in the
/// packet.
pub fn csum_replace4(check: [u8; 2], old: [u8; 4], new: [u8; 4]) -> [u8; 2] {
    let mut sum = !u16::from_be_bytes(check) as u32;
    sum += !u16::from_be_bytes([old[0], old[1]]) as u32;
    sum += !u16::from_be_bytes([old[2], old[3]]) as u32;
    sum += u16::from_be_bytes([new[0], new[1]]) as u32;
    sum += u16::from_be_bytes([new[2], new[3]]) as u32;
    fold(sum).to_be_bytes()
}

/// As [`csum_replace4`], for a 16-bit word.
pub fn csum_replace2(check: [u8; 2], old: [u8; 2], new: [u8; 2]) -> [u8; 2] {
    let mut sum = !u16::from_be_bytes(check) as u32;
    sum += !u16::from_be_bytes(old) as u32;
    sum += u16::from_be_bytes(new) as u32;
    fold(sum).to_be_bytes()
}

/// The 20-byte TCP header of a reset, checksum left 0.
fn write_reset_tcp(t: &mut [u8], client_port: u16, upstream_port: u16, isn: u32) {
    t[0..2].copy_from_slice(&upstream_port.to_ne_bytes());
    t[2..4].copy_from_slice(&client_port.to_ne_bytes());
    // seq 0 (bytes 4..8 stay zero); ack the SYN.
    t[8..12].copy_from_slice(&isn.wrapping_add(1).to_be_bytes());
    t[12] = 5 << 4;
    t[13] = TCP_RST | TCP_ACK;
}

/// The one's complement sum of `bytes` as big-endian 16-bit words, on top of
/// `init`, not yet folded. `bytes` has an even length.
pub fn sum_words(bytes: &[u8], init: u32) -> u32 {
    let mut sum = init;
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// Folds a one's complement sum to 16 bits and complements it: the checksum field.
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
mod tests;
