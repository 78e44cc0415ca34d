//! Scenario 9: how fast a blackholed upstream is noticed. One client connects to
//! it one connect at a time (the slowest case: no concurrency to add failures),
//! the upstream goes dark, and the time until its breaker is OPEN is measured.
//! Rows: `connect_timeout = "200ms"` with a client that gives up after 250 ms;
//! without it, the same client (its connects end before the kernel's 1 s SYN
//! retransmission: abandoned, never counted as failures); and without it, a
//! client that waits 1.5 s (today's default behaviour).
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;

use super::Plan;
use crate::lab::{Lab, UPSTREAM_V4};

/// Gives up on a breaker that has not opened by then.
const GIVE_UP: Duration = Duration::from_secs(8);

pub struct DetectionRow {
    pub label: &'static str,
    pub connect_timeout: Option<&'static str>,
    pub client_timeout_ms: u32,
    /// Seconds from the outage to OPEN, one per run; `None`: not within [`GIVE_UP`].
    pub opened_after: Vec<Option<f64>>,
}

pub const THRESHOLD: u32 = 3;

const VARIANTS: [(&str, Option<&str>, u32); 3] = [
    (
        "connect_timeout 200ms, client timeout 250 ms",
        Some("200ms"),
        250,
    ),
    ("no connect_timeout, client timeout 250 ms", None, 250),
    ("no connect_timeout, client timeout 1.5 s", None, 1500),
];

fn is_open(lab: &Lab) -> bool {
    lab.metrics().is_ok_and(|m| {
        crate::metrics::value(
            &m,
            "breaker_state",
            &[("upstream", "api"), ("state", "open")],
        )
        .is_ok_and(|v| v == 1.0)
    })
}

fn one_run(
    lab_bin: &Path,
    connect_timeout: Option<&str>,
    client_timeout_ms: u32,
) -> anyhow::Result<Option<f64>> {
    let mut lab = Lab::new("bd", lab_bin)?;
    lab.serve("10.77.0.2:8080", "api")?;
    let extra = connect_timeout.map_or(String::new(), |t| format!("connect_timeout = \"{t}\"\n"));
    lab.start_daemon(&format!(
        "[[upstream]]\nname = \"api\"\nendpoints = [\"10.77.0.2:8080\"]\n\
         failure_threshold = {THRESHOLD}\nopen_duration = \"1h\"\n{extra}"
    ))?;
    let mut client = lab
        .client_command(&[
            "--to",
            "10.77.0.2:8080",
            "--count",
            "1000000",
            "--timeout-ms",
            &client_timeout_ms.to_string(),
            "--interval-ms",
            "5",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting the client")?;
    let result = (|| -> anyhow::Result<Option<f64>> {
        // Healthy for a moment, so the client is mid-stream when it goes dark.
        std::thread::sleep(Duration::from_millis(300));
        lab.blackhole(UPSTREAM_V4)?;
        let dark = Instant::now();
        while dark.elapsed() < GIVE_UP {
            if is_open(&lab) {
                return Ok(Some(dark.elapsed().as_secs_f64()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(None)
    })();
    let _ = client.kill();
    let _ = client.wait();
    result
}

pub fn detection(lab_bin: &Path, plan: &Plan) -> anyhow::Result<Vec<DetectionRow>> {
    let runs = if plan.quick { 1 } else { 3 };
    VARIANTS
        .iter()
        .map(|&(label, connect_timeout, client_timeout_ms)| {
            let opened_after = (0..runs)
                .map(|_| one_run(lab_bin, connect_timeout, client_timeout_ms))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(DetectionRow {
                label,
                connect_timeout,
                client_timeout_ms,
                opened_after,
            })
        })
        .collect()
}
