//! Which of an upstream's ordered fallbacks a rejected connect goes to: the first
//! hop of the connect's family that takes it. An address always does; another
//! upstream does while its breaker lets its own connects through (read from its
//! word, never written), and the connect is then that upstream's, watched and
//! counted by its breaker. A hop whose breaker is OPEN or HALF_OPEN is passed
//! by: it makes no trial of a redirected connect (its probes, or its own
//! applications' trials, close it). An endpoint of a `per_endpoint` service
//! first steers the connect to another endpoint of its service ([`Steer`]).
use crate::{
    abi::{FallbackHop, UpstreamPolicy, FALLBACK_ADDRESS, MAX_FALLBACKS},
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
/// an upstream does (by the upstream's id). None: every hop is open or of the
/// other family. A service's endpoints come before these ([`Steer`]).
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

/// [`Steer::picked`]: no endpoint picked yet.
const NOT_PICKED: u32 = u32::MAX;

/// Which other endpoint of a `per_endpoint` service takes a connect to endpoint
/// `me` while its breaker rejects, built one endpoint at a time (the kernel
/// walks a service's endpoints in a `bpf_loop`, this its state between
/// calls): one picked at random among those that serve the family and take
/// connects, each with the same chance, so a dead endpoint's connects spread
/// evenly over the healthy and no endpoint inherits an open neighbour's share.
/// Reservoir sampling: the `k`th endpoint that takes the connect replaces the
/// pick with chance `1/k`, drawn from a xorshift stream seeded by a random
/// number. Integers only: it lives on the kernel's stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steer {
    me: u32,
    v4: u32,
    random: u32,
    takers: u32,
    picked: u32,
    how: u32,
}

impl Steer {
    /// A pick for a connect of the family `v4` to endpoint `me`, drawn with `spread`.
    #[inline(always)]
    pub const fn new(me: u32, v4: bool, spread: u32) -> Steer {
        Steer {
            me,
            v4: v4 as u32,
            // A xorshift stream never leaves 0.
            random: if spread == 0 { 0x9e37_79b9 } else { spread },
            takers: 0,
            picked: NOT_PICKED,
            how: 0,
        }
    }

    /// Considers the service's endpoint `j`, `hop`; `judge` says what it does
    /// with the connect (by its breaker's id), asked only of an endpoint of the
    /// family other than `me`.
    #[inline(always)]
    pub fn consider(&mut self, j: u32, hop: &FallbackHop, judge: impl FnOnce(u32) -> HopUse) {
        if hop.upstream == self.me || hop.upstream == FALLBACK_ADDRESS || !hop.serves(self.v4 != 0)
        {
            return;
        }
        let how = judge(hop.upstream);
        if how == HopUse::Skip {
            return;
        }
        self.takers += 1;
        let mut x = self.random;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.random = x;
        // `checked_rem` keeps a division by zero's panic (which the verifier
        // refuses) out; `takers` is never zero here.
        if x.checked_rem(self.takers) == Some(0) {
            self.picked = j;
            self.how = how.to_u32();
        }
    }

    /// The endpoint picked (its index among the service's) and what it does
    /// with the connect; None when no endpoint takes it.
    #[inline(always)]
    pub const fn picked(&self) -> Option<(usize, HopUse)> {
        if self.picked == NOT_PICKED {
            None
        } else {
            Some((self.picked as usize, HopUse::from_u32(self.how)))
        }
    }
}

#[cfg(test)]
mod tests;
