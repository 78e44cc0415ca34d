//! The host's overall health, one word: what `/status` reports and `breaker top`
//! shows in its footer, computed in one place so that the two never disagree.
use breaker_common::machine::{Mode, State};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Every upstream closed (or none configured).
    Healthy,
    /// Some upstream not closed.
    Degraded,
    /// No configured upstream closed: each open, or half-open (a dead upstream is
    /// half-open for as long as its probes fail), as the alert rules count it.
    Critical,
}

impl Health {
    /// From each upstream's mode and state. An override decides what connects
    /// see: forced open counts as open, forced closed and disabled as closed.
    pub fn of(breakers: impl IntoIterator<Item = (Mode, State)>) -> Health {
        let (mut total, mut not_closed) = (0usize, 0usize);
        for (mode, state) in breakers {
            let seen = match mode {
                Mode::ForceOpen => State::Open,
                Mode::ForceClosed | Mode::Disabled => State::Closed,
                Mode::Auto => state,
            };
            total += 1;
            not_closed += usize::from(seen != State::Closed);
        }
        if total > 0 && not_closed == total {
            Health::Critical
        } else if not_closed > 0 {
            Health::Degraded
        } else {
            Health::Healthy
        }
    }

    /// From modes and states by name, as a `status` answer has them.
    pub fn of_names<'a>(breakers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Health {
        Health::of(
            breakers
                .into_iter()
                .map(|(mode, state)| (mode_named(mode), state_named(state))),
        )
    }

    pub const fn name(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Critical => "critical",
        }
    }
}

/// A mode the daemon names; a name this build does not know (a newer daemon)
/// is taken as automatic, so the state decides.
fn mode_named(name: &str) -> Mode {
    Mode::ALL
        .into_iter()
        .find(|m| m.name() == name)
        .unwrap_or(Mode::Auto)
}

/// A state the daemon names; an unknown name counts as not closed rather than
/// hiding a problem.
fn state_named(name: &str) -> State {
    [State::Closed, State::Open, State::HalfOpen]
        .into_iter()
        .find(|s| s.name() == name)
        .unwrap_or(State::HalfOpen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_counts_overrides_as_what_connects_see() {
        use Mode::*;
        use State::*;
        assert_eq!(Health::of([]), Health::Healthy);
        assert_eq!(
            Health::of([(Auto, Closed), (Auto, Closed)]),
            Health::Healthy
        );
        assert_eq!(
            Health::of([(Auto, Closed), (Auto, HalfOpen)]),
            Health::Degraded
        );
        assert_eq!(Health::of([(Auto, Open), (Auto, Open)]), Health::Critical);
        // A dead upstream is half-open while its probes fail: still nothing closed.
        assert_eq!(
            Health::of([(Auto, Open), (Auto, HalfOpen)]),
            Health::Critical
        );
        assert_eq!(Health::of([(ForceOpen, Closed)]), Health::Critical);
        assert_eq!(
            Health::of([(Disabled, Open), (Auto, Closed)]),
            Health::Healthy
        );
        assert_eq!(
            Health::of([(ForceClosed, Open), (Auto, Open)]),
            Health::Degraded
        );
    }
}
