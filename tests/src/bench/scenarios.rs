//! The measured scenarios. Each builds its own lab and returns raw samples; the
//! report turns them into tables.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;

use super::{
    haproxy::{self, Haproxy},
    kernel_stats::{self, ProgCost, StatsEnabled},
    Plan,
};
use crate::{
    client::{mono_ms, parse_attempts, Attempt},
    lab::{Lab, UPSTREAM_V4},
};

const SINK: &str = "10.77.0.2:8080";
const CLOSED_PORT: &str = "10.77.0.2:81";
const DARK: &str = "10.77.9.1:80";

fn latencies(attempts: &[Attempt]) -> Vec<f64> {
    attempts.iter().map(|a| a.latency_us).collect()
}

/// The first connects of a run warm caches (neighbour entries, code paths).
fn warm(mut v: Vec<f64>) -> Vec<f64> {
    let skip = (v.len() / 100).min(100);
    v.drain(..skip);
    v
}

fn connect_loop(lab: &Lab, to: &str, count: u32) -> anyhow::Result<Vec<Attempt>> {
    lab.client(&["--to", to, "--count", &count.to_string(), "--linger0"])
}

fn api_config(endpoints: &[String], extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    format!(
        "[[upstream]]\nname = \"api\"\nendpoints = [{}]\n{extra}\n",
        list.join(", ")
    )
}

// ---------------------------------------------------------------- scenario 1 + 4

pub struct Healthy {
    pub baseline: Vec<f64>,
    pub breaker: Vec<f64>,
    pub round_medians_baseline: Vec<f64>,
    pub round_medians_breaker: Vec<f64>,
    /// Kernel cost over a separate run with BPF stats on.
    pub programs: Vec<ProgCost>,
    /// The same run with empty programs of the same types attached instead.
    pub empty_programs: Vec<ProgCost>,
    pub stats_connects: u32,
}

pub fn healthy(lab_bin: &Path, plan: &Plan) -> anyhow::Result<Healthy> {
    let mut lab = Lab::new("bh", lab_bin)?;
    lab.sink(SINK)?;
    let config = api_config(&[SINK.to_string()], "");
    let mut h = Healthy {
        baseline: Vec::new(),
        breaker: Vec::new(),
        round_medians_baseline: Vec::new(),
        round_medians_breaker: Vec::new(),
        programs: Vec::new(),
        empty_programs: Vec::new(),
        stats_connects: plan.healthy_per_round,
    };
    // One daemon for the whole scenario; rounds alternate the client between a cgroup
    // the breaker is attached to and a bare sibling, so drift on a shared machine,
    // and the daemon's mere presence, hit both sides alike.
    lab.start_daemon(&config)?;
    for _ in 0..plan.healthy_rounds {
        let base = warm(latencies(&lab.client_bare(&[
            "--to",
            SINK,
            "--count",
            &plan.healthy_per_round.to_string(),
            "--linger0",
        ])?));
        h.round_medians_baseline.push(super::Summary::of(&base).p50);
        h.baseline.extend(base);
        let with = warm(latencies(&connect_loop(
            &lab,
            SINK,
            plan.healthy_per_round,
        )?));
        h.round_medians_breaker.push(super::Summary::of(&with).p50);
        h.breaker.extend(with);
    }
    // Scenario 4: the programs' own run time, in a run of its own (stats cost time too).
    {
        let _stats = StatsEnabled::on()?;
        connect_loop(&lab, SINK, plan.healthy_per_round)?;
        h.programs = kernel_stats::breaker_programs();
    }
    lab.stop_daemon()?;
    // What any program of these types costs under BPF stats, doing nothing.
    let calibration = lab.start_calibration()?;
    {
        let _stats = StatsEnabled::on()?;
        connect_loop(&lab, SINK, plan.healthy_per_round)?;
        h.empty_programs = kernel_stats::programs(&kernel_stats::EMPTY_PROGRAMS);
    }
    drop(calibration);
    Ok(h)
}

// ---------------------------------------------------------------- scenario 2

pub struct FailFast {
    pub open: Vec<f64>,
    pub refused: Vec<f64>,
    /// Full kernel timeout of a connect to a blackholed upstream, tcp_syn_retries=1.
    pub blackhole: Vec<f64>,
}

pub fn failfast(lab_bin: &Path, plan: &Plan) -> anyhow::Result<FailFast> {
    let mut lab = Lab::new("bf", lab_bin)?;
    lab.start_daemon(&api_config(
        &[DARK.to_string()],
        "failure_threshold = 1\nopen_duration = \"1h\"",
    ))?;
    let trip = lab.client(&["--to", DARK, "--count", "1", "--timeout-ms", "1500"])?;
    anyhow::ensure!(
        trip.first().is_some_and(|a| a.outcome == "timeout"),
        "tripping connect: {trip:?}"
    );
    let open = connect_loop(&lab, DARK, plan.failfast)?;
    anyhow::ensure!(
        open.iter().all(|a| a.outcome == "refused"),
        "connects to an open breaker must be refused"
    );
    lab.stop_daemon()?;
    let refused = connect_loop(&lab, CLOSED_PORT, plan.failfast)?;
    lab.client_sysctl("net/ipv4/tcp_syn_retries", "1")?;
    let blackhole = lab.client(&[
        "--to",
        DARK,
        "--count",
        &plan.blackhole_runs.to_string(),
        "--timeout-ms",
        "600000",
    ])?;
    Ok(FailFast {
        open: warm(latencies(&open)),
        refused: warm(latencies(&refused)),
        blackhole: latencies(&blackhole),
    })
}

// ---------------------------------------------------------------- scenario 3

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutageVariant {
    NoBreaker,
    Breaker,
    BreakerFallback,
    Haproxy,
}

impl OutageVariant {
    pub const ALL: [OutageVariant; 4] = [
        OutageVariant::NoBreaker,
        OutageVariant::Breaker,
        OutageVariant::BreakerFallback,
        OutageVariant::Haproxy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            OutageVariant::NoBreaker => "no breaker",
            OutageVariant::Breaker => "breaker",
            OutageVariant::BreakerFallback => "breaker + fallback",
            OutageVariant::Haproxy => "HAProxy (TCP, passive+active checks)",
        }
    }
}

pub struct Outage {
    pub variant: OutageVariant,
    pub clients: u32,
    pub requests: usize,
    /// Latencies (µs) of requests started while the upstream was dark.
    pub during: Vec<f64>,
    /// Requests started while dark that hung until the client's timeout: they reached
    /// the dead upstream.
    pub reached_dead: usize,
    pub served_by_fallback: usize,
    pub failed_fast: usize,
    /// Upstream back -> breaker closed (breaker variants), from the daemon's state.
    pub close_after_ms: Option<f64>,
    /// Upstream back -> first request served by the upstream again.
    pub first_served_after_ms: Option<f64>,
    pub threshold: u32,
}

const CLIENT_TIMEOUT_MS: u64 = 1000;
const CLIENTS: u32 = 32;
const THRESHOLD: u32 = 5;

pub fn outage(lab_bin: &Path, plan: &Plan, variant: OutageVariant) -> anyhow::Result<Outage> {
    let mut lab = Lab::new("bo", lab_bin)?;
    lab.serve("10.77.0.2:8080", "api")?;
    lab.serve("10.77.0.3:9000", "fallback")?;
    let policy = format!(
        "failure_threshold = {THRESHOLD}\nopen_duration = \"{}ms\"\nprobe_interval = \"{}ms\"\nprobe_timeout = \"200ms\"",
        plan.open_duration_ms, plan.probe_interval_ms
    );
    let mut proxy = None;
    let target = match variant {
        OutageVariant::NoBreaker => "10.77.0.2:8080",
        OutageVariant::Breaker => {
            lab.start_daemon(&api_config(&["10.77.0.2:8080".into()], &policy))?;
            "10.77.0.2:8080"
        }
        OutageVariant::BreakerFallback => {
            lab.start_daemon(&api_config(
                &["10.77.0.2:8080".into()],
                &format!("{policy}\nfallback = \"10.77.0.3:9000\""),
            ))?;
            "10.77.0.2:8080"
        }
        OutageVariant::Haproxy => {
            let path = lab.work_file(
                "haproxy.cfg",
                &haproxy::config("10.77.0.2:8080", THRESHOLD, plan.probe_interval_ms),
            )?;
            proxy = Some(Haproxy::start(&lab, &path)?);
            haproxy::FRONTEND
        }
    };
    let per_client = (plan.outage_requests / CLIENTS).max(1);
    let mut child = lab
        .client_command(&[
            "--to",
            target,
            "--http",
            "--count",
            &per_client.to_string(),
            "--concurrency",
            &CLIENTS.to_string(),
            "--interval-ms",
            &plan.outage_interval_ms.to_string(),
            "--timeout-ms",
            &CLIENT_TIMEOUT_MS.to_string(),
        ])
        .spawn()
        .context("starting the outage clients")?;
    let stdout = child.stdout.take().context("client stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut { stdout }, &mut text);
        text
    });
    std::thread::sleep(Duration::from_millis(plan.dark_at_ms));
    lab.blackhole(UPSTREAM_V4)?;
    let dark_mono = mono_ms();
    std::thread::sleep(Duration::from_millis(plan.dark_for_ms));
    lab.restore(UPSTREAM_V4)?;
    let back_mono = mono_ms();
    let mut closed_mono = None;
    if matches!(
        variant,
        OutageVariant::Breaker | OutageVariant::BreakerFallback
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if lab.metric("breaker_state", &[("upstream", "api"), ("state", "closed")])? == 1.0 {
                closed_mono = Some(mono_ms());
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "outage clients failed: {status}");
    let attempts = parse_attempts(
        &reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))?,
    )?;
    drop(proxy);
    let during: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.mono_ms >= dark_mono && a.mono_ms < back_mono)
        .collect();
    let hung = |a: &Attempt| a.latency_us >= 0.9 * CLIENT_TIMEOUT_MS as f64 * 1000.0;
    Ok(Outage {
        variant,
        clients: CLIENTS,
        requests: attempts.len(),
        during: during.iter().map(|a| a.latency_us).collect(),
        reached_dead: during.iter().filter(|a| hung(a)).count(),
        served_by_fallback: during
            .iter()
            .filter(|a| a.body.as_deref() == Some("fallback"))
            .count(),
        failed_fast: during
            .iter()
            .filter(|a| a.outcome != "ok" && !hung(a))
            .count(),
        close_after_ms: closed_mono.map(|c| c - back_mono),
        first_served_after_ms: attempts
            .iter()
            .filter(|a| a.mono_ms >= back_mono && a.body.as_deref() == Some("api"))
            .map(|a| a.mono_ms + a.latency_us / 1000.0 - back_mono)
            .reduce(f64::min),
        threshold: THRESHOLD,
    })
}

// ---------------------------------------------------------------- scenario 5

pub struct ScalePoint {
    pub label: String,
    pub connect: Vec<f64>,
    pub programs: Vec<ProgCost>,
    pub connects: u32,
    pub map_bytes: u64,
    pub rss_bytes: u64,
    pub startup_ms: f64,
}

/// `n` endpoints: the sink first, then distinct /32s that nothing ever connects to.
fn endpoints(n: u32) -> Vec<String> {
    let mut v = vec![SINK.to_string()];
    v.extend((1..n).map(|i| format!("10.{}.{}.{}:80", 100 + (i >> 16), (i >> 8) & 0xff, i & 0xff)));
    v
}

fn measure_point(
    lab: &mut Lab,
    label: String,
    config: &str,
    plan: &Plan,
    before: impl FnOnce(&Lab) -> anyhow::Result<()>,
) -> anyhow::Result<ScalePoint> {
    let t = Instant::now();
    lab.start_daemon(config)?;
    let startup_ms = t.elapsed().as_secs_f64() * 1e3;
    before(lab)?;
    let connect = warm(latencies(&connect_loop(lab, SINK, plan.scale_connects)?));
    let programs = {
        let _stats = StatsEnabled::on()?;
        connect_loop(lab, SINK, plan.scale_connects)?;
        kernel_stats::breaker_programs()
    };
    let pid = lab.daemon_pid().context("daemon pid")?;
    let (map_bytes, rss_bytes) = (kernel_stats::map_memory(pid), kernel_stats::rss(pid));
    lab.stop_daemon()?;
    Ok(ScalePoint {
        label,
        connect,
        programs,
        connects: plan.scale_connects,
        map_bytes,
        rss_bytes,
        startup_ms,
    })
}

pub fn scale(lab_bin: &Path, plan: &Plan) -> anyhow::Result<Vec<ScalePoint>> {
    let mut lab = Lab::new("bs", lab_bin)?;
    lab.sink(SINK)?;
    let mut points = Vec::new();
    for &n in &plan.scale_endpoints {
        let config = api_config(&endpoints(n), "");
        points.push(measure_point(
            &mut lab,
            format!("{n} endpoints"),
            &config,
            plan,
            |_| Ok(()),
        )?);
    }
    let lru = plan.lru_destinations;
    let config = format!("[default_policy]\nmax_destinations = {lru}\nfailure_threshold = 5\n");
    points.push(measure_point(
        &mut lab,
        format!("default policy, {lru} destinations held"),
        &config,
        plan,
        |lab| {
            let out = lab
                .lab_command(&["fill", "--base", "10.78.0.0", "--count", &lru.to_string()])
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "fill failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        },
    )?);
    Ok(points)
}

// ---------------------------------------------------------------- scenario 6

pub struct Proxy {
    /// Request latency (connect + GET + response), µs.
    pub direct: Vec<f64>,
    pub breaker: Vec<f64>,
    pub haproxy: Vec<f64>,
    pub requests: u32,
    /// CPU seconds spent per path over its run.
    pub breaker_daemon_cpu_s: f64,
    pub breaker_bpf_ns: u64,
    pub haproxy_cpu_s: f64,
}

pub fn proxy(lab_bin: &Path, plan: &Plan) -> anyhow::Result<Proxy> {
    let mut lab = Lab::new("bp", lab_bin)?;
    lab.serve("10.77.0.2:8080", "api")?;
    let n = plan.proxy_requests.to_string();
    let request = |lab: &Lab, to: &str| -> anyhow::Result<Vec<f64>> {
        let a = lab.client(&["--to", to, "--http", "--count", &n])?;
        anyhow::ensure!(
            a.iter().all(|a| a.outcome == "ok"),
            "requests through {to} failed"
        );
        Ok(warm(latencies(&a)))
    };
    let direct = request(&lab, "10.77.0.2:8080")?;

    lab.start_daemon(&api_config(&["10.77.0.2:8080".into()], ""))?;
    let pid = lab.daemon_pid().context("daemon pid")?;
    let cpu0 = kernel_stats::cpu_seconds(pid);
    let (breaker, bpf) = {
        let _stats = StatsEnabled::on()?;
        let before: u64 = kernel_stats::breaker_programs()
            .iter()
            .map(|p| p.run_ns)
            .sum();
        let lat = request(&lab, "10.77.0.2:8080")?;
        let after: u64 = kernel_stats::breaker_programs()
            .iter()
            .map(|p| p.run_ns)
            .sum();
        (lat, after.saturating_sub(before))
    };
    let breaker_daemon_cpu_s = kernel_stats::cpu_seconds(pid) - cpu0;
    lab.stop_daemon()?;

    let path = lab.work_file(
        "haproxy.cfg",
        &haproxy::config("10.77.0.2:8080", THRESHOLD, plan.probe_interval_ms),
    )?;
    let proxy = Haproxy::start(&lab, &path)?;
    let cpu0 = kernel_stats::cpu_seconds(proxy.pid());
    let haproxy = request(&lab, haproxy::FRONTEND)?;
    let haproxy_cpu_s = kernel_stats::cpu_seconds(proxy.pid()) - cpu0;
    Ok(Proxy {
        direct,
        breaker,
        haproxy,
        requests: plan.proxy_requests,
        breaker_daemon_cpu_s,
        breaker_bpf_ns: bpf,
        haproxy_cpu_s,
    })
}
