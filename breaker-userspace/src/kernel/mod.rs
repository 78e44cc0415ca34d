//! The kernel side as the daemon sees it: load the programs, size and fill the maps
//! from the config, attach to a cgroup, and read state and counters back.
//!
//! - [`hz`]: the kernel's tick rate, which trial SYN timeouts are given in,
//!   measured with a BPF program.
//! - [`resolve`]: the kernel's own destination lookup, run under BPF_PROG_TEST_RUN.
//! - [`watch`]: the attached cgroup, watched for a removal and a new cgroup.
//! - [`pins`]: the bpffs folder where maps and links outlive the daemon.
//! - [`links`]: attaching through pinned links, or swapping the programs under
//!   them.
//! - [`ids`]: upstream ids by name, kept across restarts and reloads.
//! - [`packet`]: the packet path: its programs on the watched interfaces, flows
//!   past their timeout, and its programs under BPF_PROG_TEST_RUN.
pub mod endpoint_table;
mod hz;
mod ids;
mod interface_pins;
mod links;
pub mod packet;
pub mod pins;
mod resolve;
pub mod watch;

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapInfo, PerCpuArray, RingBuf},
    programs::{links::CgroupAttachMode, CgroupSock, CgroupSockAddr, SockOps},
    Ebpf, EbpfLoader,
};
use breaker_common::{
    abi::{
        map_names, program_names, BreakerCell, ConnectDurations, Counters, DestKey, EndpointSlot,
        EndpointV4, EndpointV6, ExtraCounters, FallbackHop, PinMetadata, ServiceEndpoints,
        Settings, UpstreamPolicy, ABI_VERSION, DEFAULT_UPSTREAM_ID, EXACT_OVERFLOW,
        FALLBACK_ADDRESS, FALLBACK_HAS_V4, FALLBACK_HAS_V6, MAX_FALLBACKS, POLICY_COUNT_SLOW,
        POLICY_DRY_RUN, POLICY_IGNORE_REFUSED, POLICY_IGNORE_TIMEOUT, POLICY_IGNORE_UNREACHABLE,
        PREFIX_ENDPOINTS_V4, PREFIX_ENDPOINTS_V6,
    },
    dest::{endpoint_prefix_len, port_ne},
    machine::{BreakerWord, State, Thresholds},
};
use ipnet::IpNet;

use crate::{
    config::{Config, Policy, Upstream},
    state::{Heartbeat, StateTable},
};
pub use pins::{PinError, PinFolder};

/// The compiled kernel programs, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/breaker"));

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("loading the eBPF programs failed (are you root, with BPF enabled?): {0}")]
    Load(#[source] aya::EbpfError),
    #[error("map {name} is missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot map the upstream state table: {0}")]
    Mmap(#[source] std::io::Error),
    #[error("the destination lookup test run failed: {0}")]
    TestRun(String),
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error("pinning {what} at {path}: {source}")]
    Pin {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("upstream ids: {0}")]
    Ids(String),
    #[error("interface {interface}: {reason}")]
    Interface { interface: String, reason: String },
}

/// Loaded (and, after [`Kernel::attach`], attached) programs and their maps, all
/// pinned. Dropping it detaches nothing: the pinned links keep the programs
/// attached until `breaker uninstall`.
pub struct Kernel {
    ebpf: Ebpf,
    pins: PinFolder,
    /// Config upstream `i` has id `ids[i]`.
    ids: Vec<u32>,
    /// Ids whose upstream left the config: cleared once the new programs run.
    freed: Vec<u32>,
    /// Digest of the config loaded, for the pin metadata.
    config_digest: [u8; 16],
    /// Whether this load's fresh maps are pinned yet (at its first attach).
    fresh_pinned: bool,
    /// The kernel's tick rate, recorded in the pin metadata.
    hz: u32,
    /// Whether our programs are loaded (verified) in `ebpf`. A resumed start does
    /// without until it has to attach anew.
    programs_loaded: bool,
    /// Set by [`Kernel::resume`]: the cgroup whose pinned links already run these
    /// very programs on these very maps, so that its first attach has nothing to do.
    resumed_on: Option<(u64, u64)>,
    /// The cgroup the last attach put the links on.
    attached: Option<(u64, u64)>,
    states: Arc<StateTable>,
    counters: Arc<CounterTable>,
    destinations: Arc<DefaultDestinations>,
    heartbeat: Arc<Heartbeat>,
    /// The packet path's links on the watched interfaces.
    interface_links: Vec<packet::InterfaceLinks>,
    /// The NAT maps have room: some upstream redirects, or did and its flows
    /// may still be going. The packet path then stays on TC (see `packet.rs`).
    packet_nat: bool,
}

/// The default policy's per-destination breakers, as the kernel holds them: what
/// the metrics show is read from here, so it stays right after LRU evictions and
/// costs the daemon no memory of its own.
pub struct DefaultDestinations {
    /// Destinations with failures (LRU).
    failing: HashMap<MapData, DestKey, BreakerCell>,
    /// Tripped destinations, safe from eviction.
    tripped: HashMap<MapData, DestKey, BreakerCell>,
}

/// The breaker a per-destination cell belongs to: a per-address upstream's id
/// (`per_endpoint` over CIDR or any-port endpoints), else the default policy's
/// ([`DEFAULT_UPSTREAM_ID`]). Both keep their breakers in the same maps, keyed
/// by destination alone: the config says whose each is.
pub type DestinationOwner = Arc<dyn Fn(std::net::SocketAddr) -> u32 + Send + Sync>;

/// [`DestinationOwner`] of `upstreams` (ids beside them). Only per-address
/// upstreams' endpoints are looked at (in the kernel's order among them): a
/// destination they cover is theirs, anything else the default policy's. A
/// cell an ordinary upstream's endpoint would shadow cannot be made under this
/// config; one left from an earlier config is shown as the per-address
/// upstream's. Cost: the per-address endpoints per cell, none without any.
pub fn destination_owner(upstreams: &[(u32, Upstream)]) -> DestinationOwner {
    let endpoints: Vec<(u32, crate::config::Endpoint)> = upstreams
        .iter()
        .filter(|(_, u)| u.per_address)
        .flat_map(|(id, u)| u.endpoints.iter().map(move |e| (*id, *e)))
        .collect();
    if endpoints.is_empty() {
        return Arc::new(|_| DEFAULT_UPSTREAM_ID);
    }
    Arc::new(move |addr| {
        crate::config::owner_of(endpoints.iter().map(|(id, e)| (*id, e)), addr)
            .unwrap_or(DEFAULT_UPSTREAM_ID)
    })
}

impl DefaultDestinations {
    /// Up to `limit` tripped (OPEN or HALF_OPEN) destinations of breaker `of`
    /// (see [`DestinationOwner`]), the most recently changed first, with their
    /// words.
    pub fn tripped(
        &self,
        limit: usize,
        now_ms: u32,
        owner: &DestinationOwner,
        of: u32,
    ) -> Vec<(std::net::SocketAddr, BreakerWord)> {
        let mut all: Vec<(std::net::SocketAddr, BreakerWord)> = self
            .tripped
            .iter()
            .filter_map(Result::ok)
            .map(|(key, cell)| (key.to_socket_addr(), BreakerWord(cell.word)))
            .filter(|(addr, w)| w.state() != State::Closed && owner(*addr) == of)
            .collect();
        all.sort_by_key(|(_, w)| w.phase_ms(now_ms));
        all.truncate(limit);
        all
    }
}

/// How many per-destination breakers (of the default policy, or of one
/// per-address upstream) are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestinationCounts {
    /// Destinations with failures and a CLOSED breaker.
    pub closed: u64,
    pub open: u64,
    pub half_open: u64,
    /// Entries of each map (`DEFAULT_STATES`, `DEFAULT_TRIPPED`).
    pub failing_entries: u64,
    pub tripped_entries: u64,
}

impl DefaultDestinations {
    /// Counts the maps' entries by state and by whose breaker each is (see
    /// [`DestinationOwner`]): one pass over at most `max_destinations` entries.
    pub fn counts(
        &self,
        owner: &DestinationOwner,
    ) -> std::collections::BTreeMap<u32, DestinationCounts> {
        let mut by = std::collections::BTreeMap::<u32, DestinationCounts>::new();
        for (tripped, map) in [(false, &self.failing), (true, &self.tripped)] {
            for entry in map.iter() {
                let Ok((key, cell)) = entry else {
                    // An entry evicted during the walk.
                    continue;
                };
                let counts = by.entry(owner(key.to_socket_addr())).or_default();
                match BreakerWord(cell.word).state() {
                    State::Closed => counts.closed += 1,
                    State::Open => counts.open += 1,
                    State::HalfOpen => counts.half_open += 1,
                }
                if tripped {
                    counts.tripped_entries += 1;
                } else {
                    counts.failing_entries += 1;
                }
            }
        }
        by
    }
}

/// The per-CPU counters of every upstream, extra counters included, and its
/// connect-time histogram.
pub struct CounterTable {
    map: PerCpuArray<MapData, Counters>,
    durations: PerCpuArray<MapData, ConnectDurations>,
    extra: PerCpuArray<MapData, ExtraCounters>,
    /// The kernel's tick rate: the histogram's unit.
    hz: u32,
}

impl CounterTable {
    /// Counters of upstream `id`, summed over CPUs.
    pub fn get(&self, id: u32) -> Result<Counters, KernelError> {
        let per_cpu = self.map.get(&id, 0).map_err(map_err(map_names::COUNTERS))?;
        Ok(per_cpu.iter().fold(Counters::default(), |mut sum, c| {
            sum.attempts += c.attempts;
            sum.successes += c.successes;
            sum.failures_refused += c.failures_refused;
            sum.failures_timeout += c.failures_timeout;
            sum.rejected += c.rejected;
            sum.redirected += c.redirected;
            sum.contention_misses += c.contention_misses;
            sum.abandoned += c.abandoned;
            sum.unwatched += c.unwatched;
            sum.would_reject += c.would_reject;
            sum.failures_unreachable += c.failures_unreachable;
            sum
        }))
    }

    /// The kernel's ticks per second, the unit of [`CounterTable::durations`].
    pub fn hz(&self) -> u32 {
        self.hz
    }

    /// Upstream `id`'s extra counters (slow, aborted), summed over CPUs.
    pub fn extra(&self, id: u32) -> Result<ExtraCounters, KernelError> {
        let per_cpu = self
            .extra
            .get(&id, 0)
            .map_err(map_err(map_names::EXTRA_COUNTERS))?;
        Ok(per_cpu.iter().fold(ExtraCounters::default(), |mut sum, c| {
            sum.add(c);
            sum
        }))
    }

    /// How long upstream `id`'s successful connects took, summed over CPUs.
    pub fn durations(&self, id: u32) -> Result<ConnectDurations, KernelError> {
        let per_cpu = self
            .durations
            .get(&id, 0)
            .map_err(map_err(map_names::CONNECT_DURATIONS))?;
        Ok(per_cpu
            .iter()
            .fold(ConnectDurations::default(), |mut sum, d| {
                for (s, b) in sum.buckets.iter_mut().zip(d.buckets) {
                    *s += b;
                }
                sum.sum_ticks = sum.sum_ticks.wrapping_add(d.sum_ticks);
                sum
            }))
    }
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> KernelError {
    move |source| KernelError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> KernelError {
    move |source| KernelError::Program { name, source }
}

/// The most tripped per-destination breakers a load looks over for ones no
/// breaker reads ([`Kernel::forget_unread_destinations`], a test run each), so
/// a load's wait on it stays bounded. Any beyond wait for the next reload.
pub const SWEEP_LIMIT: usize = 1 << 15;

/// Slots for watched connects in flight at once (connect() until its outcome, or
/// until the socket is closed); 56 bytes each. A power of two: the programs mask a
/// socket's cookie to find its slot. A connect whose two slots are both taken goes
/// unwatched: it passes, counted in `unwatched`.
pub const SOCKET_RECORD_SLOTS: u32 = 1 << 16;
const _: () = assert!(SOCKET_RECORD_SLOTS.is_power_of_two());

/// A watched connect ends within a few seconds (a blackholed one at its first SYN
/// RTO); a record this old belongs to a connect whose end was never seen, and its
/// slot may be taken over.
const RECORD_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// Maps that outlive a daemon: pinned, and adopted by the next one, which finds
/// each upstream's state word and counters where it left them (and the packet
/// path's redirected flows, which a reload or restart must not cut).
const KEPT_MAPS: [&str; 13] = [
    map_names::UPSTREAM_STATES,
    map_names::SERVICE_EJECTIONS,
    map_names::COUNTERS,
    map_names::CONNECT_DURATIONS,
    map_names::EXTRA_COUNTERS,
    map_names::UPSTREAM_NAMES,
    map_names::DEFAULT_STATES,
    map_names::DEFAULT_TRIPPED,
    map_names::SOCKET_RECORDS,
    map_names::PIN_METADATA,
    map_names::DAEMON_HEARTBEAT,
    map_names::PACKET_NAT_OUT,
    map_names::PACKET_NAT_BACK,
];

/// Maps made anew from the config at each load, so the programs swapped in see a
/// complete config from their first run; pinned too, for a person to inspect.
const FRESH_MAPS: [&str; 11] = [
    map_names::SETTINGS,
    map_names::SERVICE_ENDPOINTS,
    map_names::ENDPOINT_TABLE,
    map_names::ENDPOINTS_EXACT,
    map_names::ENDPOINTS_V4,
    map_names::ENDPOINTS_V6,
    map_names::POLICIES,
    map_names::EVENTS,
    map_names::RATE_WINDOWS,
    map_names::PACKET_FLOWS,
    map_names::PACKET_COUNTERS,
];

/// Fresh maps only the packet path's programs use.
const PACKET_ONLY_MAPS: [&str; 2] = [map_names::PACKET_FLOWS, map_names::PACKET_COUNTERS];

impl Kernel {
    /// Loads the programs with maps sized for `config`, adopting the maps pinned in
    /// `pins` (state, counters, names) when a daemon left them, and writes the
    /// config into fresh maps. Nothing is attached yet.
    pub fn load(config: &Config, pins: &PinFolder) -> Result<Kernel, KernelError> {
        raise_memlock_limit();
        let mut sizes = config.map_sizes();
        let adopted = check_pins(pins, &mut sizes)?;
        let mut loader = loader_for(&sizes);
        let kept_paths = pin_paths(pins, &KEPT_MAPS);
        for (name, path) in &kept_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(KernelError::Load)?;
        if adopted.is_some() {
            tracing::info!(pins = %pins.root().display(), "adopted the pinned maps: every breaker's state and counters carry on");
        }
        // Pins never outlive a boot (bpffs is in memory), nor does the tick rate.
        let hz = match adopted {
            Some(meta) if meta.hz > 0 => meta.hz,
            _ => hz::kernel_hz(&mut ebpf),
        };
        tracing::debug!(hz, "kernel tick rate, for trial SYN timeouts");
        let (ids, freed) = ids::assign(&mut ebpf, config, sizes.slots)?;
        let packet_nat = sizes.nat > 1;
        write_config(&mut ebpf, config, sizes.table, hz, &ids, packet_nat)?;
        let mut kernel = Kernel::assemble(ebpf, pins, config, sizes.slots, hz, (ids, freed))?;
        kernel.packet_nat = packet_nat;
        kernel.load_programs()?;
        Ok(kernel)
    }

    /// A restart's short way: when the pins hold links on `cgroup` that run this
    /// binary's very programs (same eBPF object) on the pinned maps, and the pinned
    /// config maps were written from this very config, the daemon opens every map
    /// from its pin and loads no program, so the verifier's second or so is not
    /// spent again. `Ok(None)` (with the reason logged) means: load in full.
    pub fn resume(
        config: &Config,
        pins: &PinFolder,
        cgroup: &Path,
    ) -> Result<Option<Kernel>, KernelError> {
        raise_memlock_limit();
        let mut sizes = config.map_sizes();
        let Some(meta) = check_pins(pins, &mut sizes)? else {
            return Ok(None);
        };
        let identity = cgroup_identity(cgroup)?;
        if let Err(why) = resumable(pins, &meta, config_digest(config), identity) {
            tracing::info!(pins = %pins.root().display(), "loading the programs anew: {why}");
            return Ok(None);
        }
        let mut loader = loader_for(&sizes);
        let all = pin_paths(pins, &KEPT_MAPS)
            .into_iter()
            .chain(pin_paths(pins, &FRESH_MAPS))
            .collect::<Vec<_>>();
        for (name, path) in &all {
            loader.map_pin_path(name, path.as_path());
        }
        let opened = (|| {
            let mut ebpf = loader.load(EBPF_OBJECT).map_err(KernelError::Load)?;
            let ids = ids::assign(&mut ebpf, config, sizes.slots)?;
            Kernel::assemble(ebpf, pins, config, sizes.slots, meta.hz, ids)
        })();
        let mut kernel = match opened {
            Ok(kernel) => kernel,
            Err(e) => {
                // The short way failed: the long way still works.
                tracing::warn!(error = %e, pins = %pins.root().display(), "loading the programs anew: opening the pins as they are failed");
                return Ok(None);
            }
        };
        kernel.fresh_pinned = true;
        kernel.resumed_on = Some(identity);
        kernel.packet_nat = sizes.nat > 1;
        tracing::info!(pins = %pins.root().display(), "resumed the pinned links and maps as they are: same programs, same config, every breaker's state and counters carry on");
        Ok(Some(kernel))
    }

    /// The maps the daemon keeps handles to, taken out of `ebpf`.
    fn assemble(
        mut ebpf: Ebpf,
        pins: &PinFolder,
        config: &Config,
        slots: u32,
        hz: u32,
        (ids, freed): (Vec<u32>, Vec<u32>),
    ) -> Result<Kernel, KernelError> {
        let states_map =
            ebpf.take_map(map_names::UPSTREAM_STATES)
                .ok_or(KernelError::MissingMap {
                    name: map_names::UPSTREAM_STATES,
                })?;
        let mut states = match states_map {
            Map::Array(data) => StateTable::map(data, slots).map_err(KernelError::Mmap)?,
            _ => {
                return Err(KernelError::MissingMap {
                    name: map_names::UPSTREAM_STATES,
                })
            }
        };
        let ejections = match ebpf.take_map(map_names::SERVICE_EJECTIONS) {
            Some(Map::Array(data)) => StateTable::map(data, slots).map_err(KernelError::Mmap)?,
            _ => {
                return Err(KernelError::MissingMap {
                    name: map_names::SERVICE_EJECTIONS,
                })
            }
        };
        states.set_services(ejections, services_of(config, &ids, slots));
        // Words an older daemon left may count past a streak while CLOSED.
        for id in 0..slots {
            states.update(id, breaker_common::machine::settle_closed);
        }
        // A per-address upstream's own word holds only an override: a trip left
        // by its earlier form would show for ever, with nothing to end it.
        for (id, up) in ids.iter().zip(&config.upstreams) {
            if !up.per_address {
                continue;
            }
            if let Some((prev, step)) =
                states.update(*id, breaker_common::machine::settle_per_address)
            {
                if step.result {
                    tracing::info!(
                        upstream = up.name.as_str(),
                        was = prev.state().name(),
                        "the upstream keeps a breaker per address now: its own word is CLOSED"
                    );
                }
            }
        }
        let counters = ebpf
            .take_map(map_names::COUNTERS)
            .ok_or(KernelError::MissingMap {
                name: map_names::COUNTERS,
            })?;
        let counters = PerCpuArray::try_from(counters).map_err(map_err(map_names::COUNTERS))?;
        let durations =
            ebpf.take_map(map_names::CONNECT_DURATIONS)
                .ok_or(KernelError::MissingMap {
                    name: map_names::CONNECT_DURATIONS,
                })?;
        let durations =
            PerCpuArray::try_from(durations).map_err(map_err(map_names::CONNECT_DURATIONS))?;
        let extra = ebpf
            .take_map(map_names::EXTRA_COUNTERS)
            .ok_or(KernelError::MissingMap {
                name: map_names::EXTRA_COUNTERS,
            })?;
        let extra = PerCpuArray::try_from(extra).map_err(map_err(map_names::EXTRA_COUNTERS))?;
        let destinations =
            ebpf.take_map(map_names::DEFAULT_STATES)
                .ok_or(KernelError::MissingMap {
                    name: map_names::DEFAULT_STATES,
                })?;
        let tripped = ebpf
            .take_map(map_names::DEFAULT_TRIPPED)
            .ok_or(KernelError::MissingMap {
                name: map_names::DEFAULT_TRIPPED,
            })?;
        let destinations = DefaultDestinations {
            failing: HashMap::try_from(destinations).map_err(map_err(map_names::DEFAULT_STATES))?,
            tripped: HashMap::try_from(tripped).map_err(map_err(map_names::DEFAULT_TRIPPED))?,
        };
        let heartbeat = match ebpf.take_map(map_names::DAEMON_HEARTBEAT) {
            Some(Map::Array(data)) => Heartbeat::map(data).map_err(KernelError::Mmap)?,
            _ => {
                return Err(KernelError::MissingMap {
                    name: map_names::DAEMON_HEARTBEAT,
                })
            }
        };
        heartbeat.beat();

        Ok(Kernel {
            ebpf,
            pins: pins.clone(),
            ids,
            freed,
            config_digest: config_digest(config),
            fresh_pinned: false,
            hz,
            programs_loaded: false,
            resumed_on: None,
            attached: None,
            states: Arc::new(states),
            counters: Arc::new(CounterTable {
                map: counters,
                durations,
                extra,
                hz,
            }),
            destinations: Arc::new(destinations),
            heartbeat: Arc::new(heartbeat),
            interface_links: Vec::new(),
            packet_nat: false,
        })
    }

    /// Loads (and so verifies) the four programs onto this kernel's maps.
    fn load_programs(&mut self) -> Result<(), KernelError> {
        if self.programs_loaded {
            return Ok(());
        }
        for name in [program_names::CONNECT4, program_names::CONNECT6] {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            prog.load().map_err(prog_err(name))?;
        }
        let sock_ops: &mut SockOps = program(&mut self.ebpf, program_names::SOCK_OPS)?;
        sock_ops.load().map_err(prog_err(program_names::SOCK_OPS))?;
        let release: &mut CgroupSock = program(&mut self.ebpf, program_names::SOCK_RELEASE)?;
        release
            .load()
            .map_err(prog_err(program_names::SOCK_RELEASE))?;
        self.programs_loaded = true;
        Ok(())
    }

    /// The configured upstreams with their ids, in config order.
    pub fn upstreams(&self, config: &Config) -> Vec<(u32, Upstream)> {
        self.ids
            .iter()
            .copied()
            .zip(config.upstreams.iter().cloned())
            .collect()
    }

    /// Removes the tripped per-destination breakers (`DEFAULT_TRIPPED`) that no
    /// breaker of `config` reads, left by an earlier config: a destination an
    /// ordinary upstream's endpoint claims now, or one nothing watches (no
    /// default policy, and no per-address upstream covers it). Kept, such a one
    /// would take room from later trips (the map is no LRU: nothing else ever
    /// removes it) and show in `status` and the metrics as the default
    /// policy's. Failing ones in `DEFAULT_STATES`, an LRU, are left to its
    /// evictions. The kernel's own lookup ([`Kernel::resolve`], one test run
    /// each) says whose each destination is; at most [`SWEEP_LIMIT`] are looked
    /// at, so a reload never waits long on it. Meant for a `Kernel` no task
    /// holds yet (the maps are its alone, as at both call sites); returns how
    /// many went.
    pub fn forget_unread_destinations(&mut self, config: &Config) -> Result<usize, KernelError> {
        let keys: Vec<DestKey> = self
            .destinations
            .tripped
            .keys()
            .filter_map(Result::ok)
            .take(SWEEP_LIMIT)
            .collect();
        if keys.is_empty() {
            return Ok(0);
        }
        let per_address: std::collections::HashSet<u32> = self
            .upstreams(config)
            .into_iter()
            .filter(|(_, u)| u.per_address)
            .map(|(id, _)| id)
            .collect();
        let mut unread = Vec::new();
        for key in keys {
            let read = match self.resolve(key.to_socket_addr())? {
                None => config.default_policy.is_some(),
                Some(id) => per_address.contains(&id),
            };
            if !read {
                unread.push(key);
            }
        }
        let Some(d) = Arc::get_mut(&mut self.destinations) else {
            return Ok(0);
        };
        Ok(unread
            .iter()
            .filter(|key| d.tripped.remove(key).is_ok())
            .count())
    }

    /// Whether every link is still pinned and attached to the cgroup the last
    /// attach put it on: removing a pin by hand detaches its program (nothing else
    /// holds the link), and so does `bpftool link detach`.
    pub fn links_attached(&self) -> bool {
        match self.attached {
            Some((_, ino)) => links::attached_to(&self.pins, ino).is_ok(),
            None => links::all_pinned(&self.pins),
        }
    }

    /// The attached programs' kernel ids, by name (for their run-time stats), as
    /// the pinned links name them.
    pub fn program_ids(&self) -> Vec<(&'static str, u32)> {
        links::program_ids(&self.pins)
    }

    /// Every map's capacity (max entries), read back from the kernel.
    pub fn map_capacities(&self) -> Vec<(String, u32)> {
        self.ebpf
            .maps()
            // Not the compiler's sections (.rodata): only maps with a purpose.
            .filter(|(name, _)| !name.starts_with('.'))
            .filter_map(|(name, map)| {
                let data = match map {
                    Map::Array(d)
                    | Map::HashMap(d)
                    | Map::LruHashMap(d)
                    | Map::LpmTrie(d)
                    | Map::PerCpuArray(d)
                    | Map::RingBuf(d) => d,
                    _ => return None,
                };
                let info = data.info().ok()?;
                Some((name.to_string(), info.max_entries()))
            })
            .chain(
                [
                    (map_names::UPSTREAM_STATES, self.states.slots()),
                    (map_names::COUNTERS, self.states.slots()),
                    (map_names::CONNECT_DURATIONS, self.states.slots()),
                    (map_names::EXTRA_COUNTERS, self.states.slots()),
                ]
                .map(|(n, c)| (n.to_string(), c)),
            )
            .collect()
    }

    /// Where the daemon shows the programs it is alive.
    pub fn heartbeat(&self) -> Arc<Heartbeat> {
        self.heartbeat.clone()
    }

    /// The default policy's destinations, read from the kernel.
    pub fn destinations(&self) -> Arc<DefaultDestinations> {
        self.destinations.clone()
    }

    /// Makes connect4, connect6, sock_ops and sock_release run on `cgroup` through
    /// the pinned links: when the pins hold links on this very cgroup, the programs
    /// under them are swapped for these (no moment without a program); otherwise
    /// new links are made, all or none, and pinned in place of the old ones (which
    /// detach as their pins go). Then the ids of removed upstreams are cleared.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), KernelError> {
        let file = File::open(cgroup).map_err(|source| KernelError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        let identity = cgroup_identity(cgroup)?;
        if self.resumed_on.take() == Some(identity)
            && links::attached_to(&self.pins, identity.1).is_ok()
        {
            // Resumed: the links already run our programs on these maps.
            self.attached = Some(identity);
            if let Err(e) = self.record_commit(identity) {
                tracing::warn!(error = %e, pins = %self.pins.root().display(), "the programs are attached, but recording it in the pins failed");
            }
            return Ok(());
        }
        // Any other attach needs programs of our own (a resumed start meets this
        // when the cgroup is made anew or a link pin is removed).
        self.load_programs()?;
        let meta = read_metadata(&mut self.ebpf)?;
        // First mark the pins as mid-change (no config digest), so that a daemon
        // killed between here and the commit record leaves pins no restart resumes.
        write_metadata(
            &mut self.ebpf,
            IN_PROGRESS,
            self.hz,
            (meta.cgroup_dev, meta.cgroup_ino),
        )?;
        let same_cgroup = (meta.cgroup_dev, meta.cgroup_ino) == identity;
        let swapped = same_cgroup && links::swap(&mut self.ebpf, &self.pins).is_ok();
        if !swapped {
            links::attach_and_pin(&mut self.ebpf, &self.pins, &file)?;
        }
        self.attached = Some(identity);
        // The programs run: this load is committed. What follows only records it,
        // so a failure is logged, never taken for a load that did not happen.
        if let Err(e) = self.record_commit(identity) {
            tracing::warn!(error = %e, pins = %self.pins.root().display(), "the programs are attached, but recording it in the pins failed");
        }
        Ok(())
    }

    /// After a commit: the metadata (who, when, which cgroup), the fresh maps'
    /// pins in place of the last load's, and the ids of removed upstreams
    /// cleared, now that no program of the old config can count into them.
    fn record_commit(&mut self, cgroup: (u64, u64)) -> Result<(), KernelError> {
        if !self.fresh_pinned {
            for name in FRESH_MAPS {
                let path = self.pins.map(name);
                let _ = std::fs::remove_file(&path);
                let map = self
                    .ebpf
                    .map(name)
                    .ok_or(KernelError::MissingMap { name })?;
                map.pin(&path).map_err(|source| KernelError::Pin {
                    what: name,
                    path,
                    source,
                })?;
            }
            self.fresh_pinned = true;
        }
        // Last: the metadata vouches for the links and fresh maps now pinned (see
        // `resumable`).
        write_metadata(&mut self.ebpf, self.config_digest, self.hz, cgroup)?;
        for id in std::mem::take(&mut self.freed) {
            ids::clear(&mut self.ebpf, &self.states, &self.pins, id)?;
        }
        Ok(())
    }

    /// Each loaded program by name, with the instructions the verifier walked
    /// to accept it (`verified_insns`, 5.16+; None before): what the kernel's
    /// limit of a million is measured against.
    pub fn verified_instructions(&self) -> Vec<(String, Option<u32>)> {
        let mut counts: Vec<(String, Option<u32>)> = self
            .ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some((name.to_string(), info.verified_instruction_count()))
            })
            .collect();
        counts.sort();
        counts
    }

    pub fn states(&self) -> Arc<StateTable> {
        self.states.clone()
    }

    pub fn counters(&self) -> Arc<CounterTable> {
        self.counters.clone()
    }

    /// The transition event ring; can be taken once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        let map = self
            .ebpf
            .take_map(map_names::EVENTS)
            .ok_or(KernelError::MissingMap {
                name: map_names::EVENTS,
            })?;
        RingBuf::try_from(map).map_err(map_err(map_names::EVENTS))
    }

    /// The aya-log reader, if the programs log.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).ok()
    }
}

/// Loads and attaches only the empty programs, for the benchmarks' measurement of
/// what a program of each type costs before it does anything, and for the kernel
/// matrix's guests, which hold the cgroup hooks' static keys on with them (see
/// xtask/src/vm/init.sh). Detach by dropping.
pub fn attach_calibration(cgroup: &Path) -> Result<Ebpf, KernelError> {
    raise_memlock_limit();
    let mut ebpf = EbpfLoader::new()
        .load(EBPF_OBJECT)
        .map_err(KernelError::Load)?;
    let file = File::open(cgroup).map_err(|source| KernelError::Cgroup {
        path: cgroup.to_path_buf(),
        source,
    })?;
    let connect: &mut CgroupSockAddr = program(&mut ebpf, program_names::NOP_CONNECT4)?;
    connect
        .load()
        .map_err(prog_err(program_names::NOP_CONNECT4))?;
    connect
        .attach(&file, CgroupAttachMode::Single)
        .map_err(prog_err(program_names::NOP_CONNECT4))?;
    let connect6: &mut CgroupSockAddr = program(&mut ebpf, program_names::NOP_CONNECT6)?;
    connect6
        .load()
        .map_err(prog_err(program_names::NOP_CONNECT6))?;
    connect6
        .attach(&file, CgroupAttachMode::Single)
        .map_err(prog_err(program_names::NOP_CONNECT6))?;
    let ops: &mut SockOps = program(&mut ebpf, program_names::NOP_SOCK_OPS)?;
    ops.load().map_err(prog_err(program_names::NOP_SOCK_OPS))?;
    ops.attach(&file, CgroupAttachMode::Single)
        .map_err(prog_err(program_names::NOP_SOCK_OPS))?;
    let release: &mut CgroupSock = program(&mut ebpf, program_names::NOP_SOCK_RELEASE)?;
    release
        .load()
        .map_err(prog_err(program_names::NOP_SOCK_RELEASE))?;
    release
        .attach(&file, CgroupAttachMode::Single)
        .map_err(prog_err(program_names::NOP_SOCK_RELEASE))?;
    Ok(ebpf)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, KernelError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(KernelError::MissingProgram { name })?;
    prog.try_into().map_err(prog_err(name))
}

/// `table`: `ENDPOINT_TABLE`'s length, as `Config::map_sizes` laid it out.
fn write_config(
    ebpf: &mut Ebpf,
    config: &Config,
    table: u32,
    hz: u32,
    ids: &[u32],
    packet_nat: bool,
) -> Result<(), KernelError> {
    let upstream_id = |i: usize| ids[i];
    let id_of = |name: &str| {
        config
            .upstreams
            .iter()
            .position(|u| u.name == name)
            .map(upstream_id)
    };
    let services = config.steering_services();
    let row_of = |name: &str| services.iter().position(|s| s.name == name);
    let mut rows: Array<_, ServiceEndpoints> = typed_map(ebpf, map_names::SERVICE_ENDPOINTS)?;
    for (row, service) in services.iter().enumerate() {
        let mut endpoints = ServiceEndpoints::default();
        for (slot, (_, hop)) in endpoints
            .hops
            .iter_mut()
            .zip(service.member_hops(&config.upstreams))
        {
            *slot = hop_abi(&hop, id_of);
            endpoints.count += 1;
        }
        rows.set(row as u32, endpoints, 0)
            .map_err(map_err(map_names::SERVICE_ENDPOINTS))?;
    }
    let mut policies: Array<_, UpstreamPolicy> = typed_map(ebpf, map_names::POLICIES)?;
    if let Some(d) = &config.default_policy {
        policies
            .set(
                DEFAULT_UPSTREAM_ID,
                dry_run(policy_abi(&d.policy, hz), config.daemon.dry_run),
                0,
            )
            .map_err(map_err(map_names::POLICIES))?;
    }
    for (i, up) in config.upstreams.iter().enumerate() {
        policies
            .set(
                upstream_id(i),
                per_address(
                    packet_action(
                        dry_run(
                            service_abi(
                                fallbacks_abi(policy_abi(&up.policy, hz), &up.fallbacks, id_of),
                                up.service.as_ref(),
                                id_of,
                                row_of,
                            ),
                            up.dry_run || config.daemon.dry_run,
                        ),
                        up.packet_action,
                    ),
                    up.per_address,
                ),
                0,
            )
            .map_err(map_err(map_names::POLICIES))?;
    }

    let mut prefix_endpoints = 0;
    // Placed as `Config::map_sizes` laid it out, with the ids now known.
    let mut slots: Array<_, EndpointSlot> = typed_map(ebpf, map_names::ENDPOINT_TABLE)?;
    let mut overflow = Vec::new();
    endpoint_table::place(
        config
            .single_endpoints()
            .map(|(i, dest)| (dest, upstream_id(i))),
        table,
        |i, slot| {
            slots
                .set(i, slot, 0)
                .map_err(map_err(map_names::ENDPOINT_TABLE))
        },
        |slot| {
            overflow.push(slot);
            Ok(())
        },
    )?;
    let mut exact: HashMap<_, DestKey, u32> = typed_map(ebpf, map_names::ENDPOINTS_EXACT)?;
    for slot in &overflow {
        exact
            .insert(slot.dest, slot.upstream, 0)
            .map_err(map_err(map_names::ENDPOINTS_EXACT))?;
    }
    if !overflow.is_empty() {
        prefix_endpoints |= EXACT_OVERFLOW;
    }
    let prefixed = || {
        config.upstreams.iter().enumerate().flat_map(|(i, up)| {
            up.endpoints
                .iter()
                .filter(|e| e.single_address().is_none())
                .map(move |e| (upstream_id(i), e))
        })
    };
    let mut v4: LpmTrie<_, EndpointV4, u32> = typed_map(ebpf, map_names::ENDPOINTS_V4)?;
    for (id, ep) in prefixed() {
        if let IpNet::V4(net) = ep.net {
            let key = Key::new(
                endpoint_prefix_len(net.prefix_len().into()),
                EndpointV4::from_net(net.addr(), ep.port),
            );
            v4.insert(&key, id, 0)
                .map_err(map_err(map_names::ENDPOINTS_V4))?;
            prefix_endpoints |= PREFIX_ENDPOINTS_V4;
        }
    }
    let mut v6: LpmTrie<_, EndpointV6, u32> = typed_map(ebpf, map_names::ENDPOINTS_V6)?;
    for (id, ep) in prefixed() {
        if let IpNet::V6(net) = ep.net {
            let key = Key::new(
                endpoint_prefix_len(net.prefix_len().into()),
                EndpointV6::from_net(net.addr(), ep.port),
            );
            v6.insert(&key, id, 0)
                .map_err(map_err(map_names::ENDPOINTS_V6))?;
            prefix_endpoints |= PREFIX_ENDPOINTS_V6;
        }
    }

    // Last: the hooks read the settings first, so they see a complete configuration.
    let settings = Settings {
        probe_mark: config.daemon.probe_mark,
        default_policy_enabled: config.default_policy.is_some() as u32,
        prefix_endpoints,
        record_slots_mask: SOCKET_RECORD_SLOTS - 1,
        record_stale_jiffies: RECORD_STALE_AFTER
            .as_secs()
            .saturating_mul(hz as u64)
            .min(u32::MAX as u64) as u32,
        packet_nat: packet_nat as u32,
        endpoint_table_mask: table - 1,
        _pad: 0,
    };
    let mut map: Array<_, Settings> = typed_map(ebpf, map_names::SETTINGS)?;
    map.set(0, settings, 0)
        .map_err(map_err(map_names::SETTINGS))?;
    Ok(())
}

/// Checks what a previous daemon pinned before anything is loaded onto it: its ABI,
/// and that the kept maps fit this config. Returns whether there is anything to
/// adopt. Upstream slots adopt the pinned size (it has room for more upstreams);
/// default-policy maps of another size are dropped and made anew (their
/// destinations trip again on their next failures: fail open).
fn check_pins(
    pins: &PinFolder,
    sizes: &mut crate::config::MapSizes,
) -> Result<Option<PinMetadata>, KernelError> {
    let meta_path = pins.map(map_names::PIN_METADATA);
    if !meta_path.exists() {
        // Nothing, or the leftovers of a first start that died before it finished.
        for name in KEPT_MAPS {
            let _ = std::fs::remove_file(pins.map(name));
        }
        return Ok(None);
    }
    let meta = MapData::from_pin(&meta_path)
        .ok()
        .and_then(|data| Array::<MapData, PinMetadata>::try_from(Map::Array(data)).ok())
        .and_then(|array| array.get(&0, 0).ok())
        .unwrap_or_default();
    if meta.abi_version == 0 && !links::all_pinned(pins) {
        // Made by a start that died before it attached anything: leftovers.
        tracing::info!(pins = %pins.root().display(), "removing the maps a start that never attached left behind");
        for name in KEPT_MAPS {
            let _ = std::fs::remove_file(pins.map(name));
        }
        return Ok(None);
    }
    if meta.abi_version != ABI_VERSION {
        return Err(PinError::Abi {
            path: pins.root().to_path_buf(),
            found: meta.abi_version,
            ours: ABI_VERSION,
            version: binary_version(&meta),
        }
        .into());
    }
    let pinned = |name: &str| {
        MapInfo::from_pin(pins.map(name))
            .ok()
            .map(|i| i.max_entries())
    };
    if let Some(slots) = pinned(map_names::UPSTREAM_STATES) {
        if slots < sizes.slots {
            return Err(PinError::TooSmall {
                path: pins.root().to_path_buf(),
                name: map_names::UPSTREAM_STATES,
                pinned: slots,
                wanted: sizes.slots,
            }
            .into());
        }
        sizes.slots = slots;
    }
    for name in [map_names::DEFAULT_STATES, map_names::DEFAULT_TRIPPED] {
        if pinned(name).is_some_and(|n| n != sizes.destinations) {
            tracing::warn!(map = name, "default_policy.max_destinations changed: the per-destination breakers (the default policy's, per-address upstreams' addresses) start over");
            let _ = std::fs::remove_file(pins.map(name));
        }
    }
    if adopt_nat(pins, sizes.nat) {
        sizes.nat = pinned(map_names::PACKET_NAT_OUT).unwrap_or(sizes.nat);
    } else {
        for name in [map_names::PACKET_NAT_OUT, map_names::PACKET_NAT_BACK] {
            let _ = std::fs::remove_file(pins.map(name));
        }
    }
    Ok(Some(meta))
}

/// A loader with the maps sized as `sizes` says.
fn loader_for(sizes: &crate::config::MapSizes) -> EbpfLoader<'static> {
    let slots = sizes.slots;
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(map_names::POLICIES, slots)
        .map_max_entries(map_names::SERVICE_ENDPOINTS, sizes.services)
        .map_max_entries(map_names::RATE_WINDOWS, slots)
        .map_max_entries(map_names::ENDPOINT_TABLE, sizes.table)
        .map_max_entries(map_names::ENDPOINTS_EXACT, sizes.exact)
        .map_max_entries(map_names::ENDPOINTS_V4, sizes.v4)
        .map_max_entries(map_names::ENDPOINTS_V6, sizes.v6)
        .map_max_entries(map_names::UPSTREAM_STATES, slots)
        .map_max_entries(map_names::SERVICE_EJECTIONS, slots)
        .map_max_entries(map_names::COUNTERS, slots)
        .map_max_entries(map_names::CONNECT_DURATIONS, slots)
        .map_max_entries(map_names::EXTRA_COUNTERS, slots)
        .map_max_entries(map_names::UPSTREAM_NAMES, slots)
        .map_max_entries(map_names::DEFAULT_STATES, sizes.destinations)
        .map_max_entries(map_names::DEFAULT_TRIPPED, sizes.destinations)
        .map_max_entries(map_names::SOCKET_RECORDS, SOCKET_RECORD_SLOTS)
        .map_max_entries(map_names::PACKET_FLOWS, sizes.flows)
        .map_max_entries(map_names::PACKET_NAT_OUT, sizes.nat)
        .map_max_entries(map_names::PACKET_NAT_BACK, sizes.nat);
    loader
}

fn pin_paths(pins: &PinFolder, names: &[&'static str]) -> Vec<(&'static str, PathBuf)> {
    names.iter().map(|name| (*name, pins.map(name))).collect()
}

/// The (device, inode) that tells a cgroup from one made anew at the same path.
fn cgroup_identity(cgroup: &Path) -> Result<(u64, u64), KernelError> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(cgroup)
        .map(|m| (m.dev(), m.ino()))
        .map_err(|source| KernelError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })
}

/// Whether the pins can be resumed as they are, by this binary with `config` on
/// `cgroup`, or why not. The metadata, written last at each commit, must name this
/// eBPF object, this config and this cgroup; and the kernel itself must show that
/// each pinned link runs a program that uses the pinned maps, and no other maps of
/// ours, and that every pinned config map is in use. So a start that died midway,
/// a half-applied reload or a pin replaced by hand all mean a full load.
fn resumable(
    pins: &PinFolder,
    meta: &PinMetadata,
    config_digest: [u8; 16],
    cgroup: (u64, u64),
) -> Result<(), String> {
    if meta.object_digest != object_digest() {
        return Err("the pins were made by another build or binary".into());
    }
    if meta.config_digest == IN_PROGRESS {
        return Err("the last daemon stopped while it was attaching or reloading".into());
    }
    if meta.config_digest != config_digest {
        return Err("the config changed".into());
    }
    if (meta.cgroup_dev, meta.cgroup_ino) != cgroup {
        return Err("the pinned links are on another cgroup".into());
    }
    if meta.hz == 0 {
        return Err("the pins record no tick rate".into());
    }
    // The kernel's word, not the metadata's: each link still attached there.
    links::attached_to(pins, cgroup.1)?;
    let mut pinned = std::collections::HashMap::new();
    for name in KEPT_MAPS.iter().chain(FRESH_MAPS.iter()) {
        let info = MapInfo::from_pin(pins.map(name)).map_err(|e| format!("map pin {name}: {e}"))?;
        pinned.insert(kernel_name(name), info.id());
    }
    let used = links::used_map_ids(pins)?;
    for id in &used {
        let Ok(info) = MapInfo::from_id(*id) else {
            continue;
        };
        let name = info.name_as_str().unwrap_or_default().to_string();
        if pinned.get(name.as_str()).is_some_and(|pin| pin != id) {
            return Err(format!(
                "the attached programs use a map {name} that is not the pinned one"
            ));
        }
    }
    // The packet path's maps are used by its own programs, which no pinned link
    // holds (they are the daemon's, on its interfaces).
    for name in FRESH_MAPS.iter().filter(|n| !PACKET_ONLY_MAPS.contains(n)) {
        if !used.contains(&pinned[kernel_name(name)]) {
            return Err(format!("no attached program uses the pinned {name}"));
        }
    }
    Ok(())
}

/// How long a daemon may have been gone for its redirected flows to be taken
/// over: a reload, or a restart's stop and start.
const NAT_HANDOVER: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the pinned NAT maps carry redirected flows on into this load: only
/// across a handover (the last daemon beat within [`NAT_HANDOVER`]: while no
/// program ran, a client may have opened plain connects on ports an old entry
/// names, which that entry must never rewrite) or while the packet path's
/// pinned links kept its programs running on them however long no daemon ran
/// (they saw every such connect: every pinned link live, on the interface it
/// was attached to), of this layout, with at least the room
/// `wanted`, and only if something redirects now or they hold flows. Maps
/// without room (nothing redirected) are always kept.
fn adopt_nat(pins: &PinFolder, wanted: u32) -> bool {
    use breaker_common::packet::{FlowKey, NatTarget};
    let info = |name| MapInfo::from_pin(pins.map(name)).ok();
    let (Some(out), Some(back)) = (
        info(map_names::PACKET_NAT_OUT),
        info(map_names::PACKET_NAT_BACK),
    ) else {
        return false;
    };
    let layout = |i: &MapInfo| {
        i.key_size() as usize == std::mem::size_of::<FlowKey>()
            && i.value_size() as usize == std::mem::size_of::<NatTarget>()
            && i.max_entries() >= wanted
    };
    if !layout(&out) || !layout(&back) || out.max_entries() != back.max_entries() {
        return false;
    }
    // Without room nothing was ever redirected through them (no hook looks).
    if out.max_entries() == 1 {
        return true;
    }
    let beat = MapData::from_pin(pins.map(map_names::DAEMON_HEARTBEAT))
        .ok()
        .and_then(|d| Array::<MapData, u64>::try_from(Map::Array(d)).ok())
        .and_then(|a| a.get(&0, 0).ok());
    let fresh = beat.is_some_and(|b| {
        u64::from(crate::state::now_ms().wrapping_sub(b as u32)) < NAT_HANDOVER.as_millis() as u64
    });
    let links_ran = interface_pins::all_running(pins, packet::ifindex);
    if !fresh && !links_ran {
        tracing::info!("the pinned redirected flows are older than a handover: they start over");
        return false;
    }
    let holds_flows = || {
        MapData::from_pin(pins.map(map_names::PACKET_NAT_OUT))
            .ok()
            .and_then(|d| HashMap::<MapData, FlowKey, NatTarget>::try_from(Map::LruHashMap(d)).ok())
            .is_some_and(|m| m.keys().next().is_some())
    };
    wanted > 1 || holds_flows()
}

/// A map's name as the kernel keeps it (BPF_OBJ_NAME_LEN: 15 bytes and a NUL).
fn kernel_name(name: &str) -> &str {
    &name[..name.len().min(15)]
}

/// The binary version a metadata record names.
fn binary_version(meta: &PinMetadata) -> String {
    let end = meta
        .binary_version
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(meta.binary_version.len());
    String::from_utf8_lossy(&meta.binary_version[..end]).into_owned()
}

fn read_metadata(ebpf: &mut Ebpf) -> Result<PinMetadata, KernelError> {
    let map: Array<_, PinMetadata> = typed_map(ebpf, map_names::PIN_METADATA)?;
    map.get(&0, 0).map_err(map_err(map_names::PIN_METADATA))
}

/// The config digest the metadata holds while links are being swapped or made:
/// no config's (a SHA-256 prefix of all zeros is not a practical outcome).
const IN_PROGRESS: [u8; 16] = [0; 16];

/// What the pinned programs and config maps were made by: the first 16 bytes of
/// the SHA-256 of [`EBPF_OBJECT`] and of this very binary file's identity (device,
/// inode, size, modification time). The daemon writes values of its own into the
/// config maps, so an upgrade that changes only userspace must not resume either;
/// an upgrade replaces the file, a restart runs the same one. Hashing the file's
/// bytes instead would cost a debug build half a second per start.
fn object_digest() -> [u8; 16] {
    use sha2::Digest;
    static DIGEST: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    *DIGEST.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        let mut hasher = sha2::Sha256::new();
        hasher.update(EBPF_OBJECT);
        match std::fs::metadata("/proc/self/exe") {
            Ok(m) => {
                for n in [
                    m.dev(),
                    m.ino(),
                    m.size(),
                    m.mtime() as u64,
                    m.mtime_nsec() as u64,
                ] {
                    hasher.update(n.to_le_bytes());
                }
            }
            // Unknown: a digest no other process makes, so nothing is resumed.
            Err(_) => hasher.update(format!(
                "{:?}{}",
                std::time::SystemTime::now(),
                std::process::id()
            )),
        }
        let mut out = [0; 16];
        out.copy_from_slice(&hasher.finalize()[..16]);
        out
    })
}

/// The first 16 bytes of the SHA-256 of the effective config.
fn config_digest(config: &Config) -> [u8; 16] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{config:?}").as_bytes());
    let mut out = [0; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// Who loaded what: this binary, its ABI, the config's digest, now, and the
/// cgroup (device, inode) the links are on.
fn write_metadata(
    ebpf: &mut Ebpf,
    config_digest: [u8; 16],
    hz: u32,
    cgroup: (u64, u64),
) -> Result<(), KernelError> {
    let mut meta = PinMetadata {
        abi_version: ABI_VERSION,
        pid: std::process::id(),
        loaded_at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        cgroup_dev: cgroup.0,
        cgroup_ino: cgroup.1,
        config_digest,
        object_digest: object_digest(),
        hz,
        ..Default::default()
    };
    let version = env!("CARGO_PKG_VERSION").as_bytes();
    let n = version.len().min(meta.binary_version.len());
    meta.binary_version[..n].copy_from_slice(&version[..n]);
    let mut map: Array<_, PinMetadata> = typed_map(ebpf, map_names::PIN_METADATA)?;
    map.set(0, meta, 0)
        .map_err(map_err(map_names::PIN_METADATA))
}

fn typed_map<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<&'a mut Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or(KernelError::MissingMap { name })?;
    T::try_from(map).map_err(map_err(name))
}

/// SYN retransmissions of a trial socket: with the initial RTO below, a blackholed
/// trial fails after RTO + 2 RTO = 3 RTO.
const TRIAL_SYN_RETRIES: u32 = 1;

/// The state machine's view of a policy, as the kernel programs get it.
pub fn thresholds(p: &Policy) -> Thresholds {
    let ms = |d: std::time::Duration| d.as_millis().min(u32::MAX as u128) as u32;
    Thresholds {
        failure_threshold: p.failure_threshold,
        success_threshold: p.success_threshold,
        half_open_max_connections: p.half_open_max_connections,
        open_duration_ms: ms(p.open_duration),
        max_open_duration_ms: ms(p.max_open_duration),
        open_jitter_pct: p.jitter_pct,
        // A trial ends within trial_connect_timeout; twice that, and its slot is lost.
        trial_lease_ms: ms(p.trial_connect_timeout).saturating_mul(2),
    }
}

/// The initial SYN RTO, in jiffies at `hz`, that makes a trial fail within `timeout`
/// (`TRIAL_SYN_RETRIES` retransmissions, each doubling the wait).
pub fn trial_rto_jiffies(timeout: std::time::Duration, hz: u32) -> u32 {
    let waits = (1u128 << (TRIAL_SYN_RETRIES + 1)) - 1;
    let jiffies = timeout.as_millis() * hz as u128 / 1000 / waits;
    jiffies.clamp(1, u32::MAX as u128) as u32
}

/// `timeout` in the kernel's ticks, rounded up (never shorter than asked), at
/// least one.
fn duration_jiffies(timeout: std::time::Duration, hz: u32) -> u32 {
    (timeout.as_millis() * hz as u128)
        .div_ceil(1000)
        .clamp(1, u32::MAX as u128) as u32
}

/// The packet path's answer to a rejected SYN, in the policy's flags.
fn packet_action(
    mut policy: UpstreamPolicy,
    action: crate::config::PacketAction,
) -> UpstreamPolicy {
    use crate::config::PacketAction;
    use breaker_common::abi::{POLICY_PACKET_DROP, POLICY_PACKET_ICMP, POLICY_PACKET_REDIRECT};
    policy.flags |= match action {
        PacketAction::Reject => 0,
        PacketAction::Drop => POLICY_PACKET_DROP,
        PacketAction::Icmp => POLICY_PACKET_ICMP,
        PacketAction::Redirect => POLICY_PACKET_REDIRECT,
    };
    policy
}

/// `policy`, keeping a breaker per address and port it matches when `on`
/// (`Upstream::per_address`).
fn per_address(mut policy: UpstreamPolicy, on: bool) -> UpstreamPolicy {
    if on {
        policy.flags |= breaker_common::abi::POLICY_PER_ADDRESS;
    }
    policy
}

/// `policy`, in dry run when `on`: nothing that changes traffic, so not the
/// shorter SYN RTO of `connect_timeout` either (outcomes come on the kernel's).
fn dry_run(mut policy: UpstreamPolicy, on: bool) -> UpstreamPolicy {
    if on {
        policy.flags |= POLICY_DRY_RUN;
        policy.connect_rto_jiffies = 0;
    }
    policy
}

/// The kernel form of a policy. Ports and addresses in network byte order as the
/// connect hooks read them from `bpf_sock_addr`.
pub fn policy_abi(p: &Policy, hz: u32) -> UpstreamPolicy {
    let t = thresholds(p);
    let mut abi = UpstreamPolicy {
        failure_threshold: t.failure_threshold,
        success_threshold: t.success_threshold,
        half_open_max_connections: t.half_open_max_connections,
        open_duration_ms: t.open_duration_ms,
        max_open_duration_ms: t.max_open_duration_ms,
        open_jitter_pct: t.open_jitter_pct,
        trial_lease_ms: t.trial_lease_ms,
        trial_rto_jiffies: trial_rto_jiffies(p.trial_connect_timeout, hz),
        trial_syn_retries: TRIAL_SYN_RETRIES,
        connect_rto_jiffies: p.connect_timeout.map_or(0, |t| duration_jiffies(t, hz)),
        ..Default::default()
    };
    for (counted, bit) in [
        (p.count.refused, POLICY_IGNORE_REFUSED),
        (p.count.timeout, POLICY_IGNORE_TIMEOUT),
        (p.count.unreachable, POLICY_IGNORE_UNREACHABLE),
    ] {
        if !counted {
            abi.flags |= bit;
        }
    }
    if let Some(r) = p.rate {
        abi.rate_threshold_pct = r.threshold_pct;
    }
    if let Some(s) = p.slow {
        abi.slow_jiffies = duration_jiffies(s.threshold, hz);
        if p.count.slow {
            abi.flags |= POLICY_COUNT_SLOW;
        }
        if let Some(r) = s.rate {
            abi.slow_rate_pct = r.threshold_pct;
        }
    }
    if let Some(w) = p.window() {
        abi.rate_minimum = w.minimum_connects;
        abi.rate_bucket_jiffies =
            duration_jiffies(w.window / breaker_common::window::BUCKETS as u32, hz);
    }
    abi
}

/// `policy` with its ordered fallbacks, each named upstream by its id
/// (`id_of`). The config has resolved the chain to at most [`MAX_FALLBACKS`] hops.
pub fn fallbacks_abi(
    mut policy: UpstreamPolicy,
    hops: &[crate::config::Fallback],
    id_of: impl Fn(&str) -> Option<u32>,
) -> UpstreamPolicy {
    for (slot, hop) in policy.fallbacks.iter_mut().zip(hops) {
        *slot = hop_abi(hop, &id_of);
    }
    policy.fallback_count = hops.len().min(MAX_FALLBACKS) as u32;
    policy
}

/// One hop as the kernel takes it: its upstream's id (`id_of`), or an address,
/// and where it sends each family's connects.
pub fn hop_abi(hop: &crate::config::Fallback, id_of: impl Fn(&str) -> Option<u32>) -> FallbackHop {
    let mut abi = FallbackHop {
        upstream: hop
            .upstream
            .as_deref()
            .and_then(&id_of)
            .unwrap_or(FALLBACK_ADDRESS),
        ..FallbackHop::default()
    };
    for addr in hop.addresses() {
        let key = DestKey::from_socket_addr(addr);
        let port = port_ne(addr.port()) as u32;
        if key.is_ipv4() {
            abi.flags |= FALLBACK_HAS_V4;
            abi.ip4 = key.addr[3];
            abi.port_v4 = port;
        } else {
            abi.flags |= FALLBACK_HAS_V6;
            abi.ip6 = key.addr;
            abi.port_v6 = port;
        }
    }
    abi
}

/// Upstream id -> (its service's id, the service's ejection cap), for the
/// endpoints of `per_endpoint` services; (0, 0) for every other id.
fn services_of(config: &Config, ids: &[u32], slots: u32) -> Vec<(u32, u32)> {
    let mut of = vec![(0, 0); slots as usize];
    let id_of = |name: &str| {
        config
            .upstreams
            .iter()
            .position(|u| u.name == name)
            .map(|i| ids[i])
    };
    for (i, up) in config.upstreams.iter().enumerate() {
        let Some(service) = &up.service else {
            continue;
        };
        let Some(head) = service.members.first().and_then(|m| id_of(m)) else {
            continue;
        };
        if let Some(slot) = of.get_mut(ids[i] as usize) {
            *slot = (head, service.eject_cap());
        }
    }
    of
}

/// An endpoint of a `per_endpoint` service: its service's row in
/// `SERVICE_ENDPOINTS` (`row_of`), where its connects are steered while its
/// breaker rejects, and where the service's ejection cap and count live
/// (`SERVICE_EJECTIONS` at its first endpoint's id, written by
/// `StateTable::recount_services`).
pub fn service_abi(
    mut policy: UpstreamPolicy,
    service: Option<&crate::config::Service>,
    id_of: impl Fn(&str) -> Option<u32>,
    row_of: impl Fn(&str) -> Option<usize>,
) -> UpstreamPolicy {
    let Some(service) = service else {
        return policy;
    };
    let Some(head) = service.members.first().and_then(|m| id_of(m)) else {
        return policy;
    };
    policy.steer_row = row_of(&service.name).map_or(0, |row| row as u32 + 1);
    policy.service = head;
    policy
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
pub(crate) fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass; failure only means the old limit stays.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_ten_buckets_of_its_tenth_in_ticks() {
        use std::time::Duration;
        let policy = |window: Duration, hz: u32| {
            let mut p = crate::config::Config::parse(
                std::path::Path::new("t.toml"),
                "[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\nfailure_rate_threshold=50\n",
            )
            .unwrap()
            .upstreams[0]
                .policy;
            p.rate.as_mut().unwrap().window = window;
            policy_abi(&p, hz)
        };
        // 10 s: buckets of 1 s, in ticks of each tick rate.
        for (hz, ticks) in [(100, 100), (250, 250), (1000, 1000)] {
            let abi = policy(Duration::from_secs(10), hz);
            assert_eq!(abi.rate_bucket_jiffies, ticks, "HZ {hz}");
            assert_eq!((abi.rate_threshold_pct, abi.rate_minimum), (50, 20));
        }
        // 1 s at HZ 100: buckets of 10 ticks; at 250, 25.
        assert_eq!(policy(Duration::from_secs(1), 100).rate_bucket_jiffies, 10);
        assert_eq!(policy(Duration::from_secs(1), 250).rate_bucket_jiffies, 25);
        // Off: no window.
        let mut off = crate::config::Config::parse(
            std::path::Path::new("t.toml"),
            "[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\n",
        )
        .unwrap()
        .upstreams[0]
            .policy;
        off.rate = None;
        let abi = policy_abi(&off, 250);
        assert_eq!((abi.rate_threshold_pct, abi.rate_bucket_jiffies), (0, 0));
    }

    #[test]
    fn fallbacks_reach_the_kernel_in_order_with_their_upstreams_ids() {
        let config = crate::config::Config::parse(
            std::path::Path::new("t.toml"),
            "[[upstream]]\nname='a'\nendpoints=['10.0.1.1:80']\nfallbacks=['b', '10.0.9.1:8080']\n\
             [[upstream]]\nname='b'\nendpoints=['10.0.2.1:80', '[fd00::2]:443']\n",
        )
        .unwrap();
        let up = &config.upstreams[0];
        let id_of = |name: &str| (name == "b").then_some(7);
        let abi = fallbacks_abi(policy_abi(&up.policy, 250), &up.fallbacks, id_of);
        assert_eq!(abi.fallback_count, 2);
        let [b, addr, rest @ ..] = abi.fallbacks;
        assert_eq!(
            (b.upstream, b.flags),
            (7, FALLBACK_HAS_V4 | FALLBACK_HAS_V6)
        );
        assert_eq!(b.ip4, u32::from_ne_bytes([10, 0, 2, 1]));
        assert_eq!(b.port_v4, port_ne(80) as u32);
        assert_eq!(
            b.ip6,
            DestKey::from_socket_addr("[fd00::2]:443".parse().unwrap()).addr
        );
        assert_eq!(b.port_v6, port_ne(443) as u32);
        assert_eq!(
            (addr.upstream, addr.flags),
            (FALLBACK_ADDRESS, FALLBACK_HAS_V4)
        );
        assert_eq!(addr.ip4, u32::from_ne_bytes([10, 0, 9, 1]));
        assert_eq!(addr.port_v4, port_ne(8080) as u32);
        assert!(rest.iter().all(|h| *h == Default::default()));
    }

    #[test]
    fn slow_connects_reach_the_kernel_in_ticks_with_their_window() {
        let policy = |extra: &str| {
            crate::config::Config::parse(
                std::path::Path::new("t.toml"),
                &format!("[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\n{extra}"),
            )
            .unwrap()
            .upstreams[0]
                .policy
        };
        let off = policy_abi(&policy(""), 250);
        assert_eq!((off.slow_jiffies, off.slow_rate_pct), (0, 0));
        assert!(!off.keeps_window());
        // 100 ms at HZ 250: 25 ticks; at HZ 300 (3.33 ms ticks), rounded up to 30.
        let p = policy("slow_connect_threshold='100ms'\n");
        let abi = policy_abi(&p, 250);
        assert_eq!(abi.slow_jiffies, 25);
        // Never early: 25 ticks crossed may be just over 24 ticks long.
        assert!(abi.is_slow(26) && !abi.is_slow(25));
        assert_eq!(abi.flags & POLICY_COUNT_SLOW, 0, "counted only when named");
        assert!(!abi.keeps_window());
        assert_eq!(policy_abi(&p, 300).slow_jiffies, 30);
        let abi = policy_abi(
            &policy("slow_connect_threshold='100ms'\nslow_rate_threshold=40\nwindow='5s'\nminimum_connects=8\ncount=['timeout','slow']\n"),
            1000,
        );
        assert_ne!(abi.flags & POLICY_COUNT_SLOW, 0);
        assert_ne!(abi.flags & POLICY_IGNORE_REFUSED, 0);
        assert_eq!((abi.slow_rate_pct, abi.rate_threshold_pct), (40, 0));
        assert_eq!((abi.rate_minimum, abi.rate_bucket_jiffies), (8, 500));
        assert!(abi.keeps_window());
    }

    #[test]
    fn a_blackholed_trial_fails_within_its_timeout() {
        // 1 s at HZ 250: RTO 83 jiffies (332 ms); SYN, retry at 332 ms, give up at 996 ms.
        let j = trial_rto_jiffies(std::time::Duration::from_secs(1), 250);
        assert_eq!(j, 83);
        assert!(j * 3 * 1000 / 250 <= 1000);
        assert_eq!(
            trial_rto_jiffies(std::time::Duration::from_secs(1), 1000),
            333
        );
        // Never 0, which would mean "the kernel's default".
        assert_eq!(
            trial_rto_jiffies(std::time::Duration::from_millis(1), 100),
            1
        );
    }

    /// What the metadata alone rules out, before the kernel is asked anything: a
    /// pin folder that does not exist would fail every later check, so each
    /// refusal here is the metadata's.
    #[test]
    fn resume_refuses_metadata_that_does_not_vouch_for_this_start() {
        let pins = PinFolder::new(std::path::Path::new("/nonexistent/breaker-test-pins"));
        let config = [7u8; 16];
        let cgroup = (1, 2);
        let good = PinMetadata {
            abi_version: ABI_VERSION,
            config_digest: config,
            object_digest: object_digest(),
            hz: 250,
            cgroup_dev: 1,
            cgroup_ino: 2,
            ..Default::default()
        };
        let why = |meta: PinMetadata| resumable(&pins, &meta, config, cgroup).unwrap_err();
        assert!(why(PinMetadata {
            object_digest: [1; 16],
            ..good
        })
        .contains("another build"));
        assert!(why(PinMetadata {
            config_digest: IN_PROGRESS,
            ..good
        })
        .contains("while it was attaching"));
        assert!(why(PinMetadata {
            config_digest: [8; 16],
            ..good
        })
        .contains("the config changed"));
        assert!(why(PinMetadata {
            cgroup_ino: 3,
            ..good
        })
        .contains("another cgroup"));
        assert!(why(PinMetadata { hz: 0, ..good }).contains("no tick rate"));
        // All of the metadata agrees: what refuses now is the kernel's side.
        assert!(why(good).starts_with("link "), "{}", why(good));
    }

    #[test]
    fn connect_timeout_is_the_initial_rto_in_jiffies_or_the_kernels() {
        let config = crate::config::Config::parse(
            std::path::Path::new("t.toml"),
            "[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\nconnect_timeout='200ms'\n[[upstream]]\nname='b'\nendpoints=['10.0.0.2:80']\n",
        )
        .unwrap();
        let abi = |i: usize, hz| policy_abi(&config.upstreams[i].policy, hz);
        assert_eq!(abi(0, 250).connect_rto_jiffies, 50);
        assert_eq!(abi(0, 1000).connect_rto_jiffies, 200);
        assert_eq!(abi(1, 250).connect_rto_jiffies, 0, "unset: the kernel's");
        // Rounded up: 210 ms at HZ 100 is 21 ticks; 205 ms is 21 too, not 20.
        assert_eq!(
            duration_jiffies(std::time::Duration::from_millis(205), 100),
            21
        );
        assert_eq!(
            dry_run(abi(0, 250), true).connect_rto_jiffies,
            0,
            "dry run changes no traffic"
        );
    }
}
