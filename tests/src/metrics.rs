//! Reading the daemon's Prometheus text output.

/// One sample: name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            Some(Sample {
                name: name.to_string(),
                labels,
                value,
            })
        })
        .collect()
}

/// The value of `name` whose labels include all of `want`, summed if several match.
pub fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_sums_matches() {
        let text = "# HELP x\nbreaker_connect_failures_total{reason=\"refused\",upstream=\"a\"} 3\nbreaker_connect_failures_total{reason=\"timeout\",upstream=\"a\"} 2\nup 1\n";
        let s = parse(text);
        assert_eq!(
            value(&s, "breaker_connect_failures_total", &[("upstream", "a")]),
            5.0
        );
        assert_eq!(
            value(
                &s,
                "breaker_connect_failures_total",
                &[("reason", "timeout")]
            ),
            2.0
        );
        assert_eq!(value(&s, "up", &[]), 1.0);
        assert_eq!(value(&s, "missing", &[]), 0.0);
    }
}
