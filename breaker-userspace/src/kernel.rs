//! The kernel side as the daemon sees it: load the programs, size and fill the maps
//! from the config, attach to a cgroup, and read state and counters back.
use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf},
    programs::{links::CgroupAttachMode, CgroupSockAddr, SockOps},
    Ebpf, EbpfLoader,
};
use breaker_common::abi::{
    map_names, program_names, v4_mapped, Counters, DestKey, EndpointV4, EndpointV6, Settings,
    UpstreamPolicy, AF_INET, AF_INET6, DEFAULT_UPSTREAM_ID, POLICY_FALLBACK_V4, POLICY_FALLBACK_V6,
    PORT_PREFIX_BITS, PREFIX_ENDPOINTS_V4, PREFIX_ENDPOINTS_V6,
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
}

/// Loaded (and, after [`Kernel::attach`], attached) programs and their maps.
/// Dropping it detaches everything.
pub struct Kernel {
    ebpf: Ebpf,
    states: Arc<StateTable>,
    counters: Arc<CounterTable>,
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
            sum.failures_other += c.failures_other;
            sum.rejected += c.rejected;
            sum.redirected += c.redirected;
            sum.contention_misses += c.contention_misses;
            sum.abandoned += c.abandoned;
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

/// Upstream ids: 0 is the default policy, configured upstreams follow in config order.
pub fn upstream_id(index: usize) -> u32 {
    index as u32 + 1
}

impl Kernel {
    /// Loads the programs with maps sized for `config` and writes the config into them.
    pub fn load(config: &Config) -> Result<Kernel, KernelError> {
        raise_memlock_limit();
        let slots = config.upstreams.len() as u32 + 1;
        let (mut exact, mut v4, mut v6) = (0u32, 0u32, 0u32);
        for ep in config.upstreams.iter().flat_map(|u| &u.endpoints) {
            match (ep.single_address(), ep.net) {
                (Some(_), _) => exact += 1,
                (None, IpNet::V4(_)) => v4 += 1,
                (None, IpNet::V6(_)) => v6 += 1,
            }
        }
        let destinations = config
            .default_policy
            .as_ref()
            .map_or(1, |d| d.max_destinations);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::POLICIES, slots)
            .map_max_entries(map_names::UPSTREAM_STATES, slots)
            .map_max_entries(map_names::COUNTERS, slots)
            .map_max_entries(map_names::ENDPOINTS_EXACT, exact.max(1))
            .map_max_entries(map_names::ENDPOINTS_V4, v4.max(1))
            .map_max_entries(map_names::ENDPOINTS_V6, v6.max(1))
            .map_max_entries(map_names::DEFAULT_STATES, destinations)
            .load(EBPF_OBJECT)
            .map_err(KernelError::Load)?;

        write_config(&mut ebpf, config)?;

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

        for name in [program_names::CONNECT4, program_names::CONNECT6] {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load().map_err(prog_err(name))?;
        }
        let sock_ops: &mut SockOps = program(&mut ebpf, program_names::SOCK_OPS)?;
        sock_ops.load().map_err(prog_err(program_names::SOCK_OPS))?;

        Ok(Kernel {
            ebpf,
            states: Arc::new(states),
            counters: Arc::new(CounterTable { map: counters }),
        })
    }

    /// Attaches connect4, connect6 and sock_ops to `cgroup` as BPF links. Links always
    /// run beside other programs on the cgroup; `bpf_link_create` takes no multi flag
    /// (aya passes the mode as its flags, so `Single`, i.e. 0).
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), KernelError> {
        let file = File::open(cgroup).map_err(|source| KernelError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        for name in [program_names::CONNECT4, program_names::CONNECT6] {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            prog.attach(&file, CgroupAttachMode::Single)
                .map_err(prog_err(name))?;
        }
        let sock_ops: &mut SockOps = program(&mut self.ebpf, program_names::SOCK_OPS)?;
        sock_ops
            .attach(&file, CgroupAttachMode::Single)
            .map_err(prog_err(program_names::SOCK_OPS))?;
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

fn write_config(ebpf: &mut Ebpf, config: &Config) -> Result<(), KernelError> {
    let mut policies: Array<_, UpstreamPolicy> = typed_map(ebpf, map_names::POLICIES)?;
    if let Some(d) = &config.default_policy {
        policies
            .set(DEFAULT_UPSTREAM_ID, policy_abi(&d.policy, &[]), 0)
            .map_err(map_err(map_names::POLICIES))?;
    }
    for (i, up) in config.upstreams.iter().enumerate() {
        policies
            .set(upstream_id(i), policy_abi(&up.policy, &up.fallback), 0)
            .map_err(map_err(map_names::POLICIES))?;
    }

    let mut prefix_endpoints = 0;
    let mut exact: HashMap<_, DestKey, u32> = typed_map(ebpf, map_names::ENDPOINTS_EXACT)?;
    for (i, up) in config.upstreams.iter().enumerate() {
        for addr in up.endpoints.iter().filter_map(Endpoint::single_address) {
            exact
                .insert(dest_key(addr), upstream_id(i), 0)
                .map_err(map_err(map_names::ENDPOINTS_EXACT))?;
        }
    }
    let mut v4: LpmTrie<_, EndpointV4, u32> = typed_map(ebpf, map_names::ENDPOINTS_V4)?;
    for (i, up) in config.upstreams.iter().enumerate() {
        for ep in up.endpoints.iter().filter(|e| e.single_address().is_none()) {
            if let IpNet::V4(net) = ep.net {
                let data = EndpointV4 {
                    port: port_bytes(ep),
                    addr: net.addr().octets(),
                };
                let key = Key::new(PORT_PREFIX_BITS + net.prefix_len() as u32, data);
                v4.insert(&key, upstream_id(i), 0)
                    .map_err(map_err(map_names::ENDPOINTS_V4))?;
                prefix_endpoints |= PREFIX_ENDPOINTS_V4;
            }
        }
    }
    let mut v6: LpmTrie<_, EndpointV6, u32> = typed_map(ebpf, map_names::ENDPOINTS_V6)?;
    for (i, up) in config.upstreams.iter().enumerate() {
        for ep in up.endpoints.iter().filter(|e| e.single_address().is_none()) {
            if let IpNet::V6(net) = ep.net {
                let data = EndpointV6 {
                    port: port_bytes(ep),
                    addr: net.addr().octets(),
                };
                let key = Key::new(PORT_PREFIX_BITS + net.prefix_len() as u32, data);
                v6.insert(&key, upstream_id(i), 0)
                    .map_err(map_err(map_names::ENDPOINTS_V6))?;
                prefix_endpoints |= PREFIX_ENDPOINTS_V6;
            }
        }
    }

    // Last: the hooks read the settings first, so they see a complete configuration.
    let settings = Settings {
        probe_mark: config.daemon.probe_mark,
        default_policy_enabled: config.default_policy.is_some() as u32,
        prefix_endpoints,
        _pad: 0,
    };
    let mut map: Array<_, Settings> = typed_map(ebpf, map_names::SETTINGS)?;
    map.set(0, settings, 0)
        .map_err(map_err(map_names::SETTINGS))?;
    Ok(())
}

/// The kernel's key for one destination: IPv4 as v4-mapped IPv6, network byte order
/// (the layout the hooks build from `bpf_sock_addr` and `bpf_sock_ops`).
pub fn dest_key(sock: SocketAddr) -> DestKey {
    let v4 = match sock.ip() {
        IpAddr::V4(ip) => Some(ip),
        // The hooks see a v4-mapped destination as IPv4.
        IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    };
    let (addr, family) = match (v4, sock.ip()) {
        (Some(ip), _) => (v4_mapped(u32::from_ne_bytes(ip.octets())), AF_INET),
        (None, ip) => {
            let o = match ip {
                IpAddr::V6(ip) => ip.octets(),
                IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
            };
            let mut words = [0u32; 4];
            for (i, w) in words.iter_mut().enumerate() {
                *w = u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
            }
            (words, AF_INET6)
        }
    };
    DestKey {
        addr,
        port: u16::from_ne_bytes(sock.port().to_be_bytes()),
        family,
    }
}

/// Network-order port, or 0 for "any port" (real endpoints never have port 0).
fn port_bytes(ep: &Endpoint) -> [u8; 2] {
    ep.port.unwrap_or(0).to_be_bytes()
}

fn typed_map<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<&'a mut Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or(KernelError::MissingMap { name })?;
    T::try_from(map).map_err(map_err(name))
}

/// The kernel form of a policy. Ports and addresses in network byte order as the
/// connect hooks read them from `bpf_sock_addr`.
pub fn policy_abi(p: &Policy, fallback: &[SocketAddr]) -> UpstreamPolicy {
    let mut abi = UpstreamPolicy {
        failure_threshold: p.failure_threshold,
        success_threshold: p.success_threshold,
        half_open_max_connections: p.half_open_max_connections,
        open_duration_ms: p.open_duration.as_millis().min(u32::MAX as u128) as u32,
        ..Default::default()
    };
    for addr in fallback {
        let port = u16::from_ne_bytes(addr.port().to_be_bytes()) as u32;
        match addr.ip() {
            IpAddr::V4(ip) => {
                abi.flags |= POLICY_FALLBACK_V4;
                abi.fallback_ip4 = u32::from_ne_bytes(ip.octets());
                abi.fallback_port_v4 = port;
            }
            IpAddr::V6(ip) => {
                abi.flags |= POLICY_FALLBACK_V6;
                let o = ip.octets();
                for (i, word) in abi.fallback_ip6.iter_mut().enumerate() {
                    *word =
                        u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
                }
                abi.fallback_port_v6 = port;
            }
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
    fn dest_keys_match_what_the_hooks_build() {
        // connect4 reads user_ip4/user_port as stored: network order in native words.
        let k = dest_key("10.0.0.7:8080".parse().unwrap());
        assert_eq!(k.family, AF_INET);
        assert_eq!(k.addr[3], u32::from_ne_bytes([10, 0, 0, 7]));
        assert_eq!(k.port.to_ne_bytes(), 8080u16.to_be_bytes());
        // A v4-mapped IPv6 endpoint is the IPv4 destination the hooks see.
        assert_eq!(dest_key("[::ffff:10.0.0.7]:8080".parse().unwrap()), k);
        let k6 = dest_key("[fd00::1]:443".parse().unwrap());
        assert_eq!(k6.family, AF_INET6);
        assert_eq!(k6.addr[0].to_ne_bytes(), [0xfd, 0, 0, 0]);
    }
}
