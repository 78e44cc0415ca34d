//! The kernel side as the daemon sees it: load the programs, size and fill the maps
//! from the config, attach to a cgroup, and read state and counters back.
//!
//! - [`hz`]: the kernel's tick rate, which trial SYN timeouts are given in,
//!   measured with a BPF program.
//! - [`resolve`]: the kernel's own destination lookup, run under BPF_PROG_TEST_RUN.
//! - [`watch`]: the attached cgroup, watched for a removal and a new cgroup.
mod hz;
mod resolve;
pub mod watch;

use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf},
    programs::{
        cgroup_sock::CgroupSockLinkId, cgroup_sock_addr::CgroupSockAddrLinkId,
        links::CgroupAttachMode, sock_ops::SockOpsLinkId, CgroupSock, CgroupSockAddr, SockOps,
    },
    Ebpf, EbpfLoader,
};
use breaker_common::{
    abi::{
        map_names, program_names, BreakerCell, Counters, DestKey, EndpointV4, EndpointV6, Settings,
        UpstreamPolicy, DEFAULT_UPSTREAM_ID, POLICY_FALLBACK_V4, POLICY_FALLBACK_V6,
        PREFIX_ENDPOINTS_V4, PREFIX_ENDPOINTS_V6,
    },
    dest::{endpoint_prefix_len, port_ne},
    machine::{BreakerWord, State, Thresholds},
};
use ipnet::IpNet;

use crate::{
    config::{Config, Endpoint, Policy},
    state::StateTable,
};

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
}

/// Loaded (and, after [`Kernel::attach`], attached) programs and their maps.
/// Dropping it detaches everything.
pub struct Kernel {
    ebpf: Ebpf,
    /// The links of the current attachment, detached before the next one.
    links: Option<Links>,
    states: Arc<StateTable>,
    counters: Arc<CounterTable>,
    destinations: Arc<DefaultDestinations>,
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

/// How many default-policy destinations are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestinationCounts {
    /// Destinations with failures and a CLOSED breaker.
    pub closed: u64,
    pub open: u64,
    pub half_open: u64,
}

impl DefaultDestinations {
    /// Counts the map's entries by state: one pass over at most `max_destinations`
    /// entries.
    pub fn counts(&self) -> DestinationCounts {
        let mut counts = DestinationCounts::default();
        for entry in self.failing.iter().chain(self.tripped.iter()) {
            let Ok((_, cell)) = entry else {
                // An entry evicted during the walk.
                continue;
            };
            match BreakerWord(cell.word).state() {
                State::Closed => counts.closed += 1,
                State::Open => counts.open += 1,
                State::HalfOpen => counts.half_open += 1,
            }
        }
        counts
    }
}

/// The per-CPU counters of every upstream.
pub struct CounterTable {
    map: PerCpuArray<MapData, Counters>,
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

/// Upstream ids: 0 is the default policy, configured upstreams follow in config order.
pub fn upstream_id(index: usize) -> u32 {
    index as u32 + 1
}

impl Kernel {
    /// Loads the programs with maps sized for `config` and writes the config into them.
    pub fn load(config: &Config) -> Result<Kernel, KernelError> {
        raise_memlock_limit();
        let sizes = config.map_sizes();
        let slots = sizes.slots;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::POLICIES, slots)
            .map_max_entries(map_names::UPSTREAM_STATES, slots)
            .map_max_entries(map_names::COUNTERS, slots)
            .map_max_entries(map_names::ENDPOINTS_EXACT, sizes.exact)
            .map_max_entries(map_names::ENDPOINTS_V4, sizes.v4)
            .map_max_entries(map_names::ENDPOINTS_V6, sizes.v6)
            .map_max_entries(map_names::DEFAULT_STATES, sizes.destinations)
            .map_max_entries(map_names::DEFAULT_TRIPPED, sizes.destinations)
            .map_max_entries(map_names::SOCKET_RECORDS, SOCKET_RECORD_SLOTS)
            .load(EBPF_OBJECT)
            .map_err(KernelError::Load)?;

        let hz = hz::kernel_hz(&mut ebpf);
        tracing::debug!(hz, "kernel tick rate, for trial SYN timeouts");
        write_config(&mut ebpf, config, hz)?;

        let states_map =
            ebpf.take_map(map_names::UPSTREAM_STATES)
                .ok_or(KernelError::MissingMap {
                    name: map_names::UPSTREAM_STATES,
                })?;
        let states = match states_map {
            Map::Array(data) => StateTable::map(data, slots).map_err(KernelError::Mmap)?,
            _ => {
                return Err(KernelError::MissingMap {
                    name: map_names::UPSTREAM_STATES,
                })
            }
        };
        let counters = ebpf
            .take_map(map_names::COUNTERS)
            .ok_or(KernelError::MissingMap {
                name: map_names::COUNTERS,
            })?;
        let counters = PerCpuArray::try_from(counters).map_err(map_err(map_names::COUNTERS))?;
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

        for name in [program_names::CONNECT4, program_names::CONNECT6] {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load().map_err(prog_err(name))?;
        }
        let sock_ops: &mut SockOps = program(&mut ebpf, program_names::SOCK_OPS)?;
        sock_ops.load().map_err(prog_err(program_names::SOCK_OPS))?;
        let release: &mut CgroupSock = program(&mut ebpf, program_names::SOCK_RELEASE)?;
        release
            .load()
            .map_err(prog_err(program_names::SOCK_RELEASE))?;

        Ok(Kernel {
            ebpf,
            links: None,
            states: Arc::new(states),
            counters: Arc::new(CounterTable { map: counters }),
            destinations: Arc::new(destinations),
        })
    }

    /// The default policy's destinations, read from the kernel.
    pub fn destinations(&self) -> Arc<DefaultDestinations> {
        self.destinations.clone()
    }

    /// Attaches connect4, connect6, sock_ops and sock_release to `cgroup` as BPF links,
    /// all or none: a failure part way detaches what this call attached. Links always
    /// run beside other programs on the cgroup; `bpf_link_create` takes no multi flag
    /// (aya passes the mode as its flags, so `Single`, i.e. 0). Attaching again (to a
    /// recreated cgroup) first detaches the previous links, so nothing leaks and no
    /// cgroup runs our programs twice.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), KernelError> {
        let file = File::open(cgroup).map_err(|source| KernelError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        if let Some(old) = self.links.take() {
            old.detach(&mut self.ebpf);
        }
        let mut links = Links::default();
        let attached = links.attach_all(&mut self.ebpf, &file);
        if attached.is_err() {
            links.detach(&mut self.ebpf);
            return attached;
        }
        self.links = Some(links);
        Ok(())
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

/// The links of one attachment to a cgroup, each as it got attached.
#[derive(Default)]
struct Links {
    connect4: Option<CgroupSockAddrLinkId>,
    connect6: Option<CgroupSockAddrLinkId>,
    sock_ops: Option<SockOpsLinkId>,
    release: Option<CgroupSockLinkId>,
}

impl Links {
    fn attach_all(&mut self, ebpf: &mut Ebpf, cgroup: &File) -> Result<(), KernelError> {
        for (name, slot) in [
            (program_names::CONNECT4, &mut self.connect4),
            (program_names::CONNECT6, &mut self.connect6),
        ] {
            let prog: &mut CgroupSockAddr = program(ebpf, name)?;
            *slot = Some(
                prog.attach(cgroup, CgroupAttachMode::Single)
                    .map_err(prog_err(name))?,
            );
        }
        let sock_ops: &mut SockOps = program(ebpf, program_names::SOCK_OPS)?;
        self.sock_ops = Some(
            sock_ops
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(prog_err(program_names::SOCK_OPS))?,
        );
        // Last: it only cleans up after records the others write.
        let release: &mut CgroupSock = program(ebpf, program_names::SOCK_RELEASE)?;
        self.release = Some(
            release
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(prog_err(program_names::SOCK_RELEASE))?,
        );
        Ok(())
    }

    /// Detaches every link of this attachment; a link the kernel already dropped
    /// (its cgroup is gone) is fine.
    fn detach(self, ebpf: &mut Ebpf) {
        for (name, link) in [
            (program_names::CONNECT4, self.connect4),
            (program_names::CONNECT6, self.connect6),
        ] {
            if let (Some(link), Ok(prog)) = (link, program::<CgroupSockAddr>(ebpf, name)) {
                let _ = prog.detach(link);
            }
        }
        if let (Some(link), Ok(prog)) = (
            self.sock_ops,
            program::<SockOps>(ebpf, program_names::SOCK_OPS),
        ) {
            let _ = prog.detach(link);
        }
        if let (Some(link), Ok(prog)) = (
            self.release,
            program::<CgroupSock>(ebpf, program_names::SOCK_RELEASE),
        ) {
            let _ = prog.detach(link);
        }
    }
}

/// Loads and attaches only the empty programs, for the benchmarks' measurement of
/// what a program of each type costs before it does anything. Detach by dropping.
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

fn write_config(ebpf: &mut Ebpf, config: &Config, hz: u32) -> Result<(), KernelError> {
    let mut policies: Array<_, UpstreamPolicy> = typed_map(ebpf, map_names::POLICIES)?;
    if let Some(d) = &config.default_policy {
        policies
            .set(DEFAULT_UPSTREAM_ID, policy_abi(&d.policy, &[], hz), 0)
            .map_err(map_err(map_names::POLICIES))?;
    }
    for (i, up) in config.upstreams.iter().enumerate() {
        policies
            .set(upstream_id(i), policy_abi(&up.policy, &up.fallback, hz), 0)
            .map_err(map_err(map_names::POLICIES))?;
    }

    let mut prefix_endpoints = 0;
    let mut exact: HashMap<_, DestKey, u32> = typed_map(ebpf, map_names::ENDPOINTS_EXACT)?;
    for (i, up) in config.upstreams.iter().enumerate() {
        for addr in up.endpoints.iter().filter_map(Endpoint::single_address) {
            exact
                .insert(DestKey::from_socket_addr(addr), upstream_id(i), 0)
                .map_err(map_err(map_names::ENDPOINTS_EXACT))?;
        }
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
        _pad: 0,
    };
    let mut map: Array<_, Settings> = typed_map(ebpf, map_names::SETTINGS)?;
    map.set(0, settings, 0)
        .map_err(map_err(map_names::SETTINGS))?;
    Ok(())
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

/// The kernel form of a policy. Ports and addresses in network byte order as the
/// connect hooks read them from `bpf_sock_addr`.
pub fn policy_abi(p: &Policy, fallback: &[SocketAddr], hz: u32) -> UpstreamPolicy {
    let t = thresholds(p);
    let mut abi = UpstreamPolicy {
        failure_threshold: t.failure_threshold,
        success_threshold: t.success_threshold,
        half_open_max_connections: t.half_open_max_connections,
        open_duration_ms: t.open_duration_ms,
        trial_lease_ms: t.trial_lease_ms,
        trial_rto_jiffies: trial_rto_jiffies(p.trial_connect_timeout, hz),
        trial_syn_retries: TRIAL_SYN_RETRIES,
        ..Default::default()
    };
    for addr in fallback {
        let key = DestKey::from_socket_addr(*addr);
        let port = port_ne(addr.port()) as u32;
        if key.is_ipv4() {
            abi.flags |= POLICY_FALLBACK_V4;
            abi.fallback_ip4 = key.addr[3];
            abi.fallback_port_v4 = port;
        } else {
            abi.flags |= POLICY_FALLBACK_V6;
            abi.fallback_ip6 = key.addr;
            abi.fallback_port_v6 = port;
        }
    }
    abi
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
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
}
