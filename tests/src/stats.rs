//! Summaries of latency samples, for the tests, the demo and the benchmarks.

#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub n: usize,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Summary {
        if values.is_empty() {
            return Summary::default();
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let at =
            |p: f64| v[(((p / 100.0) * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
        Summary {
            n: v.len(),
            p25: at(25.0),
            p50: at(50.0),
            p75: at(75.0),
            p99: at(99.0),
            max: at(100.0),
        }
    }
}

/// Where a handful of per-round (or per-pair) figures lie: the median and the range,
/// plus the quartiles for when one round is an outlier.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spread {
    pub n: usize,
    pub min: f64,
    pub p25: f64,
    pub median: f64,
    pub p75: f64,
    pub max: f64,
}

impl Spread {
    /// Quantiles interpolate between the two nearest values: with a handful of
    /// rounds, the nearest-rank rule of [`Summary`] would report the larger of the
    /// middle two as the median.
    pub fn of(values: &[f64]) -> Spread {
        let v = sorted(values);
        let Some((&min, &max)) = v.first().zip(v.last()) else {
            return Spread::default();
        };
        let at = |q: f64| {
            let pos = q * (v.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
        };
        Spread {
            n: v.len(),
            min,
            p25: at(0.25),
            median: at(0.5),
            p75: at(0.75),
            max,
        }
    }

    /// Half the range: how far apart the rounds themselves lie, the noise a
    /// difference has to clear before it means anything.
    pub fn half_range(&self) -> f64 {
        (self.max - self.min) / 2.0
    }

    /// True when `value` cannot be told from zero: within ± half the range.
    pub fn within_noise(&self, value: f64) -> bool {
        value.abs() <= self.half_range()
    }
}

/// `us` in a readable unit.
pub fn fmt_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

/// Sorted copy, for CDF plots.
pub fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_sample() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&v);
        assert_eq!((s.n, s.p50, s.p99, s.max), (100, 51.0, 99.0, 100.0));
        assert_eq!(fmt_us(1500.0), "1.50 ms");
        assert_eq!(Summary::of(&[]).n, 0);
    }

    #[test]
    fn spread_of_paired_differences() {
        let s = Spread::of(&[-1.0, 0.5, 2.0, 1.0, 3.0]);
        assert_eq!((s.min, s.p25, s.median, s.max), (-1.0, 0.5, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 2.0]).median, 1.5);
        assert_eq!(s.half_range(), 2.0);
        assert!(s.within_noise(s.median));
        assert!(!Spread::of(&[5.0, 6.0, 7.0]).within_noise(6.0));
    }
}
