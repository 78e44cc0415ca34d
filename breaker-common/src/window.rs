//! The failure-rate window: per upstream, a ring of [`BUCKETS`] time buckets that
//! together span the upstream's `window`. Each bucket is one `u64`, so an outcome
//! is added with one compare-and-swap and no lock; a bucket of a passed slot is
//! taken over by the next outcome that falls in it, which is how the ring rotates
//! without a timer.
//!
//! Bucket layout, low bits first: failures (16), attempts (16), epoch (8), slot
//! (24). A slot is `clock / bucket_width` on any monotonic clock (the programs use
//! jiffies), kept modulo 2^24; the ring's index is taken from that slot, so at the
//! wrap (weeks away at the finest buckets) a bucket may be taken over early,
//! which only forgets outcomes. The epoch is the breaker word's when the outcome
//! was counted: it changes at every entry to HALF_OPEN and at every reset, so a
//! breaker that closes again (or is reset) counts in an empty window, with no
//! clearing to race with.

/// Buckets per window.
pub const BUCKETS: usize = 10;

/// Most attempts one bucket counts: a full bucket halves both its counts before
/// it counts on, which keeps its failure rate.
pub const BUCKET_MAX: u32 = u16::MAX as u32;

/// Slots are kept modulo 2^SLOT_BITS.
pub const SLOT_BITS: u32 = 24;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;

/// One upstream's windows: `RATE_WINDOWS` value. Two rings over the same time
/// buckets: failures among connects, and slow connects among connects (a bucket's
/// `failures` count the slow ones there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    pub buckets: [u64; BUCKETS],
    pub slow: [u64; BUCKETS],
}

/// A bucket as its fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Modulo 2^[`SLOT_BITS`].
    pub slot: u32,
    pub epoch: u8,
    pub attempts: u32,
    pub failures: u32,
}

impl Bucket {
    #[inline(always)]
    pub const fn unpack(v: u64) -> Bucket {
        Bucket {
            slot: (v >> 40) as u32 & SLOT_MASK,
            epoch: (v >> 32) as u8,
            attempts: ((v >> 16) & 0xffff) as u32,
            failures: (v & 0xffff) as u32,
        }
    }

    #[inline(always)]
    pub const fn pack(self) -> u64 {
        let a = if self.attempts > BUCKET_MAX {
            BUCKET_MAX
        } else {
            self.attempts
        };
        let f = if self.failures > a { a } else { self.failures };
        ((self.slot & SLOT_MASK) as u64) << 40
            | (self.epoch as u64) << 32
            | (a as u64) << 16
            | f as u64
    }
}

/// The slot `clock` falls in, for buckets `width` wide (0 is taken as 1).
#[inline(always)]
pub const fn slot_of(clock: u64, width: u32) -> u32 {
    let width = if width == 0 { 1 } else { width as u64 };
    (clock / width) as u32 & SLOT_MASK
}

/// Where slot `slot` lives in the ring.
#[inline(always)]
pub const fn index_of(slot: u32) -> usize {
    (slot % BUCKETS as u32) as usize
}

/// The bucket `current` with one outcome added in `slot` of `epoch`: counted on if
/// the bucket is already that slot's and epoch's, started afresh otherwise.
#[inline(always)]
pub const fn add(current: u64, slot: u32, epoch: u8, failure: bool) -> u64 {
    let b = Bucket::unpack(current);
    let slot = slot & SLOT_MASK;
    let (mut attempts, mut failures) = if current != 0 && b.slot == slot && b.epoch == epoch {
        (b.attempts, b.failures)
    } else {
        (0, 0)
    };
    if attempts >= BUCKET_MAX {
        // Halved, rounding the failures to nearest: the ratio stays, and the
        // bucket weighs no more than a full one in the window.
        failures = failures.div_ceil(2);
        attempts /= 2;
    }
    Bucket {
        slot,
        epoch,
        attempts: attempts + 1,
        failures: failures + failure as u32,
    }
    .pack()
}

/// Whether a bucket of slot `slot` is in the window that ends with slot `now`.
#[inline(always)]
pub const fn in_window(slot: u32, now: u32) -> bool {
    (now.wrapping_sub(slot) & SLOT_MASK) < BUCKETS as u32
}

/// Whether bucket `b` counts in the window that ends with slot `now` of a breaker
/// in `epoch`.
#[inline(always)]
pub const fn counts(b: Bucket, now: u32, epoch: u8) -> bool {
    b.attempts != 0 && b.epoch == epoch && in_window(b.slot, now)
}

/// Attempts and failures in the window that ends with slot `now`, for a breaker in
/// `epoch`.
#[inline(always)]
pub fn tally(w: &RateWindow, now: u32, epoch: u8) -> (u32, u32) {
    let (mut attempts, mut failures) = (0u32, 0u32);
    let mut i = 0;
    while i < BUCKETS {
        let b = Bucket::unpack(w.buckets[i]);
        if counts(b, now, epoch) {
            attempts += b.attempts;
            failures += b.failures;
        }
        i += 1;
    }
    (attempts, failures)
}

/// Whether `failures` of `attempts` reach `threshold_pct` percent, with at least
/// `minimum` attempts. A threshold of 0 is off.
#[inline(always)]
pub const fn exceeded(attempts: u32, failures: u32, threshold_pct: u32, minimum: u32) -> bool {
    threshold_pct != 0
        && attempts != 0
        && attempts >= minimum
        && (failures as u64) * 100 >= (threshold_pct as u64) * (attempts as u64)
}

#[cfg(test)]
mod tests;
