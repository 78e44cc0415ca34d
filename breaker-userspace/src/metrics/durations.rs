//! `breaker_connect_duration_seconds`: each upstream's connect-time histogram,
//! counted by the kernel in ticks (see `abi::ConnectDurations`) and exported as
//! it stands, so the buckets are the kernel's: under 1, 2, 4, ... 4096 ticks.
use std::sync::Mutex;

use breaker_common::abi::{ConnectDurations, DURATION_BUCKETS};
use prometheus::{
    core::{Collector, Desc},
    proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};

pub const NAME: &str = "breaker_connect_duration_seconds";
const HELP: &str = "Time from connect() (the packet path: the SYN) to ESTABLISHED (the SYN-ACK) of successful watched connects, at the kernel's tick resolution: bucket bounds are powers of two ticks.";

/// The histograms as of the last scrape, by upstream name.
pub struct DurationHistograms {
    desc: Desc,
    latest: Mutex<(u32, Vec<(String, ConnectDurations)>)>,
}

impl DurationHistograms {
    pub fn new() -> prometheus::Result<DurationHistograms> {
        Ok(DurationHistograms {
            desc: Desc::new(
                NAME.into(),
                HELP.into(),
                vec!["upstream".into()],
                Default::default(),
            )?,
            latest: Mutex::new((0, Vec::new())),
        })
    }

    /// What the next scrape shows: each upstream's histogram, in ticks of `hz`.
    pub fn set(&self, hz: u32, histograms: Vec<(String, ConnectDurations)>) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = (hz, histograms);
    }
}

/// One upstream's histogram in Prometheus' form: cumulative buckets with upper
/// bounds in seconds, the last bucket's connects only in `+Inf` (the count).
pub fn histogram(hz: u32, d: &ConnectDurations) -> Histogram {
    let tick = 1.0 / f64::from(hz.max(1));
    let mut buckets = Vec::with_capacity(DURATION_BUCKETS - 1);
    let mut cumulative = 0u64;
    for (i, n) in d.buckets.iter().enumerate().take(DURATION_BUCKETS - 1) {
        cumulative += n;
        let mut b = Bucket::default();
        b.set_upper_bound((1u64 << i) as f64 * tick);
        b.set_cumulative_count(cumulative);
        buckets.push(b);
    }
    let mut h = Histogram::default();
    h.set_bucket(buckets);
    h.set_sample_count(d.buckets.iter().sum());
    h.set_sample_sum(d.sum_ticks as f64 * tick);
    h
}

impl Collector for DurationHistograms {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let (hz, histograms) = &*latest;
        let metrics = histograms
            .iter()
            .map(|(name, d)| {
                let mut label = LabelPair::default();
                label.set_name("upstream".into());
                label.set_value(name.clone());
                let mut m = Metric::from_label(vec![label]);
                m.set_histogram(histogram(*hz, d));
                m
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(NAME.into());
        family.set_help(HELP.into());
        family.set_field_type(MetricType::HISTOGRAM);
        family.set_metric(metrics);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_in_seconds_and_the_last_one_is_only_in_the_count() {
        let mut d = ConnectDurations::default();
        d.buckets[0] = 3; // under a tick
        d.buckets[2] = 2; // 2-3 ticks
        d.buckets[DURATION_BUCKETS - 1] = 1; // 4096 ticks or more
        d.sum_ticks = 5 + 5000;
        let h = histogram(250, &d);
        let bounds: Vec<f64> = h.get_bucket().iter().map(|b| b.upper_bound()).collect();
        assert_eq!(bounds.len(), DURATION_BUCKETS - 1);
        assert_eq!(&bounds[..3], &[0.004, 0.008, 0.016]);
        assert_eq!(*bounds.last().unwrap(), 4096.0 / 250.0);
        let counts: Vec<u64> = h
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect();
        assert_eq!(&counts[..4], &[3, 3, 5, 5]);
        assert_eq!(*counts.last().unwrap(), 5);
        assert_eq!(h.get_sample_count(), 6);
        assert!((h.get_sample_sum() - 5005.0 / 250.0).abs() < 1e-9);
    }
}
