use super::*;
use crate::{
    abi::{FallbackHop, FALLBACK_HAS_V4, FALLBACK_HAS_V6},
    machine::{set_mode, State},
};

const OPEN: BreakerWord = BreakerWord::pack(State::Open, 5, 0, 0, 1);
const HALF_OPEN: BreakerWord = BreakerWord::pack(State::HalfOpen, 5, 0, 1, 1);

fn address(flags: u32) -> FallbackHop {
    FallbackHop {
        upstream: FALLBACK_ADDRESS,
        flags,
        ..Default::default()
    }
}

fn upstream(id: u32, flags: u32) -> FallbackHop {
    FallbackHop {
        upstream: id,
        flags,
        ..Default::default()
    }
}

fn policy(hops: &[FallbackHop]) -> UpstreamPolicy {
    let mut p = UpstreamPolicy {
        fallback_count: hops.len() as u32,
        ..Default::default()
    };
    p.fallbacks[..hops.len()].copy_from_slice(hops);
    p
}

#[test]
fn a_hop_takes_redirected_connects_while_its_breaker_takes_its_own() {
    assert_eq!(hop_use(BreakerWord::CLOSED, false), HopUse::GoWatched);
    assert_eq!(hop_use(OPEN, false), HopUse::Skip);
    assert_eq!(hop_use(HALF_OPEN, false), HopUse::Skip);
    // Dry run turns nothing away, so it takes them, still watched.
    assert_eq!(hop_use(OPEN, true), HopUse::WouldSkip);
    assert_eq!(hop_use(BreakerWord::CLOSED, true), HopUse::GoWatched);
    let forced = |w, m| set_mode(w, m).next;
    assert_eq!(
        hop_use(forced(BreakerWord::CLOSED, Mode::ForceOpen), false),
        HopUse::Skip
    );
    assert_eq!(
        hop_use(forced(OPEN, Mode::ForceClosed), false),
        HopUse::GoWatched
    );
    // Disabled: as if breaker were not there, so neither skipped nor watched.
    assert_eq!(hop_use(forced(OPEN, Mode::Disabled), false), HopUse::Go);
}

#[test]
fn the_first_hop_of_the_family_whose_breaker_lets_it_through_is_chosen() {
    let p = policy(&[
        upstream(7, FALLBACK_HAS_V4 | FALLBACK_HAS_V6),
        address(FALLBACK_HAS_V6),
        upstream(8, FALLBACK_HAS_V4),
        address(FALLBACK_HAS_V4),
    ]);
    let open = |ids: &'static [u32]| {
        move |id: u32| {
            if ids.contains(&id) {
                HopUse::Skip
            } else {
                HopUse::GoWatched
            }
        }
    };
    assert_eq!(choose(&p, true, 0, open(&[])), Some((0, HopUse::GoWatched)));
    assert_eq!(
        choose(&p, true, 0, open(&[7])),
        Some((2, HopUse::GoWatched))
    );
    assert_eq!(choose(&p, true, 0, open(&[7, 8])), Some((3, HopUse::Go)));
    assert_eq!(choose(&p, false, 0, open(&[7, 8])), Some((1, HopUse::Go)));
    assert_eq!(
        choose(&p, false, 0, open(&[])),
        Some((0, HopUse::GoWatched))
    );
}

#[test]
fn every_hop_open_or_of_the_other_family_leaves_none() {
    let p = policy(&[upstream(7, FALLBACK_HAS_V4), address(FALLBACK_HAS_V6)]);
    assert_eq!(choose(&p, true, 0, |_| HopUse::Skip), None);
    assert_eq!(choose(&policy(&[]), true, 0, |_| HopUse::Go), None);
}

#[test]
fn hops_past_the_count_are_never_tried_nor_judged() {
    let mut p = policy(&[upstream(7, FALLBACK_HAS_V4)]);
    p.fallbacks[1] = address(FALLBACK_HAS_V4);
    let mut judged = Vec::new();
    let chosen = choose(&p, true, 0, |id| {
        judged.push(id);
        HopUse::Skip
    });
    assert_eq!(chosen, None);
    assert_eq!(judged, [7]);
    // A count beyond the array is bounded by it.
    p.fallback_count = u32::MAX;
    assert_eq!(choose(&p, true, 0, |_| HopUse::Skip), Some((1, HopUse::Go)));
}

#[test]
fn a_hop_use_survives_its_integer_form_and_stray_integers_never_fail_a_connect() {
    for how in [
        HopUse::Skip,
        HopUse::Go,
        HopUse::GoWatched,
        HopUse::WouldSkip,
    ] {
        assert_eq!(HopUse::from_u32(how.to_u32()), how);
    }
    for stray in [4, 0xff, 0x1_00] {
        assert_eq!(HopUse::from_u32(stray), HopUse::Go, "{stray:#x}");
    }
}

#[test]
fn steering_picks_a_sibling_that_takes_it_before_the_rest_in_order() {
    let p = UpstreamPolicy {
        steer_count: 3,
        ..policy(&[
            upstream(11, FALLBACK_HAS_V4),
            upstream(12, FALLBACK_HAS_V4),
            upstream(13, FALLBACK_HAS_V4),
            address(FALLBACK_HAS_V4),
        ])
    };
    let healthy = |open: &'static [u32]| {
        move |id: u32| {
            if open.contains(&id) {
                HopUse::Skip
            } else {
                HopUse::GoWatched
            }
        }
    };
    // Every sibling healthy: the spread picks which takes the connect.
    let mut seen: Vec<usize> = (0..64u32)
        .map(|k| {
            choose(&p, true, k.wrapping_mul(0x9e37_79b9), healthy(&[]))
                .unwrap()
                .0
        })
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, [0, 1, 2], "each sibling is picked by some spread");
    // An open sibling is never picked.
    for k in 0..64u32 {
        let (i, _) = choose(&p, true, k.wrapping_mul(0x9e37_79b9), healthy(&[12])).unwrap();
        assert!(i == 0 || i == 2, "{i}");
    }
    // Only when every sibling is open does the address after them take it.
    assert_eq!(
        choose(&p, true, 2, healthy(&[11, 12, 13])),
        Some((3, HopUse::Go))
    );
    // Only open siblings are never chosen, whatever the spread.
    for spread in 0..20 {
        let (i, _) = choose(&p, true, spread, healthy(&[11, 13])).unwrap();
        assert_eq!(i, 1);
    }
    // A steer count past the hops is ignored: plain order.
    let q = UpstreamPolicy {
        steer_count: 99,
        ..p
    };
    assert_eq!(
        choose(&q, true, 2, healthy(&[])),
        Some((0, HopUse::GoWatched))
    );
}

/// Whatever is open, each sibling that takes connects gets the same share of
/// random spreads: no sibling inherits an open neighbour's share.
#[test]
fn steering_shares_evenly_among_the_siblings_that_take_connects() {
    let p = UpstreamPolicy {
        steer_count: 4,
        ..policy(&[
            upstream(11, FALLBACK_HAS_V4),
            upstream(12, FALLBACK_HAS_V4),
            upstream(13, FALLBACK_HAS_V6),
            upstream(14, FALLBACK_HAS_V4),
        ])
    };
    const DRAWS: u32 = 60_000;
    for open in [&[][..], &[11], &[12], &[14], &[11, 14]] {
        let mut shares = [0u32; 4];
        // A xorshift stream: the spreads a random source gives.
        let mut x = 0x1234_5678u32;
        for _ in 0..DRAWS {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let judge = |id: u32| {
                if open.contains(&id) {
                    HopUse::Skip
                } else {
                    HopUse::GoWatched
                }
            };
            let (i, _) = choose(&p, true, x, judge).unwrap();
            shares[i] += 1;
        }
        // Hop 2 is IPv6 only: never picked for an IPv4 connect.
        assert_eq!(shares[2], 0);
        let takers: Vec<u32> = [0usize, 1, 3]
            .into_iter()
            .filter(|&i| !open.contains(&(11 + i as u32)))
            .map(|i| shares[i])
            .collect();
        let fair = DRAWS / takers.len() as u32;
        assert!(
            takers.iter().all(|&n| n.abs_diff(fair) < DRAWS / 50),
            "open {open:?}: {shares:?}, each should be about {fair}"
        );
        assert!(open.iter().all(|&id| shares[(id - 11) as usize] == 0));
    }
}
