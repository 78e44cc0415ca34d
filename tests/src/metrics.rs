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

/// No series of that name carries those labels: a renamed metric or label, or a
/// series the daemon has not created (yet).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("no metric {name} with labels {labels:?}")]
pub struct MissingSeries {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

/// The value of `name` whose labels include all of `want`, summed if several match.
pub fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Result<f64, MissingSeries> {
    let mut matches = samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .peekable();
    if matches.peek().is_none() {
        return Err(MissingSeries {
            name: name.to_string(),
            labels: want
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
    }
    Ok(matches.map(|s| s.value).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_sums_matches() {
        let text = "# HELP x\nbreaker_connect_failures_total{reason=\"refused\",upstream=\"a\"} 3\nbreaker_connect_failures_total{reason=\"timeout\",upstream=\"a\"} 2\nup 1\nzero 0\n";
        let s = parse(text);
        assert_eq!(
            value(&s, "breaker_connect_failures_total", &[("upstream", "a")]),
            Ok(5.0)
        );
        assert_eq!(
            value(
                &s,
                "breaker_connect_failures_total",
                &[("reason", "timeout")]
            ),
            Ok(2.0)
        );
        assert_eq!(value(&s, "up", &[]), Ok(1.0));
        assert_eq!(value(&s, "zero", &[]), Ok(0.0), "a 0 series is there");
    }

    #[test]
    fn a_missing_series_is_an_error_not_zero() {
        let s = parse("breaker_connect_failures_total{reason=\"refused\",upstream=\"a\"} 3\n");
        let err = value(&s, "breaker_connect_failure_total", &[]).unwrap_err();
        assert_eq!(err.name, "breaker_connect_failure_total");
        assert!(
            value(&s, "breaker_connect_failures_total", &[("upstream", "b")]).is_err(),
            "the name exists, the label value does not"
        );
        let err = value(&s, "breaker_connect_failures_total", &[("upstrem", "a")]).unwrap_err();
        assert_eq!(err.labels, vec![("upstrem".to_string(), "a".to_string())]);
        assert!(err.to_string().contains("upstrem"), "{err}");
    }
}
