use super::*;
use proptest::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

const T: Thresholds = Thresholds {
    failure_threshold: 3,
    success_threshold: 2,
    half_open_max_connections: 2,
    open_duration_ms: 1000,
    max_open_duration_ms: 1000,
    open_jitter_pct: 0,
    trial_lease_ms: 5000,
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
    assert_eq!(w.since_ms(), 5);
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
    assert_eq!(w.state(), State::Closed);
    assert_eq!((w.count(), w.in_flight()), (0, 0));
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
    assert_eq!(w.since_ms(), 1500);
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
fn probes_close_after_success_threshold_and_keep_probing_on_failure() {
    let w = trip(0);
    // Too early: a probe changes nothing.
    assert_eq!(probe(w, true, 10, &T).next, w);
    let s = probe(w, true, 1000, &T);
    assert_eq!(s.next.state(), State::HalfOpen);
    assert_eq!(probe(s.next, true, 1001, &T).next.state(), State::Closed);
    // A failed probe does not restart open_duration: the breaker stays HALF_OPEN,
    // its success count reset, and the next probe counts at once.
    let failed = probe(s.next, false, 1002, &T);
    assert!(failed.result);
    assert_eq!(failed.next.state(), State::HalfOpen);
    assert_eq!((failed.next.streak(), failed.next.reopens()), (0, 1));
    assert_eq!(failed.next.epoch(), s.next.epoch());
    let again = probe(failed.next, true, 1003, &T).next;
    assert_eq!((again.state(), again.streak()), (State::HalfOpen, 1));
    assert_eq!(probe(again, true, 1004, &T).next.state(), State::Closed);
}

#[test]
fn half_open_without_trial_slots_rejects_every_connect() {
    let t = Thresholds {
        half_open_max_connections: 0,
        ..T
    };
    let w = trip(0);
    let s = admit(w, 1000, &t);
    assert_eq!(s.result, Admission::Reject);
    assert_eq!(s.next.state(), State::HalfOpen);
    // Long after, still only a probe can close it: no lease renewal admits anything.
    assert_eq!(admit(s.next, 100_000, &t).result, Admission::Reject);
    assert_eq!(
        probe(s.next, true, 100_001, &t).next.state(),
        State::HalfOpen
    );
}

#[test]
fn epochs_only_move_forward_so_an_old_trial_never_counts_later() {
    // HALF_OPEN epoch 1 admits a trial that stays in flight ...
    let w = trip(0);
    let s = admit(w, 1000, &T);
    let Admission::Trial { epoch: old } = s.result else {
        panic!("expected a trial")
    };
    // ... a probe closes the breaker meanwhile ...
    let closed = probe(probe(s.next, true, 1001, &T).next, true, 1002, &T).next;
    assert_eq!(closed.state(), State::Closed);
    assert_eq!(closed.epoch(), old, "closing keeps the epoch");
    // ... it trips again and goes HALF_OPEN in a new epoch ...
    let mut w = closed;
    for _ in 0..T.failure_threshold {
        w = fail(w, 2000);
    }
    let half = expire_open(w, 3000, &T);
    assert_eq!(half.state(), State::HalfOpen);
    assert_ne!(half.epoch(), old);
    // ... and the old trial's late failure must not reopen it.
    let late = record(
        half,
        Outcome {
            success: false,
            trial_epoch: Some(old),
        },
        3001,
        &T,
    );
    assert!(!late.result);
    assert_eq!(late.next, half);
}

#[test]
fn an_abandoned_trial_gives_its_slot_back() {
    let w = trip(0);
    let a = admit(w, 1000, &T);
    let b = admit(a.next, 1000, &T);
    let Admission::Trial { epoch } = b.result else {
        panic!("expected a trial")
    };
    assert_eq!(admit(b.next, 1001, &T).result, Admission::Reject);
    let freed = abandon(b.next, epoch);
    assert!(freed.result);
    assert_eq!(freed.next.in_flight(), 1);
    assert!(matches!(
        admit(freed.next, 1002, &T).result,
        Admission::Trial { .. }
    ));
    // A stale epoch frees nothing.
    assert!(!abandon(b.next, epoch.wrapping_sub(1)).result);
}

#[test]
fn lost_trials_never_hold_the_breaker_shut() {
    // Both slots taken by trials whose end is never seen.
    let w = trip(0);
    let full = admit(admit(w, 1000, &T).next, 1000, &T).next;
    assert_eq!(
        admit(full, 1000 + T.trial_lease_ms - 1, &T).result,
        Admission::Reject
    );
    // After the lease a new epoch starts and admits a trial again.
    let s = admit(full, 1000 + T.trial_lease_ms, &T);
    let Admission::Trial { epoch } = s.result else {
        panic!("expected a trial after the lease, got {:?}", s.result)
    };
    assert_eq!(epoch, full.epoch().wrapping_add(1));
    assert_eq!(s.next.in_flight(), 1);
}

#[test]
fn open_time_survives_clock_wrap() {
    let w = trip(u32::MAX - 10);
    assert_eq!(admit(w, 500, &T).result, Admission::Reject);
    assert!(matches!(admit(w, 1000, &T).result, Admission::Trial { .. }));
}

fn arb_event() -> impl Strategy<Value = (u8, bool, u32)> {
    (0u8..4, any::<bool>(), 0u32..400)
}

proptest! {
    /// Whatever happens, the packed fields stay in range and HALF_OPEN never has
    /// more trials in flight than permitted.
    #[test]
    fn invariants_hold_under_any_sequence(events in proptest::collection::vec(arb_event(), 1..200)) {
        let mut w = BreakerWord::CLOSED;
        let mut now = 0u32;
        let mut trials: Vec<u8> = Vec::new();
        let mut epoch_before = 0u8;
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
                2 => probe(w, success, now, &T).next,
                _ => match trials.pop() {
                    Some(epoch) => abandon(w, epoch).next,
                    None => w,
                },
            };
            // Epochs move forward one step at a time, never back.
            let step = w.epoch().wrapping_sub(epoch_before);
            prop_assert!(step <= 1, "epoch went from {} to {}", epoch_before, w.epoch());
            epoch_before = w.epoch();
            // Liveness: past the lease, HALF_OPEN always admits a trial.
            if w.state() == State::HalfOpen {
                let later = now.wrapping_add(T.trial_lease_ms);
                let admits = matches!(admit(w, later, &T).result, Admission::Trial { .. });
                prop_assert!(admits, "HALF_OPEN past the lease rejected: {:?}", w);
            }
            prop_assert!(w.in_flight() <= T.half_open_max_connections);
            match w.state() {
                State::Closed => prop_assert!(w.count() < T.failure_threshold),
                State::HalfOpen => prop_assert!(w.streak() < T.success_threshold),
                State::Open => prop_assert_eq!(w.in_flight(), 0),
            }
            prop_assert!(w.reopens() <= MAX_REOPENS);
            prop_assert!(w.state() != State::Closed || w.reopens() == 0);
        }
    }

    #[test]
    fn pack_round_trips(state in 0u32..3, at: u32, count in 0..=MAX_COUNT, inf in 0..=MAX_IN_FLIGHT, epoch: u8) {
        let w = BreakerWord::pack(State::from_u32(state), at, count, inf, epoch);
        prop_assert_eq!(w.state().as_u32(), state);
        prop_assert_eq!(w.since_ms(), at);
        prop_assert_eq!(w.count(), count);
        prop_assert_eq!(w.in_flight(), inf);
        prop_assert_eq!(w.epoch(), epoch);
    }
}

/// A cell that loads and stores separately: what a broken compare-and-swap looks
/// like. The race test must catch it.
struct NonAtomicCell(AtomicU64);

impl WordCell for NonAtomicCell {
    fn load(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    fn compare_exchange(&self, current: u64, new: u64) -> Result<u64, u64> {
        let found = self.0.load(Ordering::Relaxed);
        if found != current {
            return Err(found);
        }
        // The window a real CAS closes: another thread may store here.
        std::thread::yield_now();
        self.0.store(new, Ordering::Relaxed);
        Ok(found)
    }
}

/// What 64 racing threads did to one word: trips made, and trial admissions granted.
struct RaceResult {
    trips: u64,
    trials_admitted: u64,
}

/// 64 threads race on one word the way 64 clients race in the kernel, with its
/// compare-and-swap attempts (`KERNEL_CAS_RETRIES`): first failures (to trip
/// it), then admissions in HALF_OPEN whose trials never end.
fn race(cell: &(impl WordCell + Sync)) -> RaceResult {
    let trips = AtomicU64::new(0);
    let trials = AtomicU64::new(0);
    let t = Thresholds {
        failure_threshold: 5,
        success_threshold: 1,
        half_open_max_connections: 3,
        open_duration_ms: 0,
        max_open_duration_ms: 0,
        open_jitter_pct: 0,
        trial_lease_ms: u32::MAX,
    };
    let fail = Outcome {
        success: false,
        trial_epoch: None,
    };
    std::thread::scope(|scope| {
        for _ in 0..64 {
            scope.spawn(|| {
                for _ in 0..50 {
                    if let Some((prev, step)) =
                        update_within::<KERNEL_CAS_RETRIES, _>(cell, |w| record(w, fail, 0, &t))
                    {
                        if step.transition(prev) == Some((State::Closed, State::Open)) {
                            trips.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    // open_duration 0: admits move to HALF_OPEN and take trial slots, never releasing
    // them; the lease never runs out. Count every admission granted.
    std::thread::scope(|scope| {
        for _ in 0..64 {
            scope.spawn(|| {
                for _ in 0..50 {
                    if let Some((_, step)) =
                        update_within::<KERNEL_CAS_RETRIES, _>(cell, |w| admit(w, 1, &t))
                    {
                        if matches!(step.result, Admission::Trial { .. }) {
                            trials.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    RaceResult {
        trips: trips.into_inner(),
        trials_admitted: trials.into_inner(),
    }
}

/// The breaker trips exactly once, and HALF_OPEN admits exactly its permitted trials.
#[test]
fn concurrent_updates_are_race_free() {
    let cell = AtomicU64::new(0);
    let r = race(&cell);
    assert_eq!(r.trips, 1);
    assert_eq!(r.trials_admitted, 3);
}

/// The same race on a cell without a real compare-and-swap over-admits: proof that
/// the test above can fail. Races are not certain in one run, so it tries a few.
#[test]
fn the_race_test_catches_a_non_atomic_cell() {
    let caught = (0..20).any(|_| {
        let r = race(&NonAtomicCell(AtomicU64::new(0)));
        r.trips != 1 || r.trials_admitted != 3
    });
    assert!(caught, "a non-atomic cell went unnoticed in 20 races");
}

#[test]
fn the_lease_counts_from_the_newest_trial_not_from_an_idle_half_open() {
    let t = Thresholds {
        half_open_max_connections: 1,
        ..T
    };
    // HALF_OPEN long idle: open_duration passed at 1000, nothing came until later.
    let half = expire_open(trip(0), 1000, &t);
    let late = 1000 + t.trial_lease_ms + 500;
    let first = admit(half, late, &t);
    assert!(matches!(first.result, Admission::Trial { .. }));
    // The very next connect must not renew the epoch under the fresh trial.
    let second = admit(first.next, late + 1, &t);
    assert_eq!(second.result, Admission::Reject);
    assert_eq!(second.next.epoch(), first.next.epoch());
    // Only a lease after the newest trial.
    let renewed = admit(first.next, late + t.trial_lease_ms, &t);
    assert!(matches!(renewed.result, Admission::Trial { .. }));
}

#[test]
fn a_probe_driven_breaker_admits_one_trial_once_the_daemon_is_gone() {
    let probe_driven = Thresholds {
        half_open_max_connections: 0,
        ..T
    };
    let half_open = expire_open(trip(1_000), 1_000 + T.open_duration_ms, &T);
    assert_eq!(half_open.state(), State::HalfOpen);
    let now = 1_000 + T.open_duration_ms + 1;
    // With a daemon: probes decide, applications are rejected.
    assert_eq!(
        admit(half_open, now, &probe_driven).result,
        Admission::Reject
    );
    // Without one: trials go through, one at a time, and their successes close it.
    let alone = probe_driven.without_daemon();
    let mut w = half_open;
    for _ in 0..alone.success_threshold {
        let step = admit(w, now, &alone);
        let Admission::Trial { epoch } = step.result else {
            panic!("no trial without a daemon: {:?}", step.result)
        };
        assert_eq!(admit(step.next, now, &alone).result, Admission::Reject);
        let success = Outcome {
            success: true,
            trial_epoch: Some(epoch),
        };
        w = record(step.next, success, now, &alone).next;
    }
    assert_eq!(w.state(), State::Closed);
    // A configured trial budget is kept as it is.
    let two = Thresholds {
        half_open_max_connections: 2,
        ..T
    };
    assert_eq!(two.without_daemon(), two);
}

#[test]
fn the_daemon_is_away_after_its_heartbeat_goes_stale_across_the_wrap() {
    assert!(daemon_away(0, 5), "never beat");
    assert!(!daemon_away(1_000, 1_000 + DAEMON_AWAY_MS));
    assert!(daemon_away(1_000, 1_000 + DAEMON_AWAY_MS + 1));
    let beat = u32::MAX - 10;
    assert!(!daemon_away(beat, beat.wrapping_add(DAEMON_AWAY_MS)));
    assert!(daemon_away(beat, beat.wrapping_add(DAEMON_AWAY_MS + 1)));
}

#[test]
fn an_override_holds_whatever_happens_until_reset() {
    let open = trip(1_000);
    let later = 1_000 + T.open_duration_ms * 10;
    let failure = Outcome {
        success: false,
        trial_epoch: None,
    };
    for (mode, admission) in [
        (Mode::ForceOpen, Admission::Reject),
        (Mode::ForceClosed, Admission::Pass),
        (Mode::Disabled, Admission::Ignore),
    ] {
        for w in [BreakerWord::CLOSED, open] {
            let forced = set_mode(w, mode).next;
            assert_eq!(forced.mode(), mode);
            assert_eq!(forced.state(), w.state(), "forcing keeps the state");
            assert_eq!(
                admit(forced, later, &T),
                Step {
                    next: forced,
                    result: admission
                }
            );
            assert_eq!(record(forced, failure, later, &T).next, forced);
            assert_eq!(probe(forced, true, later, &T).next, forced);
            assert_eq!(expire_open(forced, later, &T), forced);
            // Forced closed still reports outcomes; the others do not.
            assert_eq!(
                record(forced, failure, later, &T).result,
                mode == Mode::ForceClosed
            );
        }
    }
}

#[test]
fn reset_closes_in_a_new_epoch_so_earlier_trials_never_count() {
    let half_open = expire_open(trip(1_000), 1_000 + T.open_duration_ms, &T);
    let step = admit(half_open, 1_000 + T.open_duration_ms, &T);
    let Admission::Trial { epoch } = step.result else {
        panic!("{:?}", step.result)
    };
    let forced = set_mode(step.next, Mode::ForceOpen).next;
    let reset = reset(forced).next;
    assert_eq!(reset.state(), State::Closed);
    assert_eq!(reset.mode(), Mode::Auto);
    assert_eq!(reset.count(), 0);
    assert_ne!(reset.epoch(), epoch);
    // The stale trial's failure counts as an ordinary CLOSED failure, not a trial.
    let stale = Outcome {
        success: false,
        trial_epoch: Some(epoch),
    };
    assert_eq!(record(reset, stale, 5_000, &T).next.count(), 1);
}

#[test]
fn a_rate_trip_opens_only_an_automatic_closed_breaker() {
    // CLOSED with one failure counted: opens at once, streak cleared, epoch kept.
    let w = fail(BreakerWord::CLOSED, 10);
    let step = trip_on_rate(w, 500, w.epoch());
    assert!(step.result);
    assert_eq!(step.next.state(), State::Open);
    assert_eq!(step.next.since_ms(), 500);
    assert_eq!(step.next.count(), 0);
    assert_eq!(step.next.epoch(), w.epoch());
    // Already OPEN (the consecutive count tripped first): unchanged, its trip time kept.
    let open = trip(100);
    assert_eq!(trip_on_rate(open, 900, open.epoch()).next, open);
    // HALF_OPEN: trials decide, not the window.
    let half = admit(open, 100 + T.open_duration_ms, &T).next;
    assert_eq!(half.state(), State::HalfOpen);
    assert_eq!(trip_on_rate(half, 5_000, half.epoch()).next, half);
    // A verdict of another closed period (a reset came between): no trip.
    let reset_since = reset(w).next;
    assert!(!trip_on_rate(reset_since, 600, w.epoch()).result);
    assert!(trip_on_rate(reset_since, 600, reset_since.epoch()).result);
    // An override holds.
    for mode in [Mode::ForceClosed, Mode::Disabled, Mode::ForceOpen] {
        let forced = set_mode(BreakerWord::CLOSED, mode).next;
        assert!(!trip_on_rate(forced, 1, forced.epoch()).result, "{mode:?}");
    }
}

#[test]
fn a_rated_record_is_the_record_then_the_rate_trip() {
    let failure = Outcome {
        success: false,
        trial_epoch: None,
    };
    // Without the rate: exactly `record`.
    let w = fail(BreakerWord::CLOSED, 1);
    assert_eq!(
        record_rated(w, failure, 7, &T, None),
        record(w, failure, 7, &T)
    );
    // With it: one failure short of the streak, still open at `now`.
    let step = record_rated(w, failure, 7, &T, Some(w.epoch()));
    assert!(step.result);
    assert_eq!((step.next.state(), step.next.since_ms()), (State::Open, 7));
    // When the streak trips too, the trip time is the same.
    let w = fail(w, 2);
    assert_eq!(
        record_rated(w, failure, 9, &T, Some(w.epoch())).next,
        record(w, failure, 9, &T).next
    );
}

/// A breaker that fails its trial `n` times in a row under `t`, from a trip at 0:
/// each open phase's length, as admission sees it (the first ms a trial passes).
fn open_phases(t: &Thresholds, n: usize) -> (Vec<u32>, BreakerWord) {
    let mut w = trip(0);
    let mut phases = Vec::new();
    let mut now = 0u32;
    for _ in 0..n {
        let tripped_at = now;
        // Rejected up to the last ms of the open time, a trial from then on.
        let open = open_duration_ms(w, t);
        assert_eq!(admit(w, tripped_at + open - 1, t).result, Admission::Reject);
        let s = admit(w, tripped_at + open, t);
        let Admission::Trial { epoch } = s.result else {
            panic!("no trial after {open} ms: {:?}", s.result);
        };
        phases.push(open);
        now = tripped_at + open;
        let failed = Outcome {
            success: false,
            trial_epoch: Some(epoch),
        };
        w = record(s.next, failed, now, t).next;
        assert_eq!(w.state(), State::Open);
    }
    (phases, w)
}

#[test]
fn each_reopen_doubles_the_open_time_up_to_the_maximum() {
    let t = Thresholds {
        max_open_duration_ms: 6_000,
        ..T
    };
    let (phases, w) = open_phases(&t, 6);
    assert_eq!(phases, [1_000, 2_000, 4_000, 6_000, 6_000, 6_000]);
    assert_eq!(w.reopens(), 6);
    // Without a maximum above open_duration, it never grows (the default).
    let (phases, _) = open_phases(&T, 4);
    assert_eq!(phases, [1_000; 4]);
}

#[test]
fn a_full_close_starts_the_open_time_over_and_failed_probes_add_to_the_reopens() {
    let t = Thresholds {
        max_open_duration_ms: 60_000,
        ..T
    };
    let (_, w) = open_phases(&t, 3);
    assert_eq!(w.reopens(), 3);
    let now = w.since_ms() + open_duration_ms(w, &t);
    // Failed probes keep it HALF_OPEN and add to the reopens (failed recovery
    // attempts); one success is not yet a close (success_threshold 2).
    let half = probe(w, false, now, &t).next;
    assert_eq!((half.state(), half.reopens()), (State::HalfOpen, 4));
    let half = probe(half, true, now + 1, &t).next;
    assert_eq!((half.streak(), half.reopens()), (1, 4));
    let half = probe(half, false, now + 2, &t).next;
    assert_eq!((half.streak(), half.reopens()), (0, 5));
    let half = probe(half, true, now + 3, &t).next;
    let closed = probe(half, true, now + 4, &t).next;
    assert_eq!((closed.state(), closed.reopens()), (State::Closed, 0));
    let mut again = closed;
    for _ in 0..t.failure_threshold {
        again = record(
            again,
            Outcome {
                success: false,
                trial_epoch: None,
            },
            now + 10,
            &t,
        )
        .next;
    }
    assert_eq!(again.state(), State::Open);
    assert_eq!(open_duration_ms(again, &t), 1_000);
}

#[test]
fn reopens_saturate_and_the_open_time_stays_at_its_maximum() {
    let day = 24 * 3600 * 1000;
    let t = Thresholds {
        open_duration_ms: day,
        max_open_duration_ms: day,
        open_jitter_pct: 100,
        ..T
    };
    let (_, w) = open_phases(
        &Thresholds {
            max_open_duration_ms: u32::MAX,
            ..T
        },
        MAX_REOPENS as usize + 3,
    );
    assert_eq!(w.reopens(), MAX_REOPENS);
    let open = open_duration_ms(w, &t);
    assert!((day..=2 * day).contains(&open), "{open}");
}

#[test]
fn jitter_spreads_trips_over_the_whole_range_and_never_shortens() {
    let t = Thresholds {
        open_duration_ms: 10_000,
        max_open_duration_ms: 10_000,
        open_jitter_pct: 20,
        ..T
    };
    // A thousand hosts tripping within one second of each other.
    let opens: Vec<u32> = (0..1_000u32)
        .map(|ms| open_duration_ms(trip(5_000_000 + ms), &t))
        .collect();
    let (min, max) = (opens.iter().min().unwrap(), opens.iter().max().unwrap());
    assert!(*min >= 10_000 && *max < 12_000, "{min}..{max}");
    // Spread out: the range is covered, and no tenth of it holds most of them.
    assert!(*min < 10_200 && *max > 11_800, "{min}..{max}");
    let mut tenths = [0u32; 10];
    for o in &opens {
        tenths[((o - 10_000) / 200) as usize] += 1;
    }
    assert!(
        tenths.iter().all(|&n| (50..=150).contains(&n)),
        "{tenths:?}"
    );
    // The same trip always gets the same time: kernel and daemon agree.
    assert_eq!(
        open_duration_ms(trip(77), &t),
        open_duration_ms(trip(77), &t)
    );
}

proptest! {
    /// Any open time lies between open_duration and the maximum plus its jitter,
    /// whatever the reopens, the trip time and the settings.
    #[test]
    fn the_open_time_stays_within_its_bounds(
        base in 1u32..=86_400_000,
        above in 0u32..=86_400_000,
        jitter in 0u32..=100,
        reopens in 0u32..=MAX_REOPENS,
        since: u32,
    ) {
        // As the daemon writes them: a maximum of at least open_duration, at most 24 h.
        let max = base.saturating_add(above).min(86_400_000);
        let t = Thresholds {
            open_duration_ms: base,
            max_open_duration_ms: max,
            open_jitter_pct: jitter,
            ..T
        };
        let w = BreakerWord::pack(State::Open, since, reopens << REOPENS_SHIFT, 0, 0);
        let open = open_duration_ms(w, &t) as u64;
        let top = base.max(max) as u64;
        prop_assert!(open >= base as u64);
        prop_assert!(open <= top + top * jitter as u64 / 100);
        if jitter == 0 {
            prop_assert_eq!(open, (base as u64) .saturating_mul(1 << reopens).min(top));
        }
    }
}

#[test]
fn a_closed_word_with_a_count_beyond_the_streak_settles_and_never_trips_as_a_reopen() {
    // As a daemon that allowed thresholds up to 4095 may have left it: 600 failures.
    let old = BreakerWord::pack(State::Closed, 0, 600, 0, 7);
    assert_eq!(old.reopens(), 2);
    // Tripped as it is, it is a first open all the same.
    let t = Thresholds {
        max_open_duration_ms: 60_000,
        ..T
    };
    let tripped = trip_on_rate(old, 10, 7).next;
    assert_eq!((tripped.state(), tripped.reopens()), (State::Open, 0));
    assert_eq!(open_duration_ms(tripped, &t), 1_000);
    // Settled, it counts from 0; anything else is left as it is.
    let s = settle_closed(old);
    assert!(s.result);
    assert_eq!((s.next.count(), s.next.epoch()), (0, 7));
    // An operator's override stays.
    for mode in Mode::ALL {
        let forced = set_mode(old, mode).next;
        let s = settle_closed(forced).next;
        assert_eq!(
            (s.mode(), s.count(), s.since_ms()),
            (mode, 0, forced.since_ms())
        );
    }
    for w in [BreakerWord::pack(State::Closed, 0, 3, 0, 1), trip(5)] {
        assert_eq!(
            settle_closed(w),
            Step {
                next: w,
                result: false
            }
        );
    }
}

#[test]
fn in_flight_connects_are_turned_away_only_by_a_breaker_that_turns_new_ones_away() {
    let closed = BreakerWord::CLOSED;
    assert!(!turns_away(closed));
    assert!(turns_away(trip(1_000)));
    let half_open = BreakerWord::pack(State::HalfOpen, 1_000, 0, 0, 1);
    assert!(turns_away(half_open));
    for (mode, away) in [
        (Mode::ForceOpen, true),
        (Mode::ForceClosed, false),
        (Mode::Disabled, false),
    ] {
        for w in [closed, trip(1_000)] {
            assert_eq!(
                turns_away(set_mode(w, mode).next),
                away,
                "{mode:?} over {w:?}"
            );
        }
    }
}

/// Probing a dead upstream: the wait before each next probe after `failures`
/// failed probes in a row, from the first HALF_OPEN probe on.
fn probe_waits(t: &Thresholds, interval_ms: u32, failures: usize) -> (Vec<u32>, BreakerWord) {
    let mut w = trip(0);
    let mut now = open_duration_ms(w, t);
    let mut waits = Vec::new();
    for _ in 0..failures {
        w = probe(w, false, now, t).next;
        let wait = probe_interval_ms(w, interval_ms, t);
        waits.push(wait);
        now += wait;
    }
    (waits, w)
}

#[test]
fn failed_probes_double_the_probe_interval_up_to_the_maximum_open_time() {
    let t = Thresholds {
        max_open_duration_ms: 6_000,
        ..T
    };
    let (waits, w) = probe_waits(&t, 500, 6);
    assert_eq!(waits, [1_000, 2_000, 4_000, 6_000, 6_000, 6_000]);
    assert_eq!((w.state(), w.reopens()), (State::HalfOpen, 6));
    // A success closes it, and a next outage probes at the interval again.
    let closed = probe(probe(w, true, 100_000, &t).next, true, 100_001, &t).next;
    assert_eq!((closed.state(), closed.reopens()), (State::Closed, 0));
    // No growth unless max_open_duration is above open_duration (the default).
    let (waits, _) = probe_waits(&T, 500, 4);
    assert_eq!(waits, [500; 4]);
    // An interval longer than the maximum is never shortened.
    let (waits, _) = probe_waits(&t, 10_000, 3);
    assert_eq!(waits, [10_000; 3]);
}

#[test]
fn probe_jitter_stays_within_its_percent_and_never_shortens() {
    let t = Thresholds {
        max_open_duration_ms: 600_000,
        open_jitter_pct: 10,
        ..T
    };
    for failures in 1..=12 {
        let (waits, _) = probe_waits(&t, 1_000, failures);
        let last = *waits.last().unwrap();
        let base = (1_000u32 << failures.min(15)).min(600_000);
        assert!(
            (base..=base + base / 10).contains(&last),
            "{failures}: {last} for {base}"
        );
    }
}

/// The kernel's `outcome_word` takes an outcome as `RatedOutcome::pack`: every
/// combination must come back as itself.
#[test]
fn an_outcome_packed_for_the_kernel_unpacks_as_itself() {
    let epochs = || std::iter::once(None).chain((0..=u8::MAX).map(Some));
    for success in [false, true] {
        for trial_epoch in epochs() {
            for rate_trips in epochs() {
                let r = RatedOutcome {
                    outcome: Outcome {
                        success,
                        trial_epoch,
                    },
                    rate_trips,
                };
                assert_eq!(
                    RatedOutcome::unpack(r.pack()),
                    r,
                    "{r:?} as {:#x}",
                    r.pack()
                );
            }
        }
    }
}

/// The kernel's admission functions return `Admission::pack`; the hooks act on
/// `Admission::unpack` of it, so every admission must come back as itself, and
/// a value no admission packs to must pass (fail open).
#[test]
fn an_admission_packed_for_the_kernel_unpacks_as_itself() {
    let mut all = vec![Admission::Pass, Admission::Reject, Admission::Ignore];
    all.extend((0..=u8::MAX).map(|epoch| Admission::Trial { epoch }));
    for a in all {
        assert_eq!(
            Admission::unpack(a.pack()),
            a,
            "{a:?} packed as {}",
            a.pack()
        );
    }
    for junk in [4, 0xff, 0x1_0004, !0xff] {
        assert_eq!(Admission::unpack(junk), Admission::Pass, "{junk:#x}");
    }
}

#[test]
fn a_per_address_upstreams_word_settles_closed_keeping_its_override() {
    let open = BreakerWord::pack(State::Open, 1234, 0, 3, 7);
    for mode in [
        Mode::Auto,
        Mode::ForceOpen,
        Mode::ForceClosed,
        Mode::Disabled,
    ] {
        let w = set_mode(open, mode).next;
        let step = settle_per_address(w);
        assert!(step.result, "{mode:?}");
        assert_eq!(step.next.state(), State::Closed, "{mode:?}");
        assert_eq!(step.next.mode(), mode, "{mode:?}");
        assert_eq!(step.next.epoch(), w.epoch().wrapping_add(1), "{mode:?}");
        assert_eq!((step.next.count(), step.next.reopens()), (0, 0), "{mode:?}");
    }
    let closed = set_mode(
        BreakerWord::pack(State::Closed, 0, 2, 0, 4),
        Mode::ForceOpen,
    )
    .next;
    let step = settle_per_address(closed);
    assert!(!step.result);
    assert_eq!(step.next, closed, "a CLOSED word is left as it is");
}
