//! The measured scenarios. Each builds its own lab and returns raw samples; the
//! report turns them into tables.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;

use super::{
    fill,
    haproxy::{self, Haproxy},
    kernel_stats::{self, ProgCost, StatsEnabled},
    Plan, Summary,
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

/// One latency round on each side, back to back.
pub struct HealthyPair {
    pub breaker_first: bool,
    pub bare: Summary,
    pub breaker: Summary,
}

/// Scenario 4: one round through the breaker's programs and one through the empty
/// programs, back to back, with BPF stats on. Costs are this round's differences.
pub struct KernelPair {
    pub breaker: Vec<ProgCost>,
    pub empty: Vec<ProgCost>,
    pub connects: u32,
}

pub struct Healthy {
    /// Every sample of every round, for the plot.
    pub baseline: Vec<f64>,
    pub breaker: Vec<f64>,
    pub pairs: Vec<HealthyPair>,
    pub per_round: u32,
    pub kernel: Vec<KernelPair>,
    /// Scenario 4 again with every policy of the config on ([`EVERY_POLICY`]).
    pub kernel_every_policy: Vec<KernelPair>,
}

/// Every policy on at once, for scenario 4's second table: the failure rate and
/// the slow rate (a window written at each outcome), slow connects counted,
/// `connect_timeout` (a reply to sock_ops' TIMEOUT_INIT), growing open time with
/// jitter, and a fallback chain.
pub const EVERY_POLICY: &str = "failure_threshold = 5
failure_rate_threshold = 50
minimum_connects = 20
window = \"10s\"
slow_connect_threshold = \"100ms\"
slow_rate_threshold = 50
count = [\"refused\", \"timeout\", \"unreachable\", \"slow\"]
connect_timeout = \"200ms\"
max_open_duration = \"5m\"
jitter = 10
fallbacks = [\"10.77.0.3:9000\"]";

/// ABBA order: pair 0 runs the breaker first, pair 1 the bare side first, and so
/// on, so that a drift over the scenario falls on both sides alike.
fn breaker_first(pair: u32) -> bool {
    pair.is_multiple_of(2)
}

/// `breaker calibrate`: the empty programs attached to `cgroup` while it lives.
struct Calibration(std::process::Child);

impl Calibration {
    fn start(cgroup: &Path) -> anyhow::Result<Calibration> {
        let mut child = std::process::Command::new(crate::lab::find_breaker_bin()?)
            .arg("calibrate")
            .arg("--cgroup")
            .arg(cgroup)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting breaker calibrate")?;
        let stderr = child.stderr.take().context("calibrate stderr")?;
        let calibration = Calibration(child);
        // It says so on stderr once attached.
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stderr), &mut line)?;
        anyhow::ensure!(
            line.contains("attached"),
            "breaker calibrate failed: {line}"
        );
        Ok(calibration)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Calibration {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// Runs `run` and returns what the programs of `pid` named `names` spent on it.
fn cost_of(
    pid: u32,
    names: &[&str],
    run: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<ProgCost>> {
    let before = kernel_stats::programs_of(pid, names)?;
    run()?;
    Ok(kernel_stats::delta(
        &before,
        &kernel_stats::programs_of(pid, names)?,
    ))
}

pub fn healthy(lab_bin: &Path, plan: &Plan) -> anyhow::Result<Healthy> {
    let mut lab = Lab::new("bh", lab_bin)?;
    lab.sink(SINK)?;
    let config = api_config(&[SINK.to_string()], "");
    let per_round = plan.healthy_per_round.to_string();
    let args = ["--to", SINK, "--count", &per_round, "--linger0"];
    let mut h = Healthy {
        baseline: Vec::new(),
        breaker: Vec::new(),
        pairs: Vec::new(),
        per_round: plan.healthy_per_round,
        kernel: Vec::new(),
        kernel_every_policy: Vec::new(),
    };
    // One daemon for the whole scenario; rounds move the client between the cgroup
    // the breaker is attached to and a bare sibling, so the daemon's mere presence
    // hits both sides alike.
    lab.start_daemon(&config)?;
    for pair in 0..plan.healthy_rounds {
        let mut bare = Vec::new();
        let mut with = Vec::new();
        for breaker_side in [breaker_first(pair), !breaker_first(pair)] {
            if breaker_side {
                with = warm(latencies(&lab.client(&args)?));
            } else {
                bare = warm(latencies(&lab.client_bare(&args)?));
            }
        }
        h.pairs.push(HealthyPair {
            breaker_first: breaker_first(pair),
            bare: Summary::of(&bare),
            breaker: Summary::of(&with),
        });
        h.baseline.extend(bare);
        h.breaker.extend(with);
    }
    // Scenario 4, after the latency rounds (stats and the empty programs cost time
    // too): the empty programs go on the bare cgroup, so breaker rounds and empty
    // rounds can alternate without restarting anything.
    let calibration = Calibration::start(&lab.bare_cgroup)?;
    let n = plan.kernel_per_round.to_string();
    let args = ["--to", SINK, "--count", &n, "--linger0"];
    let _stats = StatsEnabled::on()?;
    let pairs = |lab: &Lab| -> anyhow::Result<Vec<KernelPair>> {
        let daemon = lab.daemon_pid().context("daemon pid")?;
        let mut out = Vec::new();
        for pair in 0..plan.kernel_rounds {
            let (mut breaker, mut empty) = (Vec::new(), Vec::new());
            for breaker_side in [breaker_first(pair), !breaker_first(pair)] {
                if breaker_side {
                    breaker = cost_of(daemon, &kernel_stats::BREAKER_PROGRAMS, || {
                        lab.client(&args).map(drop)
                    })?;
                } else {
                    empty = cost_of(calibration.pid(), &kernel_stats::EMPTY_PROGRAMS, || {
                        lab.client_bare(&args).map(drop)
                    })?;
                }
            }
            out.push(KernelPair {
                breaker,
                empty,
                connects: plan.kernel_per_round,
            });
        }
        Ok(out)
    };
    h.kernel = pairs(&lab)?;
    // The same with every policy on: a daemon of that config, started anew.
    lab.stop_daemon()?;
    lab.start_daemon(&api_config(&[SINK.to_string()], EVERY_POLICY))?;
    h.kernel_every_policy = pairs(&lab)?;
    drop(calibration);
    lab.stop_daemon()?;
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
    /// The breaker with a failure-rate policy beside the consecutive count.
    BreakerRate,
    BreakerFallback,
    Haproxy,
}

impl OutageVariant {
    pub const ALL: [OutageVariant; 5] = [
        OutageVariant::NoBreaker,
        OutageVariant::Breaker,
        OutageVariant::BreakerRate,
        OutageVariant::BreakerFallback,
        OutageVariant::Haproxy,
    ];

    /// Whether a breaker daemon runs in this variant.
    pub fn has_breaker(self) -> bool {
        matches!(
            self,
            OutageVariant::Breaker | OutageVariant::BreakerRate | OutageVariant::BreakerFallback
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            OutageVariant::NoBreaker => "no breaker",
            OutageVariant::Breaker => "breaker",
            OutageVariant::BreakerRate => "breaker, rate policy too",
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
    /// Requests started while dark that waited on the dark: 0.9 s or more, most
    /// of the first SYN's timeout (the kernel fails such a connect with ETIMEDOUT
    /// once its breaker turns connects away; a proxy's connect timeout ends its
    /// try), or until the client's timeout.
    pub reached_dead: usize,
    /// Of those, the ones that hung until the client's timeout.
    pub hung: usize,
    pub served_by_fallback: usize,
    pub failed_fast: usize,
    /// Upstream back -> breaker closed (breaker variants), from the daemon's state.
    pub close_after_ms: Option<f64>,
    /// Upstream back -> first request served by the upstream again.
    pub first_served_after_ms: Option<f64>,
    pub threshold: u32,
}

/// Longer than the first SYN retransmission timeout (about 1 s), at which the
/// breaker counts a blackholed connect as failed: a client that gives up sooner
/// abandons its connect, and an abandoned connect is never a failure (README).
pub const CLIENT_TIMEOUT_MS: u64 = 1500;
const CLIENTS: u32 = 32;
const THRESHOLD: u32 = 5;
/// The rate variant's policy: Hystrix's defaults at its usual 50 %.
pub const RATE_POLICY: &str =
    "failure_rate_threshold = 50\nminimum_connects = 20\nwindow = \"10s\"";

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
        OutageVariant::BreakerRate => {
            lab.start_daemon(&api_config(
                &["10.77.0.2:8080".into()],
                &format!("{policy}\n{RATE_POLICY}"),
            ))?;
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
    if variant.has_breaker() {
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
    // Waited on the dark: at least most of the first SYN's timeout (1 s), at
    // which the kernel fails a connect its breaker turns away (ETIMEDOUT) and a
    // proxy's connect timeout ends its try, whatever the client then hears.
    let dark = |a: &Attempt| hung(a) || a.latency_us >= 0.9 * 1e6;
    Ok(Outage {
        variant,
        clients: CLIENTS,
        requests: attempts.len(),
        during: during.iter().map(|a| a.latency_us).collect(),
        reached_dead: during.iter().filter(|a| dark(a)).count(),
        hung: during.iter().filter(|a| hung(a)).count(),
        served_by_fallback: during
            .iter()
            .filter(|a| a.body.as_deref() == Some("fallback"))
            .count(),
        failed_fast: during
            .iter()
            .filter(|a| a.outcome != "ok" && !dark(a))
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
    /// Default-policy row: how the fill went, and the entries the map held after it.
    pub fill: Option<(fill::Filled, anyhow::Result<u64>)>,
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
    lru_fill: Option<u32>,
) -> anyhow::Result<ScalePoint> {
    let t = Instant::now();
    lab.start_daemon(config)?;
    let startup_ms = t.elapsed().as_secs_f64() * 1e3;
    let pid = lab.daemon_pid().context("daemon pid")?;
    let fill = match lru_fill {
        Some(count) => {
            let filled = fill::refused_destinations(lab, count)?;
            Some((filled, kernel_stats::default_states_entries(pid)))
        }
        None => None,
    };
    let connect = warm(latencies(&connect_loop(lab, SINK, plan.scale_connects)?));
    let programs = {
        let _stats = StatsEnabled::on()?;
        cost_of(pid, &kernel_stats::BREAKER_PROGRAMS, || {
            connect_loop(lab, SINK, plan.scale_connects).map(drop)
        })?
    };
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
        fill,
    })
}

/// Scenario 5: a row per configuration, and the smallest and largest endpoint
/// rows' kernel cost (ns per connect, raw) measured again in pairs.
pub struct Scale {
    pub points: Vec<ScalePoint>,
    /// (smallest, largest) per extra pair, each pair's order alternating.
    pub repeats: Vec<(f64, f64)>,
}

pub fn scale(lab_bin: &Path, plan: &Plan) -> anyhow::Result<Scale> {
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
            None,
        )?);
    }
    let mut repeats = Vec::new();
    if let (Some(&small), Some(&large)) =
        (plan.scale_endpoints.first(), plan.scale_endpoints.last())
    {
        // With one size there is no pair to measure.
        let repeats_wanted = if small == large {
            0
        } else {
            plan.scale_repeats
        };
        for round in 0..repeats_wanted {
            // The rows ran small first: the next pair runs large first, and so on.
            let order = if round % 2 == 0 {
                [large, small]
            } else {
                [small, large]
            };
            let mut cost = [0.0; 2];
            for n in order {
                let p = measure_point(
                    &mut lab,
                    format!("{n} endpoints, again"),
                    &api_config(&endpoints(n), ""),
                    plan,
                    None,
                )?;
                cost[usize::from(n == large)] = super::report::per_connect(&p.programs, p.connects);
            }
            repeats.push((cost[0], cost[1]));
        }
    }
    let lru = plan.lru_destinations;
    let config = format!("[default_policy]\nmax_destinations = {lru}\nfailure_threshold = 5\n");
    points.push(measure_point(
        &mut lab,
        format!("default policy, {lru} failing destinations"),
        &config,
        plan,
        Some(lru),
    )?);
    Ok(Scale { points, repeats })
}

// ---------------------------------------------------------------- scenario 6

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyPath {
    Direct,
    Breaker,
    Haproxy,
}

/// One round: the same number of requests down each path, in a rotating order.
pub struct ProxyRound {
    pub direct: Summary,
    pub breaker: Summary,
    pub haproxy: Summary,
    /// CPU per request, µs: the breaker's kernel programs (BPF stats) plus its
    /// daemon; HAProxy's process.
    pub breaker_cpu_us: f64,
    pub haproxy_cpu_us: f64,
}

pub struct Proxy {
    /// Every request latency (connect + GET + response), µs, for the plot.
    pub direct: Vec<f64>,
    pub breaker: Vec<f64>,
    pub haproxy: Vec<f64>,
    pub rounds: Vec<ProxyRound>,
    pub requests: u32,
}

pub fn proxy(lab_bin: &Path, plan: &Plan) -> anyhow::Result<Proxy> {
    let mut lab = Lab::new("bp", lab_bin)?;
    lab.serve("10.77.0.2:8080", "api")?;
    let n = plan.proxy_requests.to_string();
    // The breaker's path runs in the lab cgroup; the other two in the bare one, where
    // no breaker program runs.
    let request = |lab: &Lab, to: &str, with_breaker: bool| -> anyhow::Result<Vec<f64>> {
        let args = ["--to", to, "--http", "--count", &n];
        let a = if with_breaker {
            lab.client(&args)?
        } else {
            lab.client_bare(&args)?
        };
        anyhow::ensure!(
            a.iter().all(|a| a.outcome == "ok"),
            "requests through {to} failed"
        );
        Ok(warm(latencies(&a)))
    };
    // Daemon and proxy run through every round, so that each one's presence (timers,
    // health checks) weighs on all three paths alike.
    lab.start_daemon(&api_config(&["10.77.0.2:8080".into()], ""))?;
    let daemon = lab.daemon_pid().context("daemon pid")?;
    let path = lab.work_file(
        "haproxy.cfg",
        &haproxy::config("10.77.0.2:8080", THRESHOLD, plan.probe_interval_ms),
    )?;
    let proxy = Haproxy::start(&lab, &path)?;
    let _stats = StatsEnabled::on()?;
    let mut out = Proxy {
        direct: Vec::new(),
        breaker: Vec::new(),
        haproxy: Vec::new(),
        rounds: Vec::new(),
        requests: plan.proxy_requests,
    };
    let requests = f64::from(plan.proxy_requests.max(1));
    for round in 0..plan.proxy_rounds {
        let mut order = [ProxyPath::Direct, ProxyPath::Breaker, ProxyPath::Haproxy];
        order.rotate_left(round as usize % 3);
        let mut r = ProxyRound {
            direct: Summary::default(),
            breaker: Summary::default(),
            haproxy: Summary::default(),
            breaker_cpu_us: 0.0,
            haproxy_cpu_us: 0.0,
        };
        for p in order {
            match p {
                ProxyPath::Direct => {
                    let lat = request(&lab, "10.77.0.2:8080", false)?;
                    r.direct = Summary::of(&lat);
                    out.direct.extend(lat);
                }
                ProxyPath::Breaker => {
                    let cpu0 = kernel_stats::cpu_seconds(daemon);
                    let mut lat = Vec::new();
                    let bpf = cost_of(daemon, &kernel_stats::BREAKER_PROGRAMS, || {
                        lat = request(&lab, "10.77.0.2:8080", true)?;
                        Ok(())
                    })?;
                    let daemon_s = kernel_stats::cpu_seconds(daemon) - cpu0;
                    let bpf_ns: u64 = bpf.iter().map(|p| p.run_ns).sum();
                    r.breaker_cpu_us = (bpf_ns as f64 / 1e3 + daemon_s * 1e6) / requests;
                    r.breaker = Summary::of(&lat);
                    out.breaker.extend(lat);
                }
                ProxyPath::Haproxy => {
                    let cpu0 = kernel_stats::cpu_seconds(proxy.pid());
                    let lat = request(&lab, haproxy::FRONTEND, false)?;
                    r.haproxy_cpu_us =
                        (kernel_stats::cpu_seconds(proxy.pid()) - cpu0) * 1e6 / requests;
                    r.haproxy = Summary::of(&lat);
                    out.haproxy.extend(lat);
                }
            }
        }
        out.rounds.push(r);
    }
    drop(proxy);
    lab.stop_daemon()?;
    Ok(out)
}

// ---------------------------------------------------------------- scenario 7

/// Restarts and reloads (the operations issue).
pub struct Operations {
    /// Per endpoint count: each restart's time from a new daemon's start to its
    /// metrics answering (after it resumed the pins; probing starts then), ms.
    pub restart_ms: Vec<(u32, Vec<f64>)>,
    /// The same with a config changed between restarts (as after an upgrade: the
    /// programs are loaded and verified anew, the config maps written), ms.
    pub restart_anew_ms: Vec<(u32, Vec<f64>)>,
    /// SIGKILL and restart under 32 clients connecting to an OPEN, blackholed
    /// upstream: their attempts, and how many were not failed fast (reached it).
    pub kill_attempts: usize,
    pub kill_reached: usize,
    /// How long the daemon was down (kill to the new one answering), ms.
    pub kill_gap_ms: f64,
    /// Reloads of `reload_endpoints` endpoints with one changed: SIGHUP to the
    /// log's "config reloaded", ms each.
    pub reload_endpoints: u32,
    pub reload_ms: Vec<f64>,
    /// connect()+close() p99 to a CLOSED upstream, µs: rounds during a reload and
    /// rounds without one, in ABBA order.
    pub p99_during: Vec<f64>,
    pub p99_without: Vec<f64>,
}

/// Waits until the daemon's log holds `n` lines with `what`; returns when.
fn wait_log(lab: &Lab, what: &str, n: usize, within: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if lab.daemon_log().matches(what).count() >= n {
            return Ok(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    anyhow::bail!("no {n}th {what:?} within {within:?}:\n{}", lab.daemon_log())
}

pub fn operations(lab_bin: &Path, plan: &Plan) -> anyhow::Result<Operations> {
    let mut lab = Lab::new("bops", lab_bin)?;
    lab.sink(SINK)?;
    let runs = if plan.quick { 1 } else { 3 };

    // Restart: the pins are there (a first daemon made them); each run kills the
    // daemon and times a new one's start.
    let (mut restart_ms, mut restart_anew_ms) = (Vec::new(), Vec::new());
    for &n in &plan.restart_endpoints {
        let eps = endpoints(n);
        let config = api_config(&eps, "");
        lab.start_daemon(&config)?;
        let mut times = Vec::new();
        for _ in 0..runs {
            lab.signal_daemon(nix::sys::signal::Signal::SIGKILL)?;
            let t = Instant::now();
            lab.start_daemon(&config)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            // Each start writes a log of its own.
            anyhow::ensure!(
                lab.daemon_log().contains("resumed the pinned links"),
                "a restart with the same config did not resume the pins:\n{}",
                lab.daemon_log()
            );
        }
        restart_ms.push((n, times));
        let mut times = Vec::new();
        for i in 0..runs {
            // Each run's config differs from the last one's.
            let changed = api_config(&eps, &format!("failure_threshold = {}", 10 + i));
            lab.signal_daemon(nix::sys::signal::Signal::SIGKILL)?;
            lab.write_config(&changed)?;
            let t = Instant::now();
            lab.start_daemon(&changed)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(
                lab.daemon_log()
                    .contains("loading the programs anew: the config changed"),
                "a restart with a changed config did not load anew:\n{}",
                lab.daemon_log()
            );
        }
        lab.stop_daemon()?;
        restart_anew_ms.push((n, times));
    }

    // SIGKILL and restart while 32 clients connect to an OPEN upstream.
    lab.blackhole(UPSTREAM_V4)?;
    let config = api_config(
        &[SINK.to_string()],
        "failure_threshold = 1\nopen_duration = \"1h\"",
    );
    lab.start_daemon(&config)?;
    lab.client(&["--to", SINK, "--count", "1", "--timeout-ms", "1500"])?;
    let load = lab
        .client_command(&[
            "--to",
            SINK,
            "--count",
            "400",
            "--concurrency",
            "32",
            "--interval-ms",
            "10",
            "--timeout-ms",
            "1500",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    lab.signal_daemon(nix::sys::signal::Signal::SIGKILL)?;
    lab.start_daemon(&config)?;
    let kill_gap_ms = t.elapsed().as_secs_f64() * 1e3;
    let out = load.wait_with_output()?;
    let attempts = parse_attempts(&String::from_utf8_lossy(&out.stdout))?;
    let kill_reached = attempts
        .iter()
        .filter(|a| a.errno != Some(libc::ECONNREFUSED) || a.latency_us >= 100_000.0)
        .count();
    lab.stop_daemon()?;
    lab.restore(UPSTREAM_V4)?;

    // Reloads of a large config with one endpoint changed, and a CLOSED
    // upstream's connect p99 during a reload against without.
    let n = *plan
        .restart_endpoints
        .last()
        .context("restart endpoint counts")?;
    let mut eps = endpoints(n);
    lab.start_daemon(&api_config(&eps, ""))?;
    let mut reload_ms = Vec::new();
    let (mut p99_during, mut p99_without) = (Vec::new(), Vec::new());
    let pid = nix::unistd::Pid::from_raw(lab.daemon_pid().context("daemon pid")? as i32);
    let per_round = if plan.quick { "1000" } else { "3000" };
    let round = |lab: &Lab| -> anyhow::Result<std::process::Child> {
        Ok(lab
            .client_command(&["--to", SINK, "--count", per_round, "--linger0"])
            .stdout(std::process::Stdio::piped())
            .spawn()?)
    };
    let p99 = |child: std::process::Child| -> anyhow::Result<f64> {
        let out = child.wait_with_output()?;
        let a = parse_attempts(&String::from_utf8_lossy(&out.stdout))?;
        Ok(Summary::of(&warm(latencies(&a))).p99)
    };
    for i in 0..runs.max(2) {
        // ABBA: without, during, during, without, ...
        let during_first = i % 2 == 1;
        for during in [during_first, !during_first] {
            if during {
                let last = eps.len() - 1;
                eps[last] = format!("10.99.{}.{}:80", i / 250, i % 250 + 1);
                lab.write_config(&api_config(&eps, ""))?;
                let client = round(&lab)?;
                let t = Instant::now();
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)?;
                let done = wait_log(
                    &lab,
                    "config reloaded",
                    reload_ms.len() + 1,
                    Duration::from_secs(60),
                )?;
                reload_ms.push(done.duration_since(t).as_secs_f64() * 1e3);
                p99_during.push(p99(client)?);
            } else {
                p99_without.push(p99(round(&lab)?)?);
            }
        }
    }
    lab.stop_daemon()?;
    Ok(Operations {
        restart_ms,
        restart_anew_ms,
        kill_attempts: attempts.len(),
        kill_reached,
        kill_gap_ms,
        reload_endpoints: n,
        reload_ms,
        p99_during,
        p99_without,
    })
}
