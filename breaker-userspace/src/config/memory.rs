//! An estimate of the kernel memory a config's BPF maps pin. It shows in no
//! process's RSS, so `check-config` prints it.
//!
//! Each map is sized as the kernel allocates it (6.x): elements rounded to 8 bytes,
//! hash maps preallocated with a per-element header and a bucket array, LPM trie
//! nodes as kmalloc'd (counted twice: a trie of n prefixes has up to n - 1
//! intermediate nodes), per-CPU values once per possible CPU, and about a page per
//! map for the map itself. It is an estimate, within some percent of what the
//! kernel reports as the maps' `memlock`.
use std::mem::size_of;

use breaker_common::abi::{
    BreakerCell, ConnectDurations, Counters, DestKey, EndpointSlot, EndpointV4, EndpointV6,
    ExtraCounters, PinMetadata, ServiceEndpoints, Settings, SocketRecord, UpstreamName,
    UpstreamPolicy,
};
use breaker_common::packet::{FlowKey, FlowRecord, NatTarget, PacketCounters};
use breaker_common::window::RateWindow;
use ipnet::IpNet;

use super::Config;
use crate::kernel::SOCKET_RECORD_SLOTS;

const PAGE: u64 = 4096;
/// `struct bpf_map` and friends, for each map.
const MAP_OVERHEAD: u64 = PAGE;
/// `struct htab_elem` before the key: hash node, LRU node, hash.
const HTAB_ELEM_HEADER: u64 = 48;
/// `struct bucket`: list head and lock, one per power-of-two slot.
const HTAB_BUCKET: u64 = 16;
/// `struct lpm_trie_node` before its key data: rcu head, two children, prefix length, flags.
const LPM_NODE_HEADER: u64 = 40;
/// The EVENTS ring buffer's data size (breaker-ebpf's maps.rs), plus its two header pages.
const EVENTS_BYTES: u64 = 256 * 1024 + 2 * PAGE;

fn round8(n: usize) -> u64 {
    (n as u64).div_ceil(8) * 8
}

fn hash_map(entries: u32, key: usize, value: usize) -> u64 {
    let entries = u64::from(entries.max(1));
    MAP_OVERHEAD
        + entries * (HTAB_ELEM_HEADER + round8(key) + round8(value))
        + entries.next_power_of_two() * HTAB_BUCKET
}

fn array(entries: u32, value: usize) -> u64 {
    MAP_OVERHEAD + u64::from(entries.max(1)) * round8(value)
}

fn per_cpu_array(entries: u32, value: usize, cpus: u32) -> u64 {
    // A pointer per entry, then the value on every possible CPU.
    let entries = u64::from(entries.max(1));
    MAP_OVERHEAD + entries * 8 + entries * round8(value) * u64::from(cpus.max(1))
}

/// kmalloc's size classes, which an LPM trie node is rounded up to.
fn kmalloc_size(n: u64) -> u64 {
    [8, 16, 32, 64, 96, 128, 192, 256]
        .into_iter()
        .find(|&class| class >= n)
        .unwrap_or_else(|| n.next_power_of_two())
}

fn lpm_trie(entries: u32, data: usize, value: usize) -> u64 {
    let node = kmalloc_size(LPM_NODE_HEADER + data as u64 + value as u64);
    MAP_OVERHEAD + u64::from(entries) * 2 * node
}

/// The entries each config-sized map gets: what `Kernel::load` sizes the maps
/// with, and what the memory estimate counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Upstream ids: the default policy's 0 and one per configured upstream, with
    /// room to spare (a power of two, at least [`MIN_UPSTREAM_SLOTS`]), so that a
    /// reload or restart can add upstreams to the pinned maps.
    pub slots: u32,
    /// ENDPOINT_TABLE's slots (a power of two, at least 2).
    pub table: u32,
    /// The single-address endpoints the table has no place for (0 or more)...
    pub overflow: u32,
    /// ...and ENDPOINTS_EXACT's size for them, at least 1.
    pub exact: u32,
    /// Prefix or any-port endpoints per family (ENDPOINTS_V4 / _V6), at least 1.
    pub v4: u32,
    pub v6: u32,
    /// DEFAULT_STATES and DEFAULT_TRIPPED.
    pub destinations: u32,
    /// PACKET_FLOWS: SYNs in flight on the watched interfaces; 1 with none.
    pub flows: u32,
    /// PACKET_NAT_OUT and PACKET_NAT_BACK: redirected flows; 1 unless some
    /// upstream's `packet_action` is `redirect` and an interface is watched.
    pub nat: u32,
    /// SERVICE_ENDPOINTS: a row per `per_endpoint` service of several
    /// endpoints, at least 1.
    pub services: u32,
}

/// Connects in flight at once that the packet path can follow, over every
/// watched interface. Past this the LRU forgets the oldest (they go uncounted).
pub const PACKET_FLOW_SLOTS: u32 = 1 << 16;

/// The fewest upstream ids the maps are made with.
pub const MIN_UPSTREAM_SLOTS: u32 = 64;

/// Upstream ids for `upstreams` configured upstreams and the default policy, and
/// as many again: a rename or an added upstream needs an id no upstream of the
/// running config holds.
pub fn upstream_slots(upstreams: usize) -> u32 {
    (upstreams as u32 + 1)
        .saturating_mul(2)
        .checked_next_power_of_two()
        .unwrap_or(u32::MAX)
        .max(MIN_UPSTREAM_SLOTS)
}

impl Config {
    /// Each single-address endpoint, with the index of its upstream, in the
    /// config's order: the order `ENDPOINT_TABLE` is laid out in, by
    /// [`Config::map_sizes`] and by the load alike.
    pub fn single_endpoints(&self) -> impl Iterator<Item = (usize, DestKey)> + '_ {
        self.upstreams.iter().enumerate().flat_map(|(i, u)| {
            u.endpoints
                .iter()
                .filter_map(super::Endpoint::single_address)
                .map(move |a| (i, DestKey::from_socket_addr(a)))
        })
    }

    pub fn map_sizes(&self) -> MapSizes {
        let (mut v4, mut v6) = (0u32, 0u32);
        for ep in self.upstreams.iter().flat_map(|u| &u.endpoints) {
            match (ep.single_address(), ep.net) {
                (Some(_), _) => {}
                (None, IpNet::V4(_)) => v4 += 1,
                (None, IpNet::V6(_)) => v6 += 1,
            }
        }
        // The layout depends on the keys alone.
        let table = crate::kernel::endpoint_table::EndpointLayout::of(|| {
            self.single_endpoints().map(|(_, dest)| dest)
        });
        // A map needs at least one entry, even when the config leaves it empty.
        MapSizes {
            slots: upstream_slots(self.upstreams.len()),
            table: table.len,
            overflow: table.overflow,
            exact: table.overflow.max(1),
            v4: v4.max(1),
            v6: v6.max(1),
            // Per-address upstreams keep their breakers there too: as many as
            // the default policy has room for, or its default size without it.
            destinations: match &self.default_policy {
                Some(d) => d.max_destinations,
                None if self.upstreams.iter().any(|u| u.per_address) => {
                    super::defaults::DEFAULT_POLICY_MAX_DESTINATIONS
                }
                None => 1,
            },
            flows: if self.interfaces.is_empty() {
                1
            } else {
                PACKET_FLOW_SLOTS
            },
            nat: if self.packet_nat() {
                PACKET_FLOW_SLOTS
            } else {
                1
            },
            services: (self.steering_services().len() as u32).max(1),
        }
    }

    /// Whether the packet path may redirect flows: an interface is watched and some
    /// upstream's `packet_action` is `redirect`.
    pub fn packet_nat(&self) -> bool {
        !self.interfaces.is_empty()
            && self
                .upstreams
                .iter()
                .any(|u| u.packet_action == super::PacketAction::Redirect)
    }

    /// Bytes of kernel memory the maps of this config pin, estimated (see the
    /// module's doc), with `possible_cpus` for the per-CPU counters. Pure: the
    /// daemon passes [`possible_cpus`].
    pub fn kernel_memory_estimate(&self, possible_cpus: u32) -> u64 {
        let MapSizes {
            slots,
            table,
            overflow: _,
            exact,
            v4,
            v6,
            destinations,
            flows,
            nat,
            services,
        } = self.map_sizes();
        let u32_size = size_of::<u32>();
        [
            array(1, size_of::<Settings>()),
            array(table, size_of::<EndpointSlot>()),
            hash_map(exact, size_of::<DestKey>(), u32_size),
            lpm_trie(v4, size_of::<EndpointV4>(), u32_size),
            lpm_trie(v6, size_of::<EndpointV6>(), u32_size),
            array(slots, size_of::<UpstreamPolicy>()),
            array(services, size_of::<ServiceEndpoints>()),
            array(slots, size_of::<RateWindow>()),
            // UPSTREAM_STATES, SERVICE_EJECTIONS. Mmapable: whole pages.
            array(slots, size_of::<u64>()).next_multiple_of(PAGE),
            array(slots, size_of::<u64>()).next_multiple_of(PAGE),
            hash_map(destinations, size_of::<DestKey>(), size_of::<BreakerCell>()),
            // DEFAULT_TRIPPED: not preallocated, so this is its most, with as many
            // destinations tripped at once.
            hash_map(destinations, size_of::<DestKey>(), size_of::<BreakerCell>()),
            array(SOCKET_RECORD_SLOTS, size_of::<SocketRecord>()),
            per_cpu_array(slots, size_of::<Counters>(), possible_cpus),
            per_cpu_array(slots, size_of::<ConnectDurations>(), possible_cpus),
            per_cpu_array(slots, size_of::<ExtraCounters>(), possible_cpus),
            array(slots, size_of::<UpstreamName>()),
            array(1, size_of::<PinMetadata>()),
            array(1, size_of::<u64>()).next_multiple_of(PAGE),
            MAP_OVERHEAD + EVENTS_BYTES,
            hash_map(flows, size_of::<FlowKey>(), size_of::<FlowRecord>()),
            2 * hash_map(nat, size_of::<FlowKey>(), size_of::<NatTarget>()),
            per_cpu_array(1, size_of::<PacketCounters>(), possible_cpus),
        ]
        .into_iter()
        .sum()
    }
}

/// The number of possible CPUs (per-CPU maps allocate for each), or 1 if unknown.
pub fn possible_cpus() -> u32 {
    aya::util::nr_cpus()
        .ok()
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .map_or(1, |n| n as u32)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(Path::new("t.toml"), text).expect("a valid config")
    }

    #[test]
    fn the_socket_records_and_events_are_the_floor() {
        let c = config("[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\n");
        let bytes = c.kernel_memory_estimate(2);
        // 65 536 records of 56 bytes, and the 256 KiB ring.
        assert_eq!(size_of::<SocketRecord>(), 56);
        let floor = u64::from(SOCKET_RECORD_SLOTS) * 56 + 256 * 1024;
        assert!(bytes > floor && bytes < floor + 200 * 1024, "{bytes}");
    }

    #[test]
    fn the_largest_default_policy_is_about_384_mib_per_map() {
        let c = config(&format!(
            "[default_policy]\nmax_destinations = {}\n",
            super::super::MAX_DESTINATIONS
        ));
        let mib = c.kernel_memory_estimate(2) >> 20;
        // Measured on 6.18: 4 M destinations pin about 387 MB in the LRU map; the
        // map of tripped destinations can hold as many again at most.
        assert!((760..800).contains(&mib), "{mib} MiB");
    }

    #[test]
    fn per_cpu_counters_grow_with_cpus() {
        let c = config("[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\n");
        // The upstream counters (extra ones and histograms too), and the packet
        // path's one set of counters.
        assert_eq!(
            c.kernel_memory_estimate(3) - c.kernel_memory_estimate(2),
            u64::from(c.map_sizes().slots)
                * round8(
                    size_of::<Counters>()
                        + size_of::<ConnectDurations>()
                        + size_of::<ExtraCounters>()
                )
                + round8(size_of::<PacketCounters>())
        );
    }
}
