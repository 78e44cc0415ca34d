use super::*;
use proptest::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const T: Thresholds = Thresholds {
    failure_threshold: 3,
    success_threshold: 2,
    half_open_max_connections: 2,
    open_duration_ms: 1000,
};

fn fail(w: BreakerWord, now: u32) -> BreakerWord {
    record(
        w,
        Outcome {
            success: false,
            trial_epoch: None,
        },
        now,
        &T,
    )
    .next
}

fn trip(now: u32) -> BreakerWord {
    let mut w = BreakerWord::CLOSED;
    for _ in 0..T.failure_threshold {
        w = fail(w, now);
    }
    w
}

#[test]
fn opens_after_exactly_failure_threshold_consecutive_failures() {
    let mut w = BreakerWord::CLOSED;
    for i in 1..T.failure_threshold {
        w = fail(w, 5);
        assert_eq!(w.state(), State::Closed);
        assert_eq!(w.count(), i);
    }
    w = fail(w, 5);
    assert_eq!(w.state(), State::Open);
    assert_eq!(w.opened_at_ms(), 5);
}

#[test]
fn success_resets_the_consecutive_count() {
    let w = fail(fail(BreakerWord::CLOSED, 0), 0);
    let w = record(
        w,
        Outcome {
            success: true,
            trial_epoch: None,
        },
        0,
        &T,
    )
    .next;
    assert_eq!(w, BreakerWord::CLOSED);
    assert_eq!(fail(fail(w, 0), 0).state(), State::Closed);
}

#[test]
fn open_rejects_until_open_duration_then_admits_limited_trials() {
    let w = trip(100);
    assert_eq!(admit(w, 100 + 999, &T).result, Admission::Reject);
    let s1 = admit(w, 1100, &T);
    assert_eq!(s1.transition(w), Some((State::Open, State::HalfOpen)));
    let epoch = match s1.result {
        Admission::Trial { epoch } => epoch,
        other => panic!("expected trial, got {other:?}"),
    };
    let s2 = admit(s1.next, 1101, &T);
    assert_eq!(s2.result, Admission::Trial { epoch });
    assert_eq!(admit(s2.next, 1102, &T).result, Admission::Reject);
    // One trial succeeds: a slot frees up, not yet closed (success_threshold 2).
    let ok = Outcome {
        success: true,
        trial_epoch: Some(epoch),
    };
    let w = record(s2.next, ok, 1103, &T).next;
    assert_eq!(w.state(), State::HalfOpen);
    assert_eq!(w.in_flight(), 1);
    assert!(matches!(admit(w, 1104, &T).result, Admission::Trial { .. }));
    let w = record(w, ok, 1105, &T).next;
    assert_eq!(w, BreakerWord::CLOSED);
}

#[test]
fn trial_failure_reopens_and_restarts_the_clock() {
    let w = trip(0);
    let s = admit(w, 1000, &T);
    let Admission::Trial { epoch } = s.result else {
        panic!()
    };
    let w = record(
        s.next,
        Outcome {
            success: false,
            trial_epoch: Some(epoch),
        },
        1500,
        &T,
    )
    .next;
    assert_eq!(w.state(), State::Open);
    assert_eq!(w.opened_at_ms(), 1500);
    assert_eq!(admit(w, 2400, &T).result, Admission::Reject);
}

#[test]
fn outcomes_from_an_earlier_phase_do_not_count() {
    // In flight when it tripped: ignored while OPEN.
    let w = trip(0);
    let s = record(
        w,
        Outcome {
            success: true,
            trial_epoch: None,
        },
        10,
        &T,
    );
    assert!(!s.result);
    assert_eq!(s.next, w);
    // A trial of an old epoch finishing in a newer HALF_OPEN is ignored too.
    let s = admit(w, 1000, &T);
    let Admission::Trial { epoch } = s.result else {
        panic!()
    };
    let reopened = record(
        s.next,
        Outcome {
            success: false,
            trial_epoch: Some(epoch),
        },
        1000,
        &T,
    )
    .next;
    let again = admit(reopened, 2000, &T).next;
    let stale = record(
        again,
        Outcome {
            success: false,
            trial_epoch: Some(epoch),
        },
        2001,
        &T,
    );
    assert!(!stale.result);
    assert_eq!(stale.next.state(), State::HalfOpen);
}

#[test]
fn probes_close_after_success_threshold_and_reopen_on_failure() {
    let w = trip(0);
    // Too early: a probe changes nothing.
    assert_eq!(probe(w, true, 10, &T).next, w);
    let s = probe(w, true, 1000, &T);
    assert_eq!(s.next.state(), State::HalfOpen);
    assert_eq!(probe(s.next, true, 1001, &T).next, BreakerWord::CLOSED);
    let failed = probe(s.next, false, 1002, &T).next;
    assert_eq!(failed.state(), State::Open);
    assert_eq!(failed.opened_at_ms(), 1002);
}

#[test]
fn open_time_survives_clock_wrap() {
    let w = trip(u32::MAX - 10);
    assert_eq!(admit(w, 500, &T).result, Admission::Reject);
    assert!(matches!(admit(w, 1000, &T).result, Admission::Trial { .. }));
}

fn arb_event() -> impl Strategy<Value = (u8, bool, u32)> {
    (0u8..3, any::<bool>(), 0u32..400)
}

proptest! {
    /// Whatever happens, the packed fields stay in range and HALF_OPEN never has
    /// more trials in flight than permitted.
    #[test]
    fn invariants_hold_under_any_sequence(events in proptest::collection::vec(arb_event(), 1..200)) {
        let mut w = BreakerWord::CLOSED;
        let mut now = 0u32;
        let mut trials: Vec<u8> = Vec::new();
        for (kind, success, dt) in events {
            now = now.wrapping_add(dt);
            w = match kind {
                0 => {
                    let s = admit(w, now, &T);
                    if let Admission::Trial { epoch } = s.result { trials.push(epoch); }
                    s.next
                }
                1 => {
                    let trial_epoch = trials.pop();
                    record(w, Outcome { success, trial_epoch }, now, &T).next
                }
                _ => probe(w, success, now, &T).next,
            };
            prop_assert!(w.in_flight() <= T.half_open_max_connections);
            match w.state() {
                State::Closed => prop_assert!(w.count() < T.failure_threshold),
                State::HalfOpen => prop_assert!(w.count() < T.success_threshold),
                State::Open => prop_assert_eq!(w.in_flight(), 0),
            }
        }
    }

    #[test]
    fn pack_round_trips(state in 0u32..3, at: u32, count in 0..=MAX_COUNT, inf in 0..=MAX_IN_FLIGHT, epoch: u8) {
        let w = BreakerWord::pack(State::from_u32(state), at, count, inf, epoch);
        prop_assert_eq!(w.state().as_u32(), state);
        prop_assert_eq!(w.opened_at_ms(), at);
        prop_assert_eq!(w.count(), count);
        prop_assert_eq!(w.in_flight(), inf);
        prop_assert_eq!(w.epoch(), epoch);
    }
}

/// 64 threads race on one word the way 64 clients race in the kernel: the breaker
/// trips exactly once, and HALF_OPEN never admits more than its permitted trials.
#[test]
fn concurrent_updates_are_race_free() {
    let cell = Arc::new(AtomicU64::new(0));
    let trips = Arc::new(AtomicU64::new(0));
    let max_trials_seen = Arc::new(AtomicU64::new(0));
    let t = Thresholds {
        failure_threshold: 5,
        success_threshold: 1,
        half_open_max_connections: 3,
        open_duration_ms: 0,
    };
    std::thread::scope(|scope| {
        for _ in 0..64 {
            let (cell, trips) = (cell.clone(), trips.clone());
            scope.spawn(move || {
                for _ in 0..50 {
                    if let Some((prev, step)) = update(&*cell, |w| {
                        record(
                            w,
                            Outcome {
                                success: false,
                                trial_epoch: None,
                            },
                            0,
                            &t,
                        )
                    }) {
                        if step.transition(prev) == Some((State::Closed, State::Open)) {
                            trips.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    assert_eq!(trips.load(Ordering::Relaxed), 1);
    // open_duration 0: admits move to HALF_OPEN and take trial slots, never releasing them.
    std::thread::scope(|scope| {
        for _ in 0..64 {
            let (cell, max_seen) = (cell.clone(), max_trials_seen.clone());
            scope.spawn(move || {
                for _ in 0..50 {
                    if let Some((_, step)) = update(&*cell, |w| admit(w, 1, &t)) {
                        max_seen.fetch_max(step.next.in_flight() as u64, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(BreakerWord(cell.load(Ordering::Relaxed)).in_flight(), 3);
    assert_eq!(max_trials_seen.load(Ordering::Relaxed), 3);
}
