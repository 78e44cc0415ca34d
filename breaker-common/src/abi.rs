//! Everything that crosses the kernel boundary: map keys and values, counters and
//! events. All `#[repr(C)]`, padded explicitly, flags as integers.

/// Upstream id 0 is the `default` policy: destinations that match no configured
/// upstream, each with its own breaker in [`DestKey`]-keyed LRU map.
pub const DEFAULT_UPSTREAM_ID: u32 = 0;

/// `bpf_sock_addr.protocol` for TCP; every other protocol passes untouched.
pub const IPPROTO_TCP: u32 = 6;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// errno a rejected connect() fails with.
pub const ECONNREFUSED: i32 = 111;

/// Map names, shared so the daemon and the programs cannot disagree.
pub mod map_names {
    pub const SETTINGS: &str = "SETTINGS";
    pub const ENDPOINT_TABLE: &str = "ENDPOINT_TABLE";
    pub const ENDPOINTS_EXACT: &str = "ENDPOINTS_EXACT";
    pub const ENDPOINTS_V4: &str = "ENDPOINTS_V4";
    pub const ENDPOINTS_V6: &str = "ENDPOINTS_V6";
    pub const POLICIES: &str = "POLICIES";
    pub const UPSTREAM_STATES: &str = "UPSTREAM_STATES";
    pub const DEFAULT_STATES: &str = "DEFAULT_STATES";
    pub const DEFAULT_TRIPPED: &str = "DEFAULT_TRIPPED";
    pub const SOCKET_RECORDS: &str = "SOCKET_RECORDS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const CONNECT_DURATIONS: &str = "CONNECT_DURATIONS";
    pub const EXTRA_COUNTERS: &str = "EXTRA_COUNTERS";
    pub const EVENTS: &str = "EVENTS";
    pub const UPSTREAM_NAMES: &str = "UPSTREAM_NAMES";
    pub const PIN_METADATA: &str = "PIN_METADATA";
    pub const DAEMON_HEARTBEAT: &str = "DAEMON_HEARTBEAT";
    pub const RATE_WINDOWS: &str = "RATE_WINDOWS";
    pub const SERVICE_EJECTIONS: &str = "SERVICE_EJECTIONS";
    pub const SERVICE_ENDPOINTS: &str = "SERVICE_ENDPOINTS";
    pub const PACKET_FLOWS: &str = "PACKET_FLOWS";
    pub const PACKET_COUNTERS: &str = "PACKET_COUNTERS";
    pub const PACKET_NAT_OUT: &str = "PACKET_NAT_OUT";
    pub const PACKET_NAT_BACK: &str = "PACKET_NAT_BACK";
}

/// The layout of every map that outlives a daemon (pinned and adopted by the next
/// one: states, counters, destinations, socket records, names, metadata,
/// heartbeat). Bump it when any of their key or value types changes: a daemon
/// refuses pins of another ABI rather than misread them.
pub const ABI_VERSION: u32 = 3;

/// Longest upstream name (the config refuses longer ones), so a name fits in
/// [`UpstreamName`].
pub const UPSTREAM_NAME_MAX: usize = 120;

/// `UPSTREAM_NAMES` value: the name an upstream id belongs to, so that a restarted
/// or reloaded daemon gives each upstream back its id, and with it its state word
/// and counters. `len` 0: the id is free.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamName {
    pub len: u32,
    pub _pad: u32,
    pub bytes: [u8; UPSTREAM_NAME_MAX],
}

impl Default for UpstreamName {
    fn default() -> Self {
        UpstreamName {
            len: 0,
            _pad: 0,
            bytes: [0; UPSTREAM_NAME_MAX],
        }
    }
}

impl UpstreamName {
    /// `None` when `name` is longer than [`UPSTREAM_NAME_MAX`].
    pub fn new(name: &str) -> Option<UpstreamName> {
        let src = name.as_bytes();
        if src.len() > UPSTREAM_NAME_MAX {
            return None;
        }
        let mut out = UpstreamName {
            len: src.len() as u32,
            ..Default::default()
        };
        out.bytes[..src.len()].copy_from_slice(src);
        Some(out)
    }

    /// The name's bytes (empty for a free id).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..(self.len as usize).min(UPSTREAM_NAME_MAX)]
    }
}

/// `PIN_METADATA`'s single entry: who made the pinned maps and links, and for
/// which cgroup. Written by the daemon at each load; `bpftool map dump` shows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinMetadata {
    /// [`ABI_VERSION`] of the binary that created the maps.
    pub abi_version: u32,
    /// Pid of the daemon that last loaded programs onto these maps.
    pub pid: u32,
    /// When that was, in seconds since the Unix epoch.
    pub loaded_at_unix: u64,
    /// Identity (device, inode) of the cgroup the pinned links are attached to.
    pub cgroup_dev: u64,
    pub cgroup_ino: u64,
    /// First 16 bytes of the SHA-256 of the config file it loaded.
    pub config_digest: [u8; 16],
    /// The binary's version, NUL-padded ASCII.
    pub binary_version: [u8; 32],
    /// First 16 bytes of the SHA-256 of the eBPF object whose programs the links
    /// run and of the daemon binary's file identity: a restart of the same binary
    /// with the same config resumes them unverified.
    pub object_digest: [u8; 16],
    /// The kernel's tick rate, measured once per boot (bpffs does not outlive one).
    pub hz: u32,
    pub _pad: u32,
}

/// Program names as the eBPF object exports them; short enough for the kernel's
/// 15-character program names, so `bpftool prog` and BPF stats tell them apart.
pub mod program_names {
    pub const CONNECT4: &str = "brk_connect4";
    pub const CONNECT6: &str = "brk_connect6";
    pub const SOCK_OPS: &str = "brk_sock_ops";
    pub const SOCK_RELEASE: &str = "brk_release";
    /// Runs the destination lookup on a [`super::ResolveQuery`] under
    /// BPF_PROG_TEST_RUN (tests and `breaker explain`); never attached.
    pub const TEST_RESOLVE: &str = "brk_test_resolve";
    /// The packet path: SYNs arriving on a watched interface, as XDP or as TC.
    pub const XDP_INGRESS: &str = "brk_xdp_ingress";
    pub const TC_INGRESS: &str = "brk_tc_ingress";
    /// The packet path: the upstreams' answers leaving through a watched interface.
    pub const TC_EGRESS: &str = "brk_tc_egress";
    /// Run by the daemon under BPF_PROG_TEST_RUN for a flow past its timeout.
    pub const FLOW_EXPIRE: &str = "brk_flow_expire";
    /// Empty XDP and TC programs: the bench's baseline for the packet path.
    pub const NOP_XDP: &str = "brk_nop_xdp";
    pub const NOP_TC: &str = "brk_nop_tc";
    /// XDP: a SYN's parse and its flow's insert, nothing decided: the bench's
    /// floor for a SYN that starts a flow; never attached.
    pub const FLOW_FLOOR: &str = "brk_flow_floor";
    /// XDP: a SYN's parse, the flow table's lookup and a reset, no breaker
    /// asked: the bench's floor for a SYN answered with a reset; never attached.
    pub const RESET_FLOOR: &str = "brk_reset_floor";
    /// Returns the kernel's jiffies under BPF_PROG_TEST_RUN (the daemon's HZ
    /// measurement); never attached.
    pub const JIFFIES: &str = "brk_jiffies";
    /// Never attached: loaded on kernels older than 5.18 to name a missing feature.
    pub const NEED_ATOMICS: &str = "brk_need_atomics";
    pub const NEED_RETVAL: &str = "brk_need_retval";
    /// Empty programs of the same types, for `breaker calibrate` (benchmarks only).
    pub const NOP_CONNECT4: &str = "brk_nop_connect";
    pub const NOP_CONNECT6: &str = "brk_nop_conn6";
    pub const NOP_SOCK_OPS: &str = "brk_nop_sockops";
    pub const NOP_SOCK_RELEASE: &str = "brk_nop_release";
}

/// Global settings, the single entry of `SETTINGS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// SO_MARK of the daemon's probe sockets; connects from sockets with it pass untouched.
    pub probe_mark: u32,
    /// Non-zero: unmatched destinations get a breaker each under the default policy.
    pub default_policy_enabled: u32,
    /// `PREFIX_ENDPOINTS_V4` / `_V6`: the LPM tries hold endpoints of that family, so a
    /// miss in the single-address endpoints must look there too;
    /// `EXACT_OVERFLOW`: `ENDPOINTS_EXACT` holds single-address endpoints
    /// `ENDPOINT_TABLE` had no place for.
    pub prefix_endpoints: u32,
    /// `SOCKET_RECORDS` slots - 1 (a power of two minus one): cookie -> slot.
    pub record_slots_mask: u32,
    /// A record this many jiffies old is stale, and its slot may be taken over: a
    /// connect whose end nobody saw (another program turned off our callbacks, say)
    /// must not keep its slot forever.
    pub record_stale_jiffies: u32,
    /// Non-zero: some upstream's `packet_action` is `redirect`, so the packet
    /// hooks look every TCP segment up in `PACKET_NAT_OUT` / `PACKET_NAT_BACK`.
    /// Zero keeps established flows at the cost of the parse alone.
    pub packet_nat: u32,
    /// `ENDPOINT_TABLE` slots - 1 (a power of two minus one).
    pub endpoint_table_mask: u32,
    pub _pad: u32,
}

pub const PREFIX_ENDPOINTS_V4: u32 = 1 << 0;
pub const PREFIX_ENDPOINTS_V6: u32 = 1 << 1;
/// `Settings.prefix_endpoints`: `ENDPOINTS_EXACT` holds endpoints too.
pub const EXACT_OVERFLOW: u32 = 1 << 2;

/// One slot of `ENDPOINT_TABLE`: a single-address endpoint with a port and its
/// upstream's id (0: an empty slot, as no endpoint is the default policy's).
/// The daemon places each at `dest::endpoint_slot` or one of the next
/// [`crate::dest::ENDPOINT_TABLE_PROBES`] - 1 slots (linear probing, every
/// slot between taken), so a lookup reads at most that many array slots, which
/// the verifier and the JIT inline, with no hash map's helper call or key hashing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointSlot {
    pub dest: DestKey,
    pub upstream: u32,
}

/// LPM trie key data for IPv4 endpoints. The port comes first so that one trie holds
/// port-specific endpoints (port != 0, prefix 16 + addr bits) and any-port endpoints
/// (port 0, looked up second). Both fields in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointV4 {
    pub port: [u8; 2],
    pub addr: [u8; 4],
}

/// LPM trie key data for IPv6 endpoints; as [`EndpointV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointV6 {
    pub port: [u8; 2],
    pub addr: [u8; 16],
}

/// Bits of prefix the port takes in an endpoint key.
pub const PORT_PREFIX_BITS: u32 = 16;

// Bits 0 and 1 of `UpstreamPolicy.flags` were the one fallback per family;
// the ordered `fallbacks` replaced them. Free for reuse.
/// Dry run: the state machine runs and reports, but nothing is rejected or
/// redirected; what would have been is counted in `would_reject`.
pub const POLICY_DRY_RUN: u32 = 1 << 2;
/// `count` leaves out refused connects (an RST): counted in metrics, never
/// toward opening the breaker. Bits that leave out, so that 0 counts them all.
pub const POLICY_IGNORE_REFUSED: u32 = 1 << 3;
/// `count` leaves out SYN timeouts.
pub const POLICY_IGNORE_TIMEOUT: u32 = 1 << 4;
/// `count` leaves out unreachable destinations (a hard ICMP error).
pub const POLICY_IGNORE_UNREACHABLE: u32 = 1 << 5;
/// `UpstreamPolicy.flags`: the packet path drops a rejected SYN instead of
/// answering it with a reset (`packet_action = "drop"`).
pub const POLICY_PACKET_DROP: u32 = 1 << 6;
/// `UpstreamPolicy.flags`: the packet path answers a rejected SYN with an ICMP
/// port unreachable from the upstream's address (`packet_action = "icmp"`).
pub const POLICY_PACKET_ICMP: u32 = 1 << 7;
/// `UpstreamPolicy.flags`: the packet path sends a rejected SYN's flow to the
/// first fallback of its family that may take it, addresses rewritten both ways
/// (`packet_action = "redirect"`); without one it is answered with a reset.
pub const POLICY_PACKET_REDIRECT: u32 = 1 << 8;
/// `count` names `"slow"`: a slow connect (see `slow_jiffies`) counts toward
/// opening as a failure would. Opt-in, so a bit that includes.
pub const POLICY_COUNT_SLOW: u32 = 1 << 9;
/// `per_endpoint = true` over CIDR or any-port endpoints: each address and port
/// the upstream matches keeps a breaker of its own, with the upstream's policy,
/// in the per-destination maps (`DEFAULT_STATES`, `DEFAULT_TRIPPED`) the default
/// policy uses. The upstream's own word holds only an operator's override, which
/// then applies to every address.
pub const POLICY_PER_ADDRESS: u32 = 1 << 10;

/// Most entries of an upstream's ordered fallbacks, after the fallbacks of the
/// upstreams it names are followed (check-config refuses longer chains).
pub const MAX_FALLBACKS: usize = 4;

/// The slot of `ExtraCounters.redirected_to` that counts an endpoint's connects
/// steered to another endpoint of its `per_endpoint` service (its own fallbacks
/// then have the slots before it: check-config keeps such a chain one shorter).
pub const STEERED_SLOT: usize = MAX_FALLBACKS - 1;

/// Most endpoints of a `per_endpoint` service (check-config refuses more): the
/// kernel walks them in a `bpf_loop`, so the count costs the verifier nothing.
pub const MAX_SERVICE_ENDPOINTS: usize = 64;

/// `SERVICE_ENDPOINTS` value: a `per_endpoint` service's endpoints, each as a
/// hop to steer a connect to (its own breaker's id and address), in the order
/// of the config. Written by the daemon at each load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceEndpoints {
    /// How many of `hops` are set.
    pub count: u32,
    pub _pad: u32,
    pub hops: [FallbackHop; MAX_SERVICE_ENDPOINTS],
}

impl Default for ServiceEndpoints {
    fn default() -> Self {
        ServiceEndpoints {
            count: 0,
            _pad: 0,
            hops: [FallbackHop::default(); MAX_SERVICE_ENDPOINTS],
        }
    }
}

/// `FallbackHop.upstream` of an address: no breaker of its own decides for it.
pub const FALLBACK_ADDRESS: u32 = u32::MAX;
/// `FallbackHop.flags`: the hop takes IPv4 connects (`ip4`, `port_v4` are set).
pub const FALLBACK_HAS_V4: u32 = 1 << 0;
/// `FallbackHop.flags`: the hop takes IPv6 connects (`ip6`, `port_v6` are set).
pub const FALLBACK_HAS_V6: u32 = 1 << 1;

/// One entry of an upstream's ordered fallbacks: an address, or another upstream
/// (its first single-address endpoint of each family), whose own breaker decides
/// whether the hop is taken.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FallbackHop {
    /// The upstream's id, or [`FALLBACK_ADDRESS`].
    pub upstream: u32,
    pub flags: u32,
    /// Network byte order, as in `bpf_sock_addr.user_port`.
    pub port_v4: u32,
    pub port_v6: u32,
    /// Network byte order, as in `bpf_sock_addr.user_ip4`.
    pub ip4: u32,
    pub ip6: [u32; 4],
}

impl FallbackHop {
    /// Whether the hop has an address of the connect's family.
    #[inline(always)]
    pub const fn serves(&self, v4: bool) -> bool {
        let bit = if v4 { FALLBACK_HAS_V4 } else { FALLBACK_HAS_V6 };
        self.flags & bit != 0
    }

    /// Where a connect of the family sent to this hop goes.
    #[inline(always)]
    pub const fn dest(&self, v4: bool) -> DestKey {
        if v4 {
            DestKey::ipv4(self.ip4, self.port_v4 as u16)
        } else {
            DestKey::ipv6(self.ip6, self.port_v6 as u16)
        }
    }
}

/// Per-upstream configuration, written by the daemon, read by the connect hooks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpstreamPolicy {
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub half_open_max_connections: u32,
    pub open_duration_ms: u32,
    pub flags: u32,
    /// How many of `fallbacks` are set, in the order they are tried.
    pub fallback_count: u32,
    pub fallbacks: [FallbackHop; MAX_FALLBACKS],
    /// HALF_OPEN with every trial slot taken for this long starts a new epoch.
    pub trial_lease_ms: u32,
    /// Initial SYN retransmission timeout of a trial socket, in jiffies (the
    /// `BPF_SOCK_OPS_TIMEOUT_INIT` reply), so a trial into a blackhole fails within
    /// `trial_connect_timeout`. 0 leaves the kernel's default.
    pub trial_rto_jiffies: u32,
    /// SYN retransmissions a trial socket makes (`TCP_SYNCNT`); 0 leaves the default.
    pub trial_syn_retries: u32,
    /// Initial SYN retransmission timeout of every other watched connect, in jiffies
    /// (`connect_timeout`): its first retransmission, and with it the `timeout`
    /// outcome, comes this long after the SYN. 0 leaves the kernel's (1 s).
    pub connect_rto_jiffies: u32,
    /// `failure_rate_threshold`: the breaker opens when this percent of the
    /// connects in its window fail. 0: no rate tripping (and no window kept).
    pub rate_threshold_pct: u32,
    /// `minimum_connects`: the window must hold this many before the rate counts.
    pub rate_minimum: u32,
    /// One window bucket's width in jiffies (`window` / [`crate::window::BUCKETS`]).
    pub rate_bucket_jiffies: u32,
    /// `max_open_duration`: the open time doubles at each reopen up to this.
    pub max_open_duration_ms: u32,
    /// `jitter`: up to this percent more open time, chosen per trip.
    pub open_jitter_pct: u32,
    /// `slow_connect_threshold` in jiffies: a successful connect whose SYN took at
    /// least this long to be answered is slow. 0: nothing is slow.
    pub slow_jiffies: u32,
    /// `slow_rate_threshold`: the breaker opens when this percent of the connects
    /// in its window are slow. 0: no slow-rate tripping.
    pub slow_rate_pct: u32,
    /// An endpoint of a `per_endpoint` service of several: 1 + its service's
    /// row in `SERVICE_ENDPOINTS`, whose other endpoints take its connects while
    /// its breaker rejects (one picked at random among those that take them:
    /// steering spreads a dead endpoint's connects over the healthy), before
    /// `fallbacks` in order. 0: no steering.
    pub steer_row: u32,
    /// `per_endpoint` services: the id whose `SERVICE_EJECTIONS` slot holds the
    /// service's ejection cap and count (`machine::ejection_slot`). 0: no
    /// service (no cap).
    pub service: u32,
}

impl UpstreamPolicy {
    /// Whether an upstream is configured at this id: the config never allows a
    /// `failure_threshold` of 0, so an all-zero entry is an id nobody has (a
    /// removed upstream's, whose connects still in flight must count for no one).
    #[inline(always)]
    pub const fn is_configured(&self) -> bool {
        self.failure_threshold != 0
    }

    /// Whether a successful connect that took `ticks` (jiffies) is slow. Ticks
    /// count the tick boundaries a connect crossed, one more than its length in
    /// whole ticks at most: more than `slow_jiffies` of them is surely as long as
    /// the threshold (rounded up to ticks). A connect is never called slow early;
    /// it may be called so up to a tick late, which fails open.
    #[inline(always)]
    pub const fn is_slow(&self, ticks: u64) -> bool {
        self.slow_jiffies != 0 && ticks > self.slow_jiffies as u64
    }

    /// Whether the upstream keeps a window (for the failure rate, the slow rate
    /// or both).
    #[inline(always)]
    pub const fn keeps_window(&self) -> bool {
        self.rate_threshold_pct != 0 || self.slow_rate_pct != 0
    }

    #[inline(always)]
    pub fn thresholds(&self) -> crate::machine::Thresholds {
        crate::machine::Thresholds {
            failure_threshold: self.failure_threshold,
            success_threshold: self.success_threshold,
            half_open_max_connections: self.half_open_max_connections,
            open_duration_ms: self.open_duration_ms,
            max_open_duration_ms: self.max_open_duration_ms,
            open_jitter_pct: self.open_jitter_pct,
            trial_lease_ms: self.trial_lease_ms,
        }
    }
}

/// One destination: address (IPv4 as v4-mapped IPv6) and port, network byte order.
/// Keys both `ENDPOINTS_EXACT` (single-address endpoints with a port) and the default
/// policy's per-destination breakers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DestKey {
    pub addr: [u32; 4],
    pub port: u16,
    pub family: u16,
}

/// A per-destination breaker word under the default policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BreakerCell {
    pub word: u64,
}

/// Slots of `SOCKET_RECORDS` a socket may take: its cookie's slot and the next.
pub const RECORD_PROBES: u32 = 2;

/// `SocketRecord.flags`: the connect is watched; sock_ops reports its outcome.
pub const RECORD_WATCHED: u64 = 1 << 0;
/// `SocketRecord.flags`: the connect is a HALF_OPEN trial of `SocketRecord.epoch`.
pub const RECORD_TRIAL: u64 = 1 << 1;
/// In a slot's owner word (`SocketRecord.cookie`): the connect has ended (outcome
/// counted, or abandoned). Set by compare-and-swap of the whole owner word, so the
/// one program that sees the end first claims it, and only while the slot is
/// still that socket's. Socket cookies count up from 1 and never reach bit 63.
pub const RECORD_OWNER_DONE: u64 = 1 << 63;
/// In a slot's owner word, beside [`RECORD_OWNER_DONE`]: the connect (its timeout
/// counted) is being failed because its breaker turns connects away. sock_ops set
/// its `TCP_USER_TIMEOUT` to 1 ms, and `SocketRecord.epoch` holds the socket's
/// own, given back at its next state change whatever it is. Set by
/// compare-and-swap from the socket's done owner word, so only while the slot is
/// its own, and no other connect takes the slot over while it is set.
pub const RECORD_OWNER_ABORTING: u64 = 1 << 62;
/// The owner word's marks: the rest is the cookie.
pub const RECORD_OWNER_MARKS: u64 = RECORD_OWNER_DONE | RECORD_OWNER_ABORTING;

/// What connect4/6 decided for one socket, in its slot of `SOCKET_RECORDS`:
/// written once by the connect hook, read by sock_ops and sock_release. The outcome
/// goes to the breaker recorded here, whatever the destination looks like by then.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketRecord {
    /// The socket cookie that owns the slot, with [`RECORD_OWNER_DONE`] once its
    /// connect has ended; 0 for a free slot. Taken, marked and given back by
    /// compare-and-swap; a reader whose cookie differs ignores the slot.
    pub cookie: u64,
    /// The kernel's jiffies when connect() was admitted (`bpf_jiffies64`, a memory
    /// read, where a clock read costs about 100 ns on a paravirtualised guest): a
    /// connect's duration at tick resolution, given the HZ the daemon measures.
    pub started_jiffies: u64,
    /// `RECORD_*` bits.
    pub flags: u64,
    /// The destination as connect() asked for it: the default-policy key.
    pub dest: DestKey,
    /// The breaker: a configured upstream id, or [`DEFAULT_UPSTREAM_ID`].
    pub upstream: u32,
    /// The HALF_OPEN epoch of a trial (low 8 bits).
    pub epoch: u32,
    /// The sock_ops callback flags this program turned on (and only those it may
    /// turn off again: another sock_ops program may use the others).
    pub cb_flags_set: u32,
}

/// A destination to resolve, the packet data of a `brk_test_resolve` run after an
/// Ethernet-header-sized gap. Same byte order as [`DestKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResolveQuery {
    pub addr: [u32; 4],
    /// Network byte order, in the low 16 bits.
    pub port: u32,
    pub family: u32,
}

/// Offset of the [`ResolveQuery`] in the test packet (skb test runs need at least an
/// Ethernet header of data).
pub const RESOLVE_QUERY_OFFSET: usize = 14;
/// `brk_test_resolve` result for "no configured upstream".
pub const RESOLVE_NONE: u32 = u32::MAX;

/// Per-upstream counters, one slot per CPU in `COUNTERS`, summed by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// TCP connects to the upstream seen by connect4/6 (passed, rejected or redirected).
    pub attempts: u64,
    pub successes: u64,
    /// Closed from SYN_SENT by an RST from the peer.
    pub failures_refused: u64,
    /// SYN retransmission timeout while in SYN_SENT.
    pub failures_timeout: u64,
    /// Failed fast with ECONNREFUSED.
    pub rejected: u64,
    /// Rewritten to the fallback.
    pub redirected: u64,
    /// Updates given up after `CAS_RETRIES` lost races (should stay 0).
    pub contention_misses: u64,
    /// Watched connects the application closed before they reached an outcome.
    pub abandoned: u64,
    /// Connects that went unwatched because every record slot they could use was
    /// taken (too many connects in flight at once): passed, not counted.
    pub unwatched: u64,
    /// Connects the breaker would have rejected or redirected, let through
    /// because the upstream is in dry-run mode.
    pub would_reject: u64,
    /// Closed from SYN_SENT by a hard ICMP error (no segment came back): the
    /// destination is unreachable.
    pub failures_unreachable: u64,
}

/// Per-upstream counters added after [`Counters`]'s layout was kept (a kept map
/// keeps its layout), per CPU in `EXTRA_COUNTERS`, with spare room so that the
/// next ones need no new map: an older map reads zeros there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtraCounters {
    /// Successful connects that took `slow_connect_threshold` or more.
    pub slow: u64,
    /// Connects in flight when their breaker turned connects away, whose SYN had
    /// gone unanswered for `connect_timeout`: failed by the kernel at once rather
    /// than left to retransmit into a dead upstream.
    pub aborted: u64,
    /// Connects set to be failed so whose last SYN was answered first: they went
    /// through, their own `TCP_USER_TIMEOUT` given back.
    pub abort_raced: u64,
    /// Redirected connects (and packet-path flows) by the fallback hop they went
    /// to, in the order of `UpstreamPolicy.fallbacks`; they add up to
    /// `Counters.redirected`.
    pub redirected_to: [u64; MAX_FALLBACKS],
    /// Trips held back by the service's ejection cap: the endpoint stayed CLOSED.
    pub ejection_overflow: u64,
}

impl ExtraCounters {
    /// Adds another CPU's counts, field by field.
    pub fn add(&mut self, other: &ExtraCounters) {
        let pairs = [
            (&mut self.slow, other.slow),
            (&mut self.aborted, other.aborted),
            (&mut self.abort_raced, other.abort_raced),
            (&mut self.ejection_overflow, other.ejection_overflow),
        ];
        for (sum, n) in pairs {
            *sum = sum.wrapping_add(n);
        }
        for (sum, n) in self.redirected_to.iter_mut().zip(other.redirected_to) {
            *sum = sum.wrapping_add(n);
        }
    }
}

/// Buckets of [`ConnectDurations`]. Bucket `i` counts the connects whose
/// SYN-to-ESTABLISHED time, in the kernel's ticks, has `i` significant bits (0;
/// 1; 2-3; 4-7; ...): under `2^i` ticks. The last counts every longer one.
pub const DURATION_BUCKETS: usize = 14;

/// How long one upstream's successful connects took, per CPU in
/// `CONNECT_DURATIONS`, summed by the daemon into a Prometheus histogram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectDurations {
    pub buckets: [u64; DURATION_BUCKETS],
    /// Every counted connect's time added up, in ticks.
    pub sum_ticks: u64,
}

/// The [`ConnectDurations`] bucket of a connect that took `ticks`: the tick
/// count's bit length, at most the last. An unsigned compare, so that the
/// verifier sees the index bounded.
#[inline(always)]
pub const fn duration_bucket(ticks: u64) -> usize {
    let bits = 64 - ticks.leading_zeros();
    let last = DURATION_BUCKETS as u32 - 1;
    (if bits > last { last } else { bits }) as usize
}

/// Why a transition happened.
pub const CAUSE_FAILURE_REFUSED: u32 = 1;
pub const CAUSE_FAILURE_TIMEOUT: u32 = 2;
/// A trial ended without an outcome and gave its slot back (never a transition).
pub const CAUSE_ABANDONED: u32 = 3;
pub const CAUSE_SUCCESS: u32 = 4;
pub const CAUSE_OPEN_EXPIRED: u32 = 5;
pub const CAUSE_PROBE_SUCCESS: u32 = 6;
pub const CAUSE_PROBE_FAILURE: u32 = 7;
/// The failure-rate window reached its threshold.
pub const CAUSE_FAILURE_RATE: u32 = 8;
pub const CAUSE_FAILURE_UNREACHABLE: u32 = 9;
/// A successful but slow connect, counted as a failure (`count` names "slow").
pub const CAUSE_FAILURE_SLOW: u32 = 10;
/// The slow-connect rate in the window reached its threshold.
pub const CAUSE_SLOW_RATE: u32 = 11;

/// The `POLICY_IGNORE_` bit of a failure cause (0 for anything else).
pub const fn ignore_bit(cause: u32) -> u32 {
    match cause {
        CAUSE_FAILURE_REFUSED => POLICY_IGNORE_REFUSED,
        CAUSE_FAILURE_TIMEOUT => POLICY_IGNORE_TIMEOUT,
        CAUSE_FAILURE_UNREACHABLE => POLICY_IGNORE_UNREACHABLE,
        _ => 0,
    }
}

pub const fn cause_name(cause: u32) -> &'static str {
    match cause {
        CAUSE_FAILURE_REFUSED => "refused",
        CAUSE_FAILURE_TIMEOUT => "timeout",
        CAUSE_ABANDONED => "abandoned",
        CAUSE_SUCCESS => "success",
        CAUSE_OPEN_EXPIRED => "open_expired",
        CAUSE_PROBE_SUCCESS => "probe_success",
        CAUSE_PROBE_FAILURE => "probe_failure",
        CAUSE_FAILURE_RATE => "failure_rate",
        CAUSE_FAILURE_UNREACHABLE => "unreachable",
        CAUSE_FAILURE_SLOW => "slow",
        CAUSE_SLOW_RATE => "slow_rate",
        _ => "unknown",
    }
}

/// A state transition, sent by the program that made it through `EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransitionEvent {
    pub at_ns: u64,
    pub upstream: u32,
    pub from: u32,
    pub to: u32,
    pub cause: u32,
    /// The destination, for default-policy breakers (zero otherwise).
    pub dest: DestKey,
    pub _pad: u32,
}

// The kernel and the daemon must agree on every layout, byte for byte.
const _: () = assert!(core::mem::size_of::<Settings>() == 32);
const _: () = assert!(core::mem::size_of::<EndpointV4>() == 6);
const _: () = assert!(core::mem::size_of::<EndpointV6>() == 18);
const _: () = assert!(core::mem::size_of::<UpstreamPolicy>() == 220);
const _: () = assert!(core::mem::size_of::<FallbackHop>() == 36);
const _: () = assert!(core::mem::size_of::<crate::window::RateWindow>() == 160);
const _: () = assert!(core::mem::size_of::<DestKey>() == 20);
const _: () = assert!(core::mem::size_of::<EndpointSlot>() == 24);
const _: () = assert!(core::mem::size_of::<BreakerCell>() == 8);
const _: () = assert!(core::mem::size_of::<SocketRecord>() == 56);
const _: () = assert!(core::mem::size_of::<ResolveQuery>() == 24);
const _: () = assert!(core::mem::size_of::<Counters>() == 88);
const _: () = assert!(core::mem::size_of::<ConnectDurations>() == 8 * (DURATION_BUCKETS + 1));
const _: () = assert!(core::mem::size_of::<TransitionEvent>() == 48);
const _: () = assert!(core::mem::size_of::<ExtraCounters>() == 64);
const _: () = assert!(core::mem::size_of::<PinMetadata>() == 104);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_counters_add_up_every_field() {
        // Each u64 field set to a distinct value, through the struct's bytes, so a
        // field added later and left out of `add` fails here.
        const FIELDS: usize = core::mem::size_of::<ExtraCounters>() / 8;
        let words: [u64; FIELDS] = core::array::from_fn(|i| i as u64 + 1);
        // SAFETY: ExtraCounters is FIELDS plain u64s, repr(C), no padding.
        let one: ExtraCounters = unsafe { core::mem::transmute(words) };
        let mut sum = ExtraCounters::default();
        sum.add(&one);
        sum.add(&one);
        // SAFETY: as above.
        let out: [u64; FIELDS] = unsafe { core::mem::transmute(sum) };
        assert_eq!(out, core::array::from_fn(|i| 2 * (i as u64 + 1)));
    }

    #[test]
    fn a_connect_time_falls_in_the_bucket_of_its_bit_length_the_last_taking_the_rest() {
        for (ticks, bucket) in [
            (0, 0),
            (1, 1),
            (2, 2),
            (3, 2),
            (4, 3),
            (7, 3),
            (8, 4),
            (4095, 12),
            (4096, 13),
            (8191, 13),
            (8192, 13),
            (u64::MAX, 13),
        ] {
            assert_eq!(duration_bucket(ticks), bucket, "{ticks} ticks");
        }
        // Under 2^i ticks for every bucket but the last.
        for i in 0..DURATION_BUCKETS - 1 {
            assert_eq!(duration_bucket((1 << i) - 1), i);
            assert_eq!(duration_bucket(1 << i), i + 1);
        }
    }
}
