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
