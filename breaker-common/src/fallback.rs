//! Which of an upstream's ordered fallbacks a rejected connect goes to: the first
//! hop of the connect's family that takes it. An address always does; another
//! upstream does while its breaker lets its own connects through (read from its
//! word, never written), and the connect is then that upstream's, watched and
//! counted by its breaker. A hop whose breaker is OPEN or HALF_OPEN is passed
//! by: it makes no trial of a redirected connect (its probes, or its own
//! applications' trials, close it).
use crate::{
    abi::{UpstreamPolicy, FALLBACK_ADDRESS, MAX_FALLBACKS},
    machine::{turns_away, BreakerWord, Mode},
};

/// What a hop does with a rejected connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HopUse {
    /// Its upstream turns connects away: try the next hop.
    Skip,
    /// Taken, not watched: an address, or an upstream whose breaker is disabled.
    Go,
    /// Taken, and watched as a connect of the hop's upstream.
    GoWatched,
    /// Taken and watched, though its upstream would have turned it away: dry run
    /// (counted in the hop's `would_reject`).
    WouldSkip,
}

impl HopUse {
    /// As one integer, for a kernel function that returns it.
    #[inline(always)]
    pub const fn to_u32(self) -> u32 {
        match self {
            HopUse::Skip => 0,
            HopUse::Go => 1,
            HopUse::GoWatched => 2,
            HopUse::WouldSkip => 3,
        }
    }

    /// The inverse of [`HopUse::to_u32`]; anything else is taken unwatched
    /// (never a reason to fail a connect).
    #[inline(always)]
    pub const fn from_u32(v: u32) -> HopUse {
        match v {
            0 => HopUse::Skip,
            2 => HopUse::GoWatched,
            3 => HopUse::WouldSkip,
            _ => HopUse::Go,
        }
    }
}

/// What a hop naming an upstream does, from its breaker word and whether it is
/// in dry run (which turns nothing away, so it takes redirected connects too,
/// counted as it would have turned them away): taken while the breaker lets its
/// own connects through.
#[inline(always)]
pub fn hop_use(word: BreakerWord, dry_run: bool) -> HopUse {
    if word.mode() == Mode::Disabled {
        HopUse::Go
    } else if !turns_away(word) {
        HopUse::GoWatched
    } else if dry_run {
        HopUse::WouldSkip
    } else {
        HopUse::Skip
    }
}

/// The index of the first of `p`'s fallbacks that serves the family (`v4`) and
/// does not skip the connect, with what it does; `judge` says what a hop naming
/// an upstream does (by the upstream's id). The first `p.steer_count` hops (a
/// service's other endpoints) come first: one of those that take the connect,
/// picked alike by `spread` (a random number), so that a dead endpoint's
/// connects spread over the healthy ones evenly; the rest in order after them.
/// None: every hop is open or of the other family.
///
/// One pass, each hop judged once, no array (the packet path's stack and
/// verifier budget have no room for more): the `k`th steering hop that takes
/// the connect (hop `i`) replaces the pick when the `i`th byte of `spread` is a
/// multiple of `k` (reservoir sampling), which gives each of `n` takers `1/n`,
/// within a third of a percent for three.
#[inline(always)]
pub fn choose(
    p: &UpstreamPolicy,
    v4: bool,
    spread: u32,
    mut judge: impl FnMut(u32) -> HopUse,
) -> Option<(usize, HopUse)> {
    let steer = if p.steer_count as usize <= MAX_FALLBACKS {
        p.steer_count as usize
    } else {
        0
    };
    let mut picked: Option<(usize, HopUse)> = None;
    let mut takers = 0u32;
    let mut i = 0;
    while i < MAX_FALLBACKS {
        if i as u32 >= p.fallback_count {
            break;
        }
        if i >= steer && picked.is_some() {
            break;
        }
        let Some(hop) = p.fallbacks.get(i) else {
            break;
        };
        if hop.serves(v4) {
            let how = if hop.upstream == FALLBACK_ADDRESS {
                HopUse::Go
            } else {
                judge(hop.upstream)
            };
            if how != HopUse::Skip {
                if i >= steer {
                    return Some((i, how));
                }
                // `i` is below 4, so the shift is too; `checked_rem` keeps a
                // division by zero's panic (which the verifier refuses) out.
                let byte = (spread >> (8 * i as u32)) & 0xff;
                takers += 1;
                if byte.checked_rem(takers) == Some(0) {
                    picked = Some((i, how));
                }
            }
        }
        i += 1;
    }
    picked
}

#[cfg(test)]
mod tests;
