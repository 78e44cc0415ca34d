//! The failure-rate window: per upstream, a ring of [`BUCKETS`] time buckets that
//! together span the upstream's `window`. Each bucket is one `u64` (its time slot,
//! attempts, failures), so an outcome is added with one compare-and-swap and no
//! lock; a bucket whose slot has passed is taken over by the next outcome that
//! falls in it, which is how the ring rotates without a timer.
//!
//! Bucket layout, low bits first: failures (16), attempts (16), slot (32). A slot
//! is `clock / bucket_width` on any monotonic clock (the programs use jiffies);
//! it wraps with the clock, and a bucket from before a wrap simply stops counting.

/// Buckets per window.
pub const BUCKETS: usize = 10;

/// Most attempts (and failures) one bucket counts; more saturate there, which keeps
/// the rate right to within the bucket's share.
pub const BUCKET_MAX: u32 = u16::MAX as u32;

/// One upstream's window: `RATE_WINDOWS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    pub buckets: [u64; BUCKETS],
}

/// A bucket as its three fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub slot: u32,
    pub attempts: u32,
    pub failures: u32,
}

impl Bucket {
    #[inline(always)]
    pub const fn unpack(v: u64) -> Bucket {
        Bucket {
            slot: (v >> 32) as u32,
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
        (self.slot as u64) << 32 | (a as u64) << 16 | f as u64
    }
}

/// The slot `clock` falls in, for buckets `width` wide (0 is taken as 1).
#[inline(always)]
pub const fn slot_of(clock: u64, width: u32) -> u32 {
    let width = if width == 0 { 1 } else { width as u64 };
    (clock / width) as u32
}

/// Where slot `slot` lives in the ring.
#[inline(always)]
pub const fn index_of(slot: u32) -> usize {
    (slot % BUCKETS as u32) as usize
}

/// The bucket `current` with one outcome added in `slot`: counted on if the bucket
/// is already this slot's, started afresh if it still holds an older slot.
#[inline(always)]
pub const fn add(current: u64, slot: u32, failure: bool) -> u64 {
    let b = Bucket::unpack(current);
    let (attempts, failures) = if b.slot == slot && current != 0 {
        (b.attempts, b.failures)
    } else {
        (0, 0)
    };
    Bucket {
        slot,
        attempts: attempts + 1,
        failures: failures + failure as u32,
    }
    .pack()
}

/// Attempts and failures in the window that ends with slot `now`: every bucket
/// whose slot is one of the last [`BUCKETS`] slots. An empty bucket (0) counts
/// for nothing whatever its slot.
#[inline(always)]
pub fn tally(w: &RateWindow, now: u32) -> (u32, u32) {
    let (mut attempts, mut failures) = (0u32, 0u32);
    let mut i = 0;
    while i < BUCKETS {
        let b = Bucket::unpack(w.buckets[i]);
        if in_window(b.slot, now) {
            attempts += b.attempts;
            failures += b.failures;
        }
        i += 1;
    }
    (attempts, failures)
}

/// Whether a bucket of slot `slot` is in the window that ends with slot `now`.
#[inline(always)]
pub const fn in_window(slot: u32, now: u32) -> bool {
    now.wrapping_sub(slot) < BUCKETS as u32
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
