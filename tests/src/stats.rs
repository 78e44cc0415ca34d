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
}
