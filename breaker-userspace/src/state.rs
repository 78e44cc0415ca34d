//! The daemon's view of the per-upstream breaker words: the UPSTREAM_STATES array map,
//! mmapped, so the daemon changes a word with the same compare-and-swap as the kernel.
use std::sync::atomic::{AtomicU64, Ordering};

use aya::maps::MapData;
use breaker_common::machine::{self, BreakerWord, Ejections, Step};
use memmap2::{MmapOptions, MmapRaw};

pub struct StateTable {
    // Keeps the map alive as long as the mapping.
    _map: MapData,
    mmap: MmapRaw,
    slots: u32,
    services: Option<Services>,
}

/// The ejection counts of `per_endpoint` services (`SERVICE_EJECTIONS`, mmapped),
/// and which service each upstream id belongs to, so that the daemon's own
/// closes (probes, resets) give an ejection back as the kernel's do.
struct Services {
    counts: Box<StateTable>,
    /// Upstream id -> (service id, cap); service 0: none.
    of: Vec<(u32, u32)>,
    /// Each service's slot as the last recount left it.
    last_seen: std::sync::Mutex<std::collections::HashMap<u32, u64>>,
}

/// One service's slot (its cap and count), for [`machine::update_capped`].
struct ServiceCount<'a> {
    cell: Option<&'a AtomicU64>,
}

impl Ejections for ServiceCount<'_> {
    fn reserve(&self) -> bool {
        self.cell.is_none_or(machine::reserve_ejection)
    }
    fn release(&self) {
        if let Some(c) = self.cell {
            machine::release_ejection(c);
        }
    }
}

impl StateTable {
    pub(crate) fn map(map: MapData, slots: u32) -> std::io::Result<StateTable> {
        let fd = {
            use std::os::fd::{AsFd, AsRawFd};
            map.fd().as_fd().as_raw_fd()
        };
        let mmap = MmapOptions::new().len(slots as usize * 8).map_raw(fd)?;
        Ok(StateTable {
            _map: map,
            mmap,
            slots,
            services: None,
        })
    }

    /// Gives the table its services: `counts` is `SERVICE_EJECTIONS`, `of` says
    /// each id's service and cap. The counts are left as they are until
    /// [`StateTable::recount_services`].
    pub(crate) fn set_services(&mut self, counts: StateTable, of: Vec<(u32, u32)>) {
        self.services = Some(Services {
            counts: Box::new(counts),
            of,
            last_seen: Default::default(),
        });
    }

    /// Writes each service's slot: its cap, and its count set to its endpoints
    /// ejected now (a new config may have regrouped them, added a service or
    /// changed its cap; a place the kernel could not give back is freed). Run
    /// once only this config's programs and probes change the words (after the
    /// attach, the old generation stopped), then every second.
    ///
    /// A count below the endpoints ejected is raised at once. One above is
    /// lowered only when the slot has not changed since the last pass: a close
    /// swaps its word to CLOSED before it gives its place back, and a trip
    /// takes its place before it swaps, so a slot read between the two is one
    /// above for a moment, and lowering it then would let one trip too many
    /// through once the give-back lands. A place left taken stays unchanged, and
    /// is freed at the next pass.
    pub fn recount_services(&self) {
        let Some(services) = &self.services else {
            return;
        };
        let mut ids: Vec<(u32, u32)> = services.of.clone();
        ids.sort_unstable();
        ids.dedup();
        let mut last = services.last_seen.lock().unwrap_or_else(|e| e.into_inner());
        // Every other slot (a service gone, or never one) holds no count.
        for service in (0..services.counts.slots).filter(|s| !ids.iter().any(|(id, _)| id == s)) {
            if let Some(cell) = services.counts.cell(service) {
                if cell.load(Ordering::Acquire) != 0 {
                    cell.store(0, Ordering::Release);
                }
            }
        }
        for (service, cap) in ids.into_iter().filter(|&(s, _)| s != 0) {
            let Some(cell) = services.counts.cell(service) else {
                continue;
            };
            for _ in 0..machine::EJECTION_RETRIES {
                let slot = cell.load(Ordering::Acquire);
                let ejected = services
                    .of
                    .iter()
                    .enumerate()
                    .filter(|(id, &(s, _))| {
                        s == service && self.load(*id as u32).is_some_and(machine::ejected)
                    })
                    .count() as u32;
                let (had_cap, counted) = machine::ejection_parts(slot);
                let settled = last.get(&service) == Some(&slot);
                let count = if ejected > counted || settled {
                    ejected
                } else {
                    counted
                };
                let wanted = machine::ejection_slot(cap, count);
                if slot == wanted {
                    last.insert(service, slot);
                    break;
                }
                if cell
                    .compare_exchange(slot, wanted, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    if had_cap != cap || count != counted {
                        tracing::debug!(service, cap, count, counted, "ejection slot recounted");
                    }
                    last.insert(service, wanted);
                    break;
                }
            }
        }
    }

    /// Upstream ids the table holds.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    fn cell(&self, id: u32) -> Option<&AtomicU64> {
        if id >= self.slots {
            return None;
        }
        // SAFETY: in bounds, 8-byte aligned (page-aligned base, 8-byte values), and the
        // kernel only ever changes these words atomically.
        Some(unsafe { AtomicU64::from_ptr(self.mmap.as_mut_ptr().cast::<u64>().add(id as usize)) })
    }

    pub fn load(&self, id: u32) -> Option<BreakerWord> {
        self.cell(id)
            .map(|c| BreakerWord(c.load(std::sync::atomic::Ordering::Acquire)))
    }

    /// Frees upstream `id`'s word: CLOSED, epoch 0 (its upstream left the config).
    pub fn reset(&self, id: u32) {
        if let Some(cell) = self.cell(id) {
            cell.store(0, std::sync::atomic::Ordering::Release);
        }
    }

    /// Applies one state-machine step to upstream `id`, as the kernel programs do.
    pub fn update<T: Copy>(
        &self,
        id: u32,
        f: impl FnMut(BreakerWord) -> Step<T>,
    ) -> Option<(BreakerWord, Step<T>)> {
        let (service, _) = self
            .services
            .as_ref()
            .and_then(|s| s.of.get(id as usize))
            .copied()
            .unwrap_or((0, 0));
        let count = ServiceCount {
            cell: (service != 0)
                .then(|| self.services.as_ref().and_then(|s| s.counts.cell(service)))
                .flatten(),
        };
        machine::update_capped(self.cell(id)?, &count, f)
    }
}

/// The daemon's heartbeat in `DAEMON_HEARTBEAT`, mmapped: while it is fresh the
/// connect hooks leave HALF_OPEN to the daemon's probes; once stale they let
/// application trials through (`machine::daemon_away`).
pub struct Heartbeat {
    table: StateTable,
}

impl Heartbeat {
    pub(crate) fn map(map: MapData) -> std::io::Result<Heartbeat> {
        Ok(Heartbeat {
            table: StateTable::map(map, 1)?,
        })
    }

    /// Now, as the kernel's clock reads it.
    pub fn beat(&self) {
        if let Some(cell) = self.table.cell(0) {
            cell.store(u64::from(now_ms()), std::sync::atomic::Ordering::Release);
        }
    }
}

/// Milliseconds of CLOCK_MONOTONIC, wrapping, the clock of `bpf_ktime_get_ns`.
pub fn now_ms() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000) as u32
}
