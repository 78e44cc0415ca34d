//! Latency CDF plots (PNG, plotters), log-scaled in microseconds.
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::scenarios::{FailFast, Healthy, Outage, Proxy};
use crate::stats::sorted;

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

fn cdf(path: &Path, title: &str, series: &[(&str, &[f64])]) -> anyhow::Result<()> {
    ensure_font()?;
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| *v > 0.0)
        .collect();
    if all.is_empty() {
        return Ok(());
    }
    let lo = all.iter().copied().fold(f64::MAX, f64::min).max(0.1) * 0.8;
    let hi = all.iter().copied().fold(0.0, f64::max) * 1.25;
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (µs, log scale)")
        .y_desc("fraction of attempts ≤ x")
        .label_style(("sans-serif", 14))
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA, BLACK, CYAN];
    for (i, (name, values)) in series.iter().enumerate() {
        let v = sorted(values);
        if v.is_empty() {
            continue;
        }
        let n = v.len() as f64;
        // At most ~2000 points per line keeps the file small.
        let step = (v.len() / 2000).max(1);
        let points: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .step_by(step)
            .map(|(j, x)| (x.max(lo), (j + 1) as f64 / n))
            .collect();
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
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
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
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
