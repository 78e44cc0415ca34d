//! Every map the programs share with each other and with the daemon. Sizes here are
//! placeholders: the daemon sets them from the config at load time.
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use breaker_common::{
    abi::{
        BreakerCell, ConnectDurations, Counters, DestKey, EndpointSlot, EndpointV4, EndpointV6,
        ExtraCounters, PinMetadata, ServiceEndpoints, Settings, SocketRecord, UpstreamName,
        UpstreamPolicy,
    },
    packet::{FlowKey, FlowRecord, NatTarget, PacketCounters},
    window::RateWindow,
};

/// Global settings (probe mark, default policy on/off). Written by the daemon.
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Single-address endpoints with a port and their upstream ids, laid out by the
/// daemon for linear probing from `dest::endpoint_slot` (see `EndpointSlot`):
/// the common case in a few inlined array reads. Written by the daemon.
#[map]
pub static ENDPOINT_TABLE: Array<EndpointSlot> = Array::with_max_entries(1, 0);

/// Single-address endpoint with a port -> upstream id, for the few the table had
/// no place for (`EXACT_OVERFLOW`). Written by the daemon.
#[map]
pub static ENDPOINTS_EXACT: HashMap<DestKey, u32> = HashMap::with_max_entries(1, 0);

/// IPv4 endpoint (port, prefix) -> upstream id, for CIDR and any-port endpoints.
/// Written by the daemon.
#[map]
pub static ENDPOINTS_V4: LpmTrie<EndpointV4, u32> = LpmTrie::with_max_entries(1, 0);

/// IPv6 endpoint (port, prefix) -> upstream id, for CIDR and any-port endpoints.
/// Written by the daemon.
#[map]
pub static ENDPOINTS_V6: LpmTrie<EndpointV6, u32> = LpmTrie::with_max_entries(1, 0);

/// Upstream id -> thresholds and fallback. Written by the daemon.
#[map]
pub static POLICIES: Array<UpstreamPolicy> = Array::with_max_entries(1, 0);

/// Upstream id -> packed breaker word. Changed only by compare-and-swap, by the
/// programs and by the daemon through an mmap of this map (hence MMAPABLE).
#[map]
pub static UPSTREAM_STATES: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Default policy: destination -> its own breaker word. Inserted by sock_ops at a
/// destination's first failure (healthy destinations never get one, so they cannot
/// evict a tripped one), changed by compare-and-swap from every program; LRU bounds it.
#[map]
pub static DEFAULT_STATES: LruHashMap<DestKey, BreakerCell> = LruHashMap::with_max_entries(1, 0);

/// Default policy: destination -> breaker word, for destinations whose breaker is
/// OPEN or HALF_OPEN. A plain hash, not an LRU, so no flood of failing or healthy
/// destinations can evict a tripped one; moved here from `DEFAULT_STATES` at the
/// trip (when there is room) and removed when the breaker closes. Elements are
/// freed through RCU (no preallocation), so a program still holding one is safe.
#[map]
pub static DEFAULT_TRIPPED: HashMap<DestKey, BreakerCell> =
    HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// Slot (socket cookie, masked) -> what connect4/6 decided for that socket: its
/// breaker, trial epoch, start time. Taken by connect4/6 with compare-and-swap on
/// the owner cookie; read and marked done by sock_ops and sock_release; given back
/// by whichever ends it (sock_release at the latest). Sized by the daemon (a power
/// of two); a connect finding its slots taken goes unwatched.
#[map]
pub static SOCKET_RECORDS: Array<SocketRecord> = Array::with_max_entries(1, 0);

/// Upstream id -> its windows (rings of time buckets: failures, slow connects),
/// for upstreams with `failure_rate_threshold` or `slow_rate_threshold`. Each bucket changed by compare-and-swap by
/// sock_ops at each outcome of a connect made while CLOSED; zeroed at a trip.
/// Made anew at each load: a reload starts every window empty.
#[map]
pub static RATE_WINDOWS: Array<RateWindow> = Array::with_max_entries(1, 0);

/// Packet path: a SYN seen on a watched interface -> its breaker, sequence number
/// and start. Inserted by the ingress hook; removed by whichever sees the flow end
/// first (the egress hook at an answer, `brk_flow_expire` at its timeout), which
/// is how each flow counts once. An LRU: a flood of SYNs evicts old flows (which
/// then go uncounted), never blocks new ones. Made anew at each load.
#[map]
pub static PACKET_FLOWS: LruHashMap<FlowKey, FlowRecord> = LruHashMap::with_max_entries(1, 0);

/// Packet path, `packet_action = "redirect"`: a redirected flow as the client
/// sends it -> the fallback its destination is rewritten to. Inserted by the
/// ingress hook when it redirects a SYN, removed when a SYN of the same ports is
/// let through to the upstream again; an LRU, so established redirected flows
/// keep working until the table needs their room. Made anew at each load.
#[map]
pub static PACKET_NAT_OUT: LruHashMap<FlowKey, NatTarget> = LruHashMap::with_max_entries(1, 0);

/// Packet path: the same flows as the fallback answers them -> the upstream its
/// source is rewritten back to, on egress. Written beside `PACKET_NAT_OUT`.
#[map]
pub static PACKET_NAT_BACK: LruHashMap<FlowKey, NatTarget> = LruHashMap::with_max_entries(1, 0);

/// Packet path counters that belong to no upstream (skipped packets, unmatched
/// ICMP errors, ...), per CPU: written on the hot path.
#[map]
pub static PACKET_COUNTERS: PerCpuArray<PacketCounters> = PerCpuArray::with_max_entries(1, 0);

/// Upstream id -> counters, per CPU (written on every watched connect).
#[map]
pub static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// Upstream id -> how long its successful connects took (a histogram in ticks),
/// per CPU; written by sock_ops and the packet path's egress at each success.
#[map]
pub static CONNECT_DURATIONS: PerCpuArray<ConnectDurations> = PerCpuArray::with_max_entries(1, 0);

/// Upstream id -> counters added since `COUNTERS` was kept (slow connects, aborted
/// in-flight connects), per CPU; written by sock_ops and the packet path's egress.
/// Kept like `COUNTERS`.
#[map]
pub static EXTRA_COUNTERS: PerCpuArray<ExtraCounters> = PerCpuArray::with_max_entries(1, 0);

/// State transitions, to the daemon.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Service id (the `UpstreamPolicy.service` of its endpoints) -> how many of its
/// endpoints are out of CLOSED, which its ejection cap bounds. Changed only by
/// compare-and-swap: by the programs at a trip or a close, by the daemon at a
/// close (probes, resets, through an mmap) and recounted at each load.
#[map]
pub static SERVICE_EJECTIONS: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// `UpstreamPolicy.steer_row` - 1 -> a `per_endpoint` service's endpoints, where
/// a connect to an endpoint whose breaker rejects is steered. Written by the
/// daemon at each load; read by the connect hooks and the packet ingress.
#[map]
pub static SERVICE_ENDPOINTS: Array<ServiceEndpoints> = Array::with_max_entries(1, 0);

/// When the daemon last showed it is alive (monotonic ms, wrapping; 0 never).
/// Written by the daemon's probe scheduler through an mmap (hence MMAPABLE); read
/// by the connect hooks, which let application trials through HALF_OPEN while no
/// daemon probes.
#[map]
pub static DAEMON_HEARTBEAT: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Upstream id -> the upstream's name, so a restarted or reloaded daemon gives
/// each upstream its id (and state and counters) back. Written and read by the
/// daemon only; lives here so that it is created, pinned and sized with the rest.
#[map]
pub static UPSTREAM_NAMES: Array<UpstreamName> = Array::with_max_entries(1, 0);

/// Who made the pinned maps and links (ABI version, binary, config digest,
/// cgroup). Written and read by the daemon only.
#[map]
pub static PIN_METADATA: Array<PinMetadata> = Array::with_max_entries(1, 0);
