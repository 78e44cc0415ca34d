use super::*;

/// A simulated clock in ms and buckets of 1 s (a 10 s window).
const WIDTH: u32 = 1_000;

/// The breaker's epoch in most tests.
const E: u8 = 3;

fn record(w: &mut RateWindow, clock: u64, failure: bool) {
    record_in(w, clock, E, failure);
}

fn record_in(w: &mut RateWindow, clock: u64, epoch: u8, failure: bool) {
    let slot = slot_of(clock, WIDTH);
    let i = index_of(slot);
    w.buckets[i] = add(w.buckets[i], slot, epoch, failure);
}

#[test]
fn a_bucket_round_trips_and_saturates() {
    let b = Bucket {
        slot: 0xbe_efed,
        epoch: 0xa5,
        attempts: 7,
        failures: 3,
    };
    assert_eq!(Bucket::unpack(b.pack()), b);
    let full = Bucket {
        slot: 1,
        epoch: 0,
        attempts: 100_000,
        failures: 100_000,
    };
    assert_eq!(
        Bucket::unpack(full.pack()),
        Bucket {
            slot: 1,
            epoch: 0,
            attempts: BUCKET_MAX,
            failures: BUCKET_MAX
        }
    );
    // Slots are kept modulo 2^24.
    assert_eq!(
        Bucket::unpack(
            Bucket {
                slot: 1 << 24 | 5,
                ..b
            }
            .pack()
        )
        .slot,
        5
    );
    // Failures never exceed attempts.
    let odd = Bucket {
        slot: 1,
        epoch: 0,
        attempts: 2,
        failures: 5,
    };
    assert_eq!(Bucket::unpack(odd.pack()).failures, 2);
}

#[test]
fn outcomes_in_one_slot_add_up() {
    let mut w = RateWindow::default();
    for i in 0..10 {
        record(&mut w, 5_000 + i * 10, i % 2 == 0);
    }
    assert_eq!(tally(&w, slot_of(5_100, WIDTH), E), (10, 5));
}

#[test]
fn the_window_holds_exactly_the_last_ten_slots() {
    let mut w = RateWindow::default();
    // One failure per second from t = 0 to t = 9.999 s.
    for s in 0..10u64 {
        record(&mut w, s * 1_000 + 500, true);
    }
    assert_eq!(tally(&w, 9, E), (10, 10));
    // At slot 10 the bucket of slot 0 is out of the window, though not yet reused.
    assert_eq!(tally(&w, 10, E), (9, 9));
    assert_eq!(tally(&w, 19, E), (0, 0));
    // A success at slot 10 takes over slot 0's bucket: the old failure is gone.
    record(&mut w, 10_000, false);
    assert_eq!(Bucket::unpack(w.buckets[0]).slot, 10);
    assert_eq!(tally(&w, 10, E), (10, 9));
}

#[test]
fn a_bucket_of_an_old_slot_is_restarted_not_added_to() {
    let mut w = RateWindow::default();
    record(&mut w, 3_000, true);
    record(&mut w, 3_100, true);
    // Ten slots later the same bucket holds slot 13: it starts from this outcome.
    record(&mut w, 13_000, false);
    let b = Bucket::unpack(w.buckets[3]);
    assert_eq!((b.slot, b.attempts, b.failures), (13, 1, 0));
    // So is a bucket of another epoch (the breaker closed again, or was reset).
    record_in(&mut w, 13_100, E + 1, true);
    let b = Bucket::unpack(w.buckets[3]);
    assert_eq!((b.epoch, b.attempts, b.failures), (E + 1, 1, 1));
}

#[test]
fn an_empty_window_counts_nothing_even_at_slot_zero() {
    let w = RateWindow::default();
    assert_eq!(tally(&w, 0, E), (0, 0));
    assert_eq!(tally(&w, 5, E), (0, 0));
}

#[test]
fn slots_wrap_at_2_pow_24_and_the_window_counts_across_the_wrap() {
    let mut w = RateWindow::default();
    let before_wrap = (1u32 << SLOT_BITS) - 2;
    let i = index_of(before_wrap);
    w.buckets[i] = add(w.buckets[i], before_wrap, E, true);
    // Slots 2^24 - 2 and 0 are 2 apart across the wrap: still in the window.
    assert_eq!(tally(&w, 0, E), (1, 1));
    assert_eq!(tally(&w, 20, E), (0, 0));
}

#[test]
fn only_the_breakers_current_epoch_counts() {
    let mut w = RateWindow::default();
    for i in 0..10 {
        record_in(&mut w, i * 100, E, true);
    }
    assert_eq!(tally(&w, 0, E), (10, 10));
    // Closed again (HALF_OPEN came between) or reset: a new epoch, an empty window.
    assert_eq!(tally(&w, 0, E + 1), (0, 0));
}

#[test]
fn a_full_bucket_keeps_its_failure_rate() {
    for (connects, every) in [
        (120_000u32, 20u32),
        (300_000, 20),
        (200_000, 4),
        (600_000, 10),
    ] {
        let mut bucket = 0u64;
        for n in 0..connects {
            bucket = add(bucket, 7, E, n % every == 0);
        }
        let b = Bucket::unpack(bucket);
        let seen = f64::from(b.failures) / f64::from(b.attempts);
        let real = 1.0 / f64::from(every);
        assert!(
            (seen - real).abs() < 0.01,
            "{connects} connects at {real}: the bucket says {seen} ({b:?})"
        );
        assert!(b.attempts <= BUCKET_MAX);
    }
}

#[test]
fn the_rate_trips_at_the_threshold_with_enough_volume() {
    // 50 %: 10 of 20 trips, 9 of 20 does not.
    assert!(exceeded(20, 10, 50, 20));
    assert!(!exceeded(20, 9, 50, 20));
    // Below the minimum volume nothing trips, even at 100 %.
    assert!(!exceeded(19, 19, 50, 20));
    // Off.
    assert!(!exceeded(100, 100, 0, 1));
    // 100 % needs every attempt to fail.
    assert!(exceeded(5, 5, 100, 1));
    assert!(!exceeded(5, 4, 100, 1));
    // No attempts never trips, whatever the minimum.
    assert!(!exceeded(0, 0, 1, 0));
    // No overflow at the largest counts.
    assert!(exceeded(u32::MAX, u32::MAX, 100, 1));
}

#[test]
fn a_half_failing_upstream_trips_on_rate_while_it_never_fails_twice_in_a_row() {
    let mut w = RateWindow::default();
    let mut consecutive = 0u32;
    let mut max_consecutive = 0u32;
    let mut tripped_at = None;
    for i in 0..40u64 {
        let failure = i % 2 == 1;
        let clock = i * 100;
        record(&mut w, clock, failure);
        consecutive = if failure { consecutive + 1 } else { 0 };
        max_consecutive = max_consecutive.max(consecutive);
        let (a, f) = tally(&w, slot_of(clock, WIDTH), E);
        if failure && tripped_at.is_none() && exceeded(a, f, 50, 20) {
            tripped_at = Some(i);
        }
    }
    assert_eq!(max_consecutive, 1);
    // The 20th attempt is the 10th failure: 50 % of the minimum volume.
    assert_eq!(tripped_at, Some(19));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every outcome added is counted exactly once while its slot is in the
        /// window, whatever the order of clocks (monotonic, with gaps).
        #[test]
        fn each_outcome_counts_once_in_its_window(
            steps in proptest::collection::vec((0u64..3_000, any::<bool>()), 1..200)
        ) {
            let mut w = RateWindow::default();
            let mut clock = 0u64;
            let mut log: Vec<(u32, bool)> = Vec::new();
            for (gap, failure) in steps {
                clock += gap;
                let slot = slot_of(clock, WIDTH);
                record(&mut w, clock, failure);
                log.push((slot, failure));
                let in_window: Vec<_> = log
                    .iter()
                    .filter(|(s, _)| slot.wrapping_sub(*s) < BUCKETS as u32)
                    .collect();
                let want = (
                    in_window.len() as u32,
                    in_window.iter().filter(|(_, f)| *f).count() as u32,
                );
                prop_assert_eq!(tally(&w, slot, E), want);
            }
        }
    }
}
