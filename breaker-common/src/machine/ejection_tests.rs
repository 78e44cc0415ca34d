//! The ejection cap of a `per_endpoint` service: [`update_capped`] with a count.
use super::*;
use proptest::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

const T: Thresholds = Thresholds {
    failure_threshold: 2,
    success_threshold: 1,
    half_open_max_connections: 1,
    open_duration_ms: 60_000,
    max_open_duration_ms: 60_000,
    open_jitter_pct: 0,
    trial_lease_ms: 5000,
};

const FAIL: Outcome = Outcome {
    success: false,
    trial_epoch: None,
};

/// A service's slot (its cap and count), over any cell.
struct Count<'a, C> {
    cell: &'a C,
}

impl<C: WordCell> Ejections for Count<'_, C> {
    fn reserve(&self) -> bool {
        reserve_ejection(self.cell)
    }
    fn release(&self) {
        release_ejection(self.cell)
    }
}

/// The places taken in a slot.
fn taken(slot: &AtomicU64) -> u32 {
    ejection_parts(slot.load(Ordering::SeqCst)).1
}

fn out_of_closed(words: &[AtomicU64]) -> u64 {
    words
        .iter()
        .filter(|w| BreakerWord(w.load(Ordering::SeqCst)).state() != State::Closed)
        .count() as u64
}

#[test]
fn a_trip_past_the_cap_is_held_back_and_a_close_makes_room() {
    let count = AtomicU64::new(ejection_slot(1, 0));
    let cap = Count { cell: &count };
    let (a, b) = (AtomicU64::new(0), AtomicU64::new(0));
    let fail = |w: &AtomicU64| update_capped(w, &cap, |x| record(x, FAIL, 5, &T));
    for _ in 0..2 {
        fail(&a);
    }
    assert_eq!(BreakerWord(a.load(Ordering::SeqCst)).state(), State::Open);
    assert_eq!(taken(&count), 1);
    // b reaches its threshold, again and again: it stays CLOSED, its streak
    // where it was, and the step's result still says the outcome counted.
    fail(&b);
    for _ in 0..3 {
        let (prev, step) = fail(&b).unwrap();
        assert_eq!(step.next, prev);
        assert!(step.result);
        assert_eq!(BreakerWord(b.load(Ordering::SeqCst)).state(), State::Closed);
    }
    assert_eq!(taken(&count), 1);
    // A's recovery (HALF_OPEN, then closed by a probe) gives its one back.
    let half = update_capped(&a, &cap, |w| admit(w, 60_005, &T)).unwrap();
    assert_eq!(half.1.next.state(), State::HalfOpen);
    assert_eq!(taken(&count), 1, "HALF_OPEN is still ejected");
    update_capped(&a, &cap, |w| probe(w, true, 60_006, &T));
    assert_eq!(BreakerWord(a.load(Ordering::SeqCst)).state(), State::Closed);
    assert_eq!(taken(&count), 0);
    fail(&b);
    assert_eq!(BreakerWord(b.load(Ordering::SeqCst)).state(), State::Open);
    // An operator's reset closes it too, and gives back.
    update_capped(&b, &cap, reset);
    assert_eq!(taken(&count), 0);
}

/// `held` says the slot refused a place, and only that: the kernel counts
/// overflow by it instead of walking the state machine again.
#[test]
fn held_is_set_exactly_when_the_slot_refuses_a_place() {
    let full = AtomicU64::new(ejection_slot(1, 1));
    let room = AtomicU64::new(ejection_slot(1, 0));
    let word = || AtomicU64::new(record(BreakerWord(0), FAIL, 5, &T).next.0);
    let fail = |w: &AtomicU64, slot: &AtomicU64| {
        update_capped_within::<CAPPED_CAS_RETRIES, _>(w, &Count { cell: slot }, |x| {
            record(x, FAIL, 6, &T)
        })
        .unwrap()
    };
    // At the threshold's edge, a full slot: held, the word left as it was.
    let w = word();
    let before = w.load(Ordering::SeqCst);
    let c = fail(&w, &full);
    assert!(c.held);
    assert_eq!(c.step.next, c.prev);
    assert_eq!(w.load(Ordering::SeqCst), before);
    // With room: applied, a transition, not held.
    let w = word();
    let c = fail(&w, &room);
    assert!(!c.held);
    assert_eq!(
        c.step.transition(c.prev),
        Some((State::Closed, State::Open))
    );
    assert_eq!(taken(&room), 1);
    // A step that ejects nobody never asks the slot (OPEN stays OPEN).
    let c = fail(&w, &full);
    assert!(!c.held);
}

#[test]
fn a_count_never_goes_below_zero_and_a_slot_without_a_cap_ejects_freely() {
    let count = AtomicU64::new(ejection_slot(2, 0));
    release_ejection(&count);
    assert_eq!(taken(&count), 0);
    assert_eq!(ejection_parts(count.load(Ordering::SeqCst)).0, 2);
    // No cap written yet (a fresh slot): never a reason to hold a trip.
    let fresh = AtomicU64::new(0);
    for _ in 0..5 {
        assert!(reserve_ejection(&fresh));
    }
}

/// 64 threads fail and close the ten endpoints of a service with a cap of 3.
/// Phase one only trips (no word goes back to CLOSED), so endpoints out of
/// CLOSED only grow and the count at the end is the most there ever were.
/// Phase two closes and trips at once; at the end the count must not be below
/// the endpoints out of CLOSED (no reservation lost, none given back twice).
/// `count` is a slot with a cap of 3. Returns (most out, out at the end, the
/// count at the end). With the kernel's word attempts (`CAPPED_CAS_RETRIES`,
/// fewer than the daemon's): an update that loses them all drops its outcome,
/// never the count's consistency.
fn service_race(count: &(impl WordCell + Sync)) -> (u64, u64, u64) {
    let words: Vec<AtomicU64> = (0..10).map(|_| AtomicU64::new(0)).collect();
    let cap = Count { cell: count };
    std::thread::scope(|scope| {
        for k in 0..64usize {
            let (words, cap) = (&words, &cap);
            scope.spawn(move || {
                for j in 0..40usize {
                    let w = &words[(k * 7 + j * 3) % words.len()];
                    update_capped_within::<CAPPED_CAS_RETRIES, _>(w, cap, |x| {
                        record(x, FAIL, 1, &T)
                    });
                }
            });
        }
    });
    let most = out_of_closed(&words);
    std::thread::scope(|scope| {
        for k in 0..64usize {
            let (words, cap) = (&words, &cap);
            scope.spawn(move || {
                for j in 0..40usize {
                    let w = &words[(k * 5 + j) % words.len()];
                    if (k + j) % 3 == 0 {
                        update_capped_within::<CAPPED_CAS_RETRIES, _>(w, cap, reset);
                    } else {
                        update_capped_within::<CAPPED_CAS_RETRIES, _>(w, cap, |x| {
                            record(x, FAIL, 2, &T)
                        });
                    }
                }
            });
        }
    });
    (
        most,
        out_of_closed(&words),
        u64::from(ejection_parts(count.load()).1),
    )
}

#[test]
fn ejected_endpoints_never_exceed_the_cap_under_64_racing_threads() {
    for _ in 0..20 {
        let count = AtomicU64::new(ejection_slot(3, 0));
        let (most, out, left) = service_race(&count);
        assert!((1..=3).contains(&most), "phase one passed the cap: {most}");
        assert!(out <= 3, "phase two passed the cap: {out}");
        // Never below: a give-back that lost its compare-and-swaps may leave
        // it above (the daemon's recount frees that place), never the reverse.
        assert!(left >= out, "the count {left} is below the {out} ejected");
    }
}

/// A count without a real compare-and-swap (see `NonAtomicCell` in tests.rs).
struct RacyCount(AtomicU64);

impl WordCell for RacyCount {
    fn load(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    fn compare_exchange(&self, current: u64, new: u64) -> Result<u64, u64> {
        let found = self.0.load(Ordering::Relaxed);
        if found != current {
            return Err(found);
        }
        std::thread::yield_now();
        self.0.store(new, Ordering::Relaxed);
        Ok(found)
    }
}

/// Proof that the race above can fail: a count changed without a real
/// compare-and-swap lets more than the cap out, or loses track.
#[test]
fn the_service_race_catches_a_non_atomic_count() {
    let caught = (0..20).any(|_| {
        let (most, out, left) = service_race(&RacyCount(AtomicU64::new(ejection_slot(3, 0))));
        most > 3 || out > 3 || left < out
    });
    assert!(caught, "a non-atomic count went unnoticed in 20 races");
}

/// An operator's override is outside the cap: forcing an ejected endpoint
/// closed (or disabling it) gives its place back, since it takes connects
/// again; forcing one open takes none.
#[test]
fn overrides_are_outside_the_cap() {
    let count = AtomicU64::new(ejection_slot(1, 0));
    let cap = Count { cell: &count };
    let a = AtomicU64::new(0);
    for _ in 0..2 {
        update_capped(&a, &cap, |x| record(x, FAIL, 5, &T));
    }
    assert_eq!(taken(&count), 1);
    for mode in [Mode::ForceClosed, Mode::Disabled] {
        update_capped(&a, &cap, |x| set_mode(x, mode));
        assert_eq!(taken(&count), 0, "{mode:?}");
        // Back to automatic (a reset): CLOSED, nothing to give back.
        update_capped(&a, &cap, reset);
        assert_eq!(taken(&count), 0);
        for _ in 0..2 {
            update_capped(&a, &cap, |x| record(x, FAIL, 5, &T));
        }
        assert_eq!(taken(&count), 1);
    }
    let b = AtomicU64::new(0);
    update_capped(&b, &cap, |x| set_mode(x, Mode::ForceOpen));
    assert!(turns_away(BreakerWord(b.load(Ordering::SeqCst))));
    assert_eq!(taken(&count), 1, "force_open takes no place");
}

proptest! {
    /// The kernel applies admissions and abandoned trials without the cap (the
    /// packet path's verifier budget has no room for it): they must never eject
    /// an endpoint nor end an ejection, from any word, at any time.
    #[test]
    fn admissions_and_abandons_never_change_an_ejection(
        raw in any::<u64>(),
        now in any::<u32>(),
        epoch in any::<u8>(),
        away in any::<bool>(),
    ) {
        let w = BreakerWord(raw);
        let t = if away { T.without_daemon() } else { T };
        prop_assert_eq!(ejected(admit(w, now, &t).next), ejected(w));
        prop_assert_eq!(ejected(abandon(w, epoch).next), ejected(w));
    }
}
