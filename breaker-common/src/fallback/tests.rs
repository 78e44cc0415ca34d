use super::*;
use crate::{
    abi::{FallbackHop, ServiceEndpoints, FALLBACK_HAS_V4, FALLBACK_HAS_V6, MAX_SERVICE_ENDPOINTS},
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
    assert_eq!(choose(&p, true, open(&[])), Some((0, HopUse::GoWatched)));
    assert_eq!(choose(&p, true, open(&[7])), Some((2, HopUse::GoWatched)));
    assert_eq!(choose(&p, true, open(&[7, 8])), Some((3, HopUse::Go)));
    assert_eq!(choose(&p, false, open(&[7, 8])), Some((1, HopUse::Go)));
    assert_eq!(choose(&p, false, open(&[])), Some((0, HopUse::GoWatched)));
}

#[test]
fn every_hop_open_or_of_the_other_family_leaves_none() {
    let p = policy(&[upstream(7, FALLBACK_HAS_V4), address(FALLBACK_HAS_V6)]);
    assert_eq!(choose(&p, true, |_| HopUse::Skip), None);
    assert_eq!(choose(&policy(&[]), true, |_| HopUse::Go), None);
}

#[test]
fn hops_past_the_count_are_never_tried_nor_judged() {
    let mut p = policy(&[upstream(7, FALLBACK_HAS_V4)]);
    p.fallbacks[1] = address(FALLBACK_HAS_V4);
    let mut judged = Vec::new();
    let chosen = choose(&p, true, |id| {
        judged.push(id);
        HopUse::Skip
    });
    assert_eq!(chosen, None);
    assert_eq!(judged, [7]);
    // A count beyond the array is bounded by it.
    p.fallback_count = u32::MAX;
    assert_eq!(choose(&p, true, |_| HopUse::Skip), Some((1, HopUse::Go)));
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

/// The other endpoint of `service` that takes a connect to endpoint `me`, as
/// the kernel picks it (the same [`Steer`], an endpoint at a time).
fn steer(
    service: &ServiceEndpoints,
    me: u32,
    v4: bool,
    spread: u32,
    mut judge: impl FnMut(u32) -> HopUse,
) -> Option<(usize, HopUse)> {
    let mut pick = Steer::new(me, v4, spread);
    let count = (service.count as usize).min(MAX_SERVICE_ENDPOINTS);
    for (j, hop) in service.hops[..count].iter().enumerate() {
        pick.consider(j as u32, hop, &mut judge);
    }
    pick.picked()
}

fn service(hops: &[FallbackHop]) -> ServiceEndpoints {
    let mut s = ServiceEndpoints {
        count: hops.len() as u32,
        ..Default::default()
    };
    s.hops[..hops.len()].copy_from_slice(hops);
    s
}

fn healthy(open: &[u32]) -> impl FnMut(u32) -> HopUse + '_ {
    move |id: u32| {
        if open.contains(&id) {
            HopUse::Skip
        } else {
            HopUse::GoWatched
        }
    }
}

#[test]
fn steering_picks_another_endpoint_that_takes_it_never_itself_nor_an_open_one() {
    // Endpoint 12 is the one whose breaker rejects.
    let s = service(&[
        upstream(11, FALLBACK_HAS_V4),
        upstream(12, FALLBACK_HAS_V4),
        upstream(13, FALLBACK_HAS_V4),
    ]);
    let mut seen: Vec<usize> = (0..64u32)
        .map(|k| {
            steer(&s, 12, true, k.wrapping_mul(0x9e37_79b9), healthy(&[]))
                .unwrap()
                .0
        })
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, [0, 2], "each other endpoint is picked by some spread");
    for spread in 0..64 {
        assert_eq!(
            steer(&s, 12, true, spread, healthy(&[13])),
            Some((0, HopUse::GoWatched))
        );
    }
    // Every other endpoint open, or of the other family: none.
    assert_eq!(steer(&s, 12, true, 7, healthy(&[11, 13])), None);
    assert_eq!(steer(&s, 12, false, 7, healthy(&[])), None);
    // A count past the array is bounded by it.
    let mut big = s;
    big.count = u32::MAX;
    assert!(steer(&big, 12, true, 7, healthy(&[])).is_some());
    // Endpoint itself never judged; an address (never written) never picked.
    let mut judged = Vec::new();
    let odd = service(&[upstream(12, FALLBACK_HAS_V4), address(FALLBACK_HAS_V4)]);
    assert_eq!(
        steer(&odd, 12, true, 1, |id| {
            judged.push(id);
            HopUse::Go
        }),
        None
    );
    assert!(judged.is_empty());
    // Endpoints past the count are never considered.
    let mut short = service(&[upstream(12, FALLBACK_HAS_V4), upstream(13, FALLBACK_HAS_V4)]);
    assert_eq!(
        steer(&short, 12, true, 1, |_| HopUse::Go),
        Some((1, HopUse::Go))
    );
    short.count = 1;
    assert_eq!(steer(&short, 12, true, 1, |_| HopUse::Go), None);
}

/// Whatever is open, each endpoint that takes connects gets the same share of
/// random spreads, for a service of every size up to the most there may be:
/// no endpoint inherits an open neighbour's share.
#[test]
fn steering_shares_evenly_among_the_endpoints_that_take_connects() {
    const DRAWS: u32 = 64_000;
    for n in [3usize, 10, MAX_SERVICE_ENDPOINTS] {
        let hops: Vec<FallbackHop> = (0..n as u32)
            .map(|i| {
                // Every fifth endpoint is IPv6 only.
                let family = if i % 5 == 4 {
                    FALLBACK_HAS_V6
                } else {
                    FALLBACK_HAS_V4
                };
                upstream(100 + i, family)
            })
            .collect();
        let s = service(&hops);
        let me = 100;
        let opens: [&[u32]; 3] = [&[], &[101], &[101, 102, 103]];
        for open in opens {
            let takers: Vec<usize> = (0..n)
                .filter(|&j| {
                    let id = 100 + j as u32;
                    id != me && !open.contains(&id) && j % 5 != 4
                })
                .collect();
            if takers.is_empty() {
                assert_eq!(steer(&s, me, true, 1, healthy(open)), None);
                continue;
            }
            let mut shares = vec![0u32; n];
            // A xorshift stream: the spreads a random source gives.
            let mut x = 0x1234_5678u32;
            for _ in 0..DRAWS {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let (j, _) = steer(&s, me, true, x, healthy(open)).unwrap();
                shares[j] += 1;
            }
            let fair = DRAWS / takers.len() as u32;
            for (j, &got) in shares.iter().enumerate() {
                if takers.contains(&j) {
                    // Six standard deviations of a fair draw's count.
                    let bound = 6 * (fair as f64).sqrt() as u32;
                    assert!(
                        got.abs_diff(fair) < bound,
                        "{n} endpoints, open {open:?}: endpoint {j} got {got}, about {fair} expected"
                    );
                } else {
                    assert_eq!(got, 0, "{n} endpoints, open {open:?}: endpoint {j} picked");
                }
            }
        }
    }
}
