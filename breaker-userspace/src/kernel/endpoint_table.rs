//! `ENDPOINT_TABLE`'s layout: every single-address endpoint with a port at its
//! key's `dest::endpoint_slot` or one of the next slots (linear probing), in a
//! power-of-two array at most half full, so the connect hooks and the packet
//! ingress find an endpoint in a few inlined array reads instead of a hash
//! map's lookup (65 to 80 ns less per connect in the bench's runs). An
//! endpoint with no free slot among its `ENDPOINT_TABLE_PROBES` goes to
//! `ENDPOINTS_EXACT`, which the kernel reads only when some did
//! (`EXACT_OVERFLOW`).
//!
//! A lookup stops at the first empty slot: placing never empties a slot, so
//! every slot between a key's start and its place stays taken. The layout
//! depends on the keys and their order only, so the map sizes (computed before
//! the ids are known) and the fill agree. Placing keeps one byte per slot and
//! hands each slot to its writer: the daemon holds no copy of the table (100 000
//! endpoints would be 6 MiB of it).
use breaker_common::{
    abi::{DestKey, EndpointSlot},
    dest::{endpoint_slot, ENDPOINT_TABLE_PROBES},
};

/// How much larger than the endpoints the table may grow to keep the overflow
/// small: four doublings past twice their number.
const MAX_DOUBLINGS: u32 = 4;

/// The table's size for a set of endpoints, and how many it has no place for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointLayout {
    /// Slots: a power of two, at least 2.
    pub len: u32,
    /// Endpoints that go to `ENDPOINTS_EXACT`.
    pub overflow: u32,
}

impl EndpointLayout {
    /// The layout of the keys `keys()` yields (asked again at each doubling):
    /// twice their number of slots, rounded up to a power of two, doubled while
    /// more than one in 64 would overflow.
    pub fn of<I: Iterator<Item = DestKey>>(keys: impl Fn() -> I) -> EndpointLayout {
        let n = keys().count();
        let mut len = (n * 2).max(2).next_power_of_two() as u32;
        let mut overflow = Self::count_overflow(keys(), len);
        for _ in 0..MAX_DOUBLINGS {
            if overflow as usize <= n / 64 {
                break;
            }
            len *= 2;
            overflow = Self::count_overflow(keys(), len);
        }
        EndpointLayout { len, overflow }
    }

    fn count_overflow(keys: impl Iterator<Item = DestKey>, len: u32) -> u32 {
        let mut overflow = 0;
        let placed = place(
            keys.map(|k| (k, 1)),
            len,
            |_, _| Ok::<_, ()>(()),
            |_| {
                overflow += 1;
                Ok(())
            },
        );
        debug_assert!(placed.is_ok());
        overflow
    }
}

/// Places `endpoints` (key, upstream id; ids are never 0) in a table of `len`
/// slots (a power of two), in order: `put` gets each slot taken and what goes
/// there, `overflow` each endpoint with no free slot among its probes. The
/// first error of either ends it.
pub fn place<E>(
    endpoints: impl Iterator<Item = (DestKey, u32)>,
    len: u32,
    mut put: impl FnMut(u32, EndpointSlot) -> Result<(), E>,
    mut overflow: impl FnMut(EndpointSlot) -> Result<(), E>,
) -> Result<(), E> {
    let mask = len - 1;
    let mut taken = vec![false; len as usize];
    for (dest, upstream) in endpoints {
        let start = endpoint_slot(&dest);
        let free = (0..ENDPOINT_TABLE_PROBES)
            .map(|probe| start.wrapping_add(probe) & mask)
            .find(|&i| !taken[i as usize]);
        let slot = EndpointSlot { dest, upstream };
        match free {
            Some(i) => {
                taken[i as usize] = true;
                put(i, slot)?;
            }
            None => overflow(slot)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    use proptest::prelude::*;

    use super::*;

    /// A table laid out in memory, and the kernel's lookup on it
    /// (`destination.rs`): the table, then the overflow.
    struct Table {
        slots: Vec<EndpointSlot>,
        overflow: Vec<EndpointSlot>,
    }

    impl Table {
        fn new(endpoints: &[(DestKey, u32)], len: u32) -> Table {
            let mut slots = vec![EndpointSlot::default(); len as usize];
            let mut overflow = Vec::new();
            place(
                endpoints.iter().copied(),
                len,
                |i, s| {
                    slots[i as usize] = s;
                    Ok::<_, ()>(())
                },
                |s| {
                    overflow.push(s);
                    Ok(())
                },
            )
            .unwrap();
            Table { slots, overflow }
        }

        fn laid_out(endpoints: &[(DestKey, u32)]) -> (Table, EndpointLayout) {
            let layout = EndpointLayout::of(|| endpoints.iter().map(|(d, _)| *d));
            let table = Table::new(endpoints, layout.len);
            assert_eq!(table.overflow.len() as u32, layout.overflow);
            (table, layout)
        }

        fn find(&self, dest: &DestKey) -> Option<u32> {
            let mask = self.slots.len() as u32 - 1;
            let start = endpoint_slot(dest);
            for probe in 0..ENDPOINT_TABLE_PROBES {
                let slot = &self.slots[(start.wrapping_add(probe) & mask) as usize];
                if slot.upstream == 0 {
                    break;
                }
                if slot.dest == *dest {
                    return Some(slot.upstream);
                }
            }
            self.overflow
                .iter()
                .find(|s| s.dest == *dest)
                .map(|s| s.upstream)
        }
    }

    fn v4(i: u32, port: u16) -> DestKey {
        DestKey::from_socket_addr(SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + i), port)))
    }

    /// The bench's 100 000 endpoints (consecutive addresses, one port): every
    /// one found, in a table at most half full, with few or none overflowing.
    #[test]
    fn a_hundred_thousand_consecutive_endpoints_are_each_found() {
        let endpoints: Vec<(DestKey, u32)> = (0..100_000).map(|i| (v4(i, 80), 1 + i % 7)).collect();
        let (table, layout) = Table::laid_out(&endpoints);
        assert!(layout.len >= 200_000, "{layout:?}");
        assert!(layout.overflow <= 100_000 / 64, "{layout:?}");
        for (dest, id) in &endpoints {
            assert_eq!(table.find(dest), Some(*id));
        }
        assert_eq!(table.find(&v4(100_000, 80)), None);
        assert_eq!(table.find(&v4(5, 81)), None);
    }

    /// A table too small for its keys sends the rest to the overflow, and each
    /// key is still found exactly once, where the kernel looks.
    #[test]
    fn what_the_table_cannot_place_overflows_and_is_found_there() {
        let endpoints: Vec<(DestKey, u32)> = (0..40).map(|i| (v4(i, 443), i + 1)).collect();
        let table = Table::new(&endpoints, 16);
        assert_eq!(table.overflow.len(), 40 - 16);
        for (dest, id) in &endpoints {
            assert_eq!(table.find(dest), Some(*id));
        }
        assert_eq!(table.find(&v4(99, 443)), None);
    }

    proptest! {
        /// Any set of endpoints, of both families: each is found with its own
        /// id, and nothing else is.
        #[test]
        fn every_endpoint_is_found_and_nothing_else(
            keys in proptest::collection::hash_set((any::<u32>(), any::<u16>(), any::<bool>()), 0..300),
            others in proptest::collection::vec((any::<u32>(), any::<u16>(), any::<bool>()), 0..50),
        ) {
            let key = |(a, port, six): (u32, u16, bool)| {
                let ip = if six {
                    std::net::IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, (a >> 16) as u16, a as u16))
                } else {
                    std::net::IpAddr::V4(Ipv4Addr::from(a))
                };
                DestKey::from_socket_addr(SocketAddr::new(ip, port.max(1)))
            };
            let endpoints: Vec<(DestKey, u32)> = keys
                .iter()
                .copied()
                .map(key)
                .collect::<std::collections::HashSet<_>>()
                .into_iter()
                .zip(1..)
                .collect();
            let (table, layout) = Table::laid_out(&endpoints);
            prop_assert!(layout.len.is_power_of_two());
            for (dest, id) in &endpoints {
                prop_assert_eq!(table.find(dest), Some(*id));
            }
            for other in others.into_iter().map(key) {
                if !endpoints.iter().any(|(d, _)| *d == other) {
                    prop_assert_eq!(table.find(&other), None);
                }
            }
        }
    }
}
