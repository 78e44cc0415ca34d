//! `count`: which failed connects move a breaker toward opening. The others are
//! still counted in the metrics.
use serde::{de, Deserialize, Deserializer};

/// The failures an upstream counts, as a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountSet {
    pub refused: bool,
    pub timeout: bool,
    pub unreachable: bool,
    /// Slow connects (`slow_connect_threshold`): successes, counted as failures.
    pub slow: bool,
}

impl CountSet {
    /// The default: every failure the kernel reports (not slow connects, which
    /// succeeded).
    pub const ALL: CountSet = CountSet {
        refused: true,
        timeout: true,
        unreachable: true,
        slow: false,
    };

    /// The set with slow connects left out; the default when that leaves nothing
    /// (a set of "slow" alone, inherited where slow connects are not measured).
    pub fn without_slow(self) -> CountSet {
        let failures = CountSet {
            slow: false,
            ..self
        };
        if failures.names().is_empty() {
            CountSet::ALL
        } else {
            failures
        }
    }

    /// The names, in the order the README lists them.
    pub fn names(self) -> Vec<&'static str> {
        [
            (self.refused, "refused"),
            (self.timeout, "timeout"),
            (self.unreachable, "unreachable"),
            (self.slow, "slow"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

impl Default for CountSet {
    fn default() -> Self {
        CountSet::ALL
    }
}

impl<'de> Deserialize<'de> for CountSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        let mut set = CountSet {
            refused: false,
            timeout: false,
            unreachable: false,
            slow: false,
        };
        for name in &names {
            match name.as_str() {
                "refused" => set.refused = true,
                "timeout" => set.timeout = true,
                "unreachable" => set.unreachable = true,
                "slow" => set.slow = true,
                other => {
                    return Err(de::Error::custom(format!(
                        "{other:?} is not an outcome: count names \"refused\", \"timeout\", \"unreachable\" or \"slow\""
                    )))
                }
            }
        }
        if set.names().is_empty() {
            return Err(de::Error::custom(
                "counts nothing, so the breaker would never open: name at least one of \"refused\", \"timeout\", \"unreachable\", \"slow\"",
            ));
        }
        Ok(set)
    }
}
