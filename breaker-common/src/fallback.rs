//! Which of an upstream's ordered fallbacks a rejected connect goes to: the first
//! hop of the connect's family that may take it. An address always may; another
//! upstream may while its own breaker lets its own connects through, and the
//! connect is then that upstream's, watched and counted by its breaker.
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
}

/// What a hop naming an upstream does, given its breaker word and whether it is
/// in dry run (which turns nothing away, so it takes redirected connects too).
#[inline(always)]
pub fn hop_use(word: BreakerWord, dry_run: bool) -> HopUse {
    if word.mode() == Mode::Disabled {
        HopUse::Go
    } else if dry_run || !turns_away(word) {
        HopUse::GoWatched
    } else {
        HopUse::Skip
    }
}

/// The index of the first of `p`'s fallbacks that serves the family (`v4`) and
/// takes the connect, with how; `judge` says what a hop naming an upstream does
/// (by the upstream's id). None: every hop is open or of the other family.
#[inline(always)]
pub fn choose(
    p: &UpstreamPolicy,
    v4: bool,
    mut judge: impl FnMut(u32) -> HopUse,
) -> Option<(usize, HopUse)> {
    let mut i = 0;
    while i < MAX_FALLBACKS {
        if i as u32 >= p.fallback_count {
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
                return Some((i, how));
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests;
