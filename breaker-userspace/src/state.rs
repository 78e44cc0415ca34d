//! The daemon's view of the per-upstream breaker words: the UPSTREAM_STATES array map,
//! mmapped, so the daemon changes a word with the same compare-and-swap as the kernel.
use std::sync::atomic::AtomicU64;

use aya::maps::MapData;
use breaker_common::machine::{self, BreakerWord, Step};
use memmap2::{MmapOptions, MmapRaw};

pub struct StateTable {
    // Keeps the map alive as long as the mapping.
    _map: MapData,
    mmap: MmapRaw,
    slots: u32,
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
        })
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
        machine::update(self.cell(id)?, f)
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
