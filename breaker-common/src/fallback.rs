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
/// service's other endpoints) are tried from the one `spread` picks on, round,
/// so that a dead endpoint's connects spread over the healthy ones; the rest in
/// order after them. None: every hop is open or of the other family.
#[inline(always)]
pub fn choose(
    p: &UpstreamPolicy,
    v4: bool,
    spread: u32,
    mut judge: impl FnMut(u32) -> HopUse,
) -> Option<(usize, HopUse)> {
    let steer = if p.steer_count as usize <= MAX_FALLBACKS {
        p.steer_count
    } else {
        0
    };
    let start = if steer > 0 { spread % steer } else { 0 };
    let mut j = 0;
    while j < MAX_FALLBACKS {
        if j as u32 >= p.fallback_count {
            break;
        }
        let i = if (j as u32) < steer {
            let k = start + j as u32;
            (if k >= steer { k - steer } else { k }) as usize
        } else {
            j
        };
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
                return Some((i, how));
            }
        }
        j += 1;
    }
    None
}

#[cfg(test)]
mod tests;
