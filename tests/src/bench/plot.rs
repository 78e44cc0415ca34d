//! Latency CDF plots (PNG, plotters), in microseconds: the whole distribution up to
//! its maximum, on a log axis when it spans more than two decades.
use std::path::Path;

use anyhow::Context;
use plotters::{
    coord::ranged1d::{AsRangedCoord, ValueFormatter},
    prelude::*,
};

use super::scenarios::{FailFast, Healthy, Outage, Proxy};
use crate::stats::{fmt_us, sorted};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// plotters draws text with a font we register once, from Debian's fonts-dejavu-core.
fn ensure_font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes =
            std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (install fonts-dejavu-core)"))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{FONT} is not a font"))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

/// Beyond this ratio of largest to smallest latency, the latency axis is log-scaled.
const LOG_AXIS_ABOVE: f64 = 100.0;

/// The points drawn for one sorted sample: every value in the slowest 1 % (at
/// least the last 2000), so the tail is drawn whole up to the maximum, and an even
/// thinning of the rest to keep the file small. Each point is (latency, rank).
fn points(v: &[f64]) -> Vec<(f64, usize)> {
    let n = v.len();
    let tail_from = n.saturating_sub((n / 100).max(2000));
    let step = (tail_from / 2000).max(1);
    v.iter()
        .copied()
        .enumerate()
        .filter(|(j, _)| *j >= tail_from || j % step == 0)
        .map(|(j, x)| (x, j))
        .collect()
}

type Series<'a> = (&'a str, &'a [f64]);

/// Two panels over the same latency axis: the CDF, and below it the fraction of
/// attempts at least as slow as x on a log scale, where the tail is visible.
fn cdf(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<()> {
    ensure_font()?;
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| *v > 0.0)
        .collect();
    let (Some(min), Some(max)) = (
        all.iter().copied().reduce(f64::min),
        all.iter().copied().reduce(f64::max),
    ) else {
        return Ok(());
    };
    let root = BitMapBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let (upper, lower) = root.split_vertically(480);
    let sorted: Vec<(&str, Vec<f64>)> = series
        .iter()
        .map(|(name, v)| (*name, sorted(v)))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if max / min > LOG_AXIS_ABOVE {
        let x = (min * 0.8..max * 1.25).log_scale();
        panels(&upper, &lower, x, "latency (log scale)", &sorted)?;
    } else {
        let pad = (max - min).max(1.0) * 0.05;
        let x = (min - pad).max(0.0)..max + pad;
        panels(&upper, &lower, x, "latency", &sorted)?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn panels<X>(
    upper: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    lower: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    x: X,
    x_desc: &str,
    series: &[(&str, Vec<f64>)],
) -> anyhow::Result<()>
where
    X: AsRangedCoord<Value = f64> + Clone,
    X::CoordDescType: ValueFormatter<f64>,
{
    let colors = [BLUE, RED, GREEN, MAGENTA, BLACK, CYAN];
    let mut chart = ChartBuilder::on(upper)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x.clone(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .x_label_formatter(&|v| fmt_us(*v))
        .y_desc("fraction of attempts ≤ x")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, (name, v)) in series.iter().enumerate() {
        let n = v.len() as f64;
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(
                points(v).into_iter().map(|(x, j)| (x, (j + 1) as f64 / n)),
                color.stroke_width(2),
            ))?
            .label(format!("{name} (n={})", v.len()))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;

    let largest = series.iter().map(|(_, v)| v.len()).max().unwrap_or(1) as f64;
    let mut tail = ChartBuilder::on(lower)
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x, (0.5 / largest..1.0).log_scale())?;
    tail.configure_mesh()
        .x_desc(x_desc)
        .x_label_formatter(&|v| fmt_us(*v))
        .y_desc("fraction of attempts ≥ x (log)")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, (_, v)) in series.iter().enumerate() {
        let n = v.len() as f64;
        let color = colors[i % colors.len()];
        // Rank j (from 0) of n: a fraction (n - j) / n of attempts are at least as
        // slow, down to 1/n at the maximum.
        tail.draw_series(LineSeries::new(
            points(v).into_iter().map(|(x, j)| (x, (n - j as f64) / n)),
            color.stroke_width(2),
        ))?;
    }
    Ok(())
}

pub fn healthy(path: &Path, h: &Healthy) -> anyhow::Result<()> {
    cdf(
        path,
        "1. connect()+close() while healthy",
        &[
            ("no breaker", &h.baseline),
            ("breaker attached, CLOSED", &h.breaker),
        ],
    )
}

pub fn failfast(path: &Path, f: &FailFast) -> anyhow::Result<()> {
    cdf(
        path,
        "2. connect() to a failing upstream",
        &[
            ("breaker OPEN", &f.open),
            ("refused port (RST)", &f.refused),
            ("blackholed, syn_retries=1", &f.blackhole),
        ],
    )
}

pub fn outage(path: &Path, runs: &[Outage]) -> anyhow::Result<()> {
    let series: Vec<(&str, &[f64])> = runs
        .iter()
        .map(|r| (r.variant.label(), r.during.as_slice()))
        .collect();
    cdf(path, "3. request latency during the outage", &series)
}

pub fn proxy(path: &Path, p: &Proxy) -> anyhow::Result<()> {
    cdf(
        path,
        "6. HTTP request latency: direct, breaker, HAProxy",
        &[
            ("direct", &p.direct),
            ("breaker attached", &p.breaker),
            ("through HAProxy", &p.haproxy),
        ],
    )
}
