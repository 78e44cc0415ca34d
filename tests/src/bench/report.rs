//! BENCHMARKS.md: one table per scenario, each figure next to its baseline from the
//! same run, the target, and whether it was met.
use std::fmt::Write;

use crate::stats::{fmt_us, Summary};

use super::{
    kernel_stats::ProgCost,
    scenarios::{FailFast, Healthy, Outage, OutageVariant, Proxy, ScalePoint},
    Plan,
};

pub struct Report {
    out: String,
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

fn first_line(path: &str, key: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn per_connect(programs: &[ProgCost], connects: u32) -> f64 {
    programs.iter().map(|p| p.run_ns).sum::<u64>() as f64 / connects.max(1) as f64
}

impl Report {
    pub fn new(plan: &Plan) -> Report {
        let mut out = String::new();
        let command = if plan.quick {
            "cargo xtask bench --quick"
        } else {
            "cargo xtask bench"
        };
        let _ = writeln!(out, "# Benchmarks\n");
        let _ = writeln!(
            out,
            "Written by `{command}`. Every figure is set against a baseline measured in the same run, on the same machine, and compared as a ratio.{}\n",
            if plan.quick {
                " **This is the quick form.** Each scenario runs briefly to keep the harness working. These figures prove nothing about speed."
            } else {
                ""
            }
        );
        let _ = writeln!(out, "| machine | |\n|---|---|");
        let _ = writeln!(
            out,
            "| CPU | {} |",
            first_line("/proc/cpuinfo", "model name")
        );
        let _ = writeln!(
            out,
            "| cores | {} |",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        );
        let _ = writeln!(
            out,
            "| memory | {} |",
            first_line("/proc/meminfo", "MemTotal")
        );
        let _ = writeln!(out, "| kernel | {} |", kernel());
        let _ = writeln!(out, "| date | {} |\n", date());
        let _ = writeln!(
            out,
            "Method: each scenario builds its own lab. The client runs in a network namespace, inside a cgroup; the breaker attaches to that cgroup. The upstreams live in another namespace, across a veth pair. Latency is measured by the client (`breaker-lab connect`) around each `connect()` (plus `close()`, or plus the HTTP exchange where stated). Spread is given as p25–p75, or as the range of the per-round medians. The plots are in `bench-plots/`. On a shared machine with few cores, a verdict within noise of its bound can flip from one run to the next. That happened here to the p99 of scenario 1 and to the comparison of requests that reached the dead upstream.\n"
        );
        Report { out }
    }

    pub fn render(&self) -> String {
        self.out.clone()
    }

    pub fn healthy(&mut self, h: &Healthy, plan: &Plan) {
        let (b, w) = (Summary::of(&h.baseline), Summary::of(&h.breaker));
        let o = &mut self.out;
        let _ = writeln!(o, "## 1. Cost while healthy\n");
        let _ = writeln!(
            o,
            "`connect()` plus `close()` (SO_LINGER 0) to a local TCP listener in the upstream namespace. There are {} rounds of {} connects per side, with one daemon running throughout. The rounds alternate the client between a bare cgroup (no breaker) and the cgroup the breaker is attached to, where the upstream is CLOSED and every connect is watched. The first 1 % of each round is dropped as warm-up. Target: median and p99 within 5 % or 1 µs of the baseline, whichever is larger.\n",
            plan.healthy_rounds, plan.healthy_per_round
        );
        let _ = writeln!(o, "| | no breaker | breaker, CLOSED | difference | ratio | target |\n|---|---|---|---|---|---|");
        for (name, x, y) in [("median", b.p50, w.p50), ("p99", b.p99, w.p99)] {
            let allowed = (x * 0.05).max(1.0);
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {:+.2} µs | {:.3} | {} (±{}) |",
                fmt_us(x),
                fmt_us(y),
                y - x,
                y / x,
                verdict(y - x <= allowed),
                fmt_us(allowed)
            );
        }
        let spread = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
            format!("{} – {}", fmt_us(lo), fmt_us(hi))
        };
        let _ = writeln!(
            o,
            "| spread of round medians | {} | {} | | | |",
            spread(&h.round_medians_baseline),
            spread(&h.round_medians_breaker)
        );
        let _ = writeln!(o, "| connects | {} | {} | | | |\n", b.n, w.n);

        let _ = writeln!(o, "## 4. Cost of each kernel program per run\n");
        let _ = writeln!(
            o,
            "The kernel's own BPF statistics (`kernel.bpf_stats_enabled=1`), over a separate run of {} connects as in scenario 1. Stats are switched on for that run only. The connect hooks run once per connect. sock_ops runs for several TCP events per connection (connect, established, state changes, RTO and the kernel's setup callbacks). Target: under 200 ns per connect for the connect-path programs.\n",
            h.stats_connects
        );
        write_programs(o, &h.programs, &h.empty_programs, h.stats_connects);
        let _ = writeln!(
            o,
            "TC and XDP programs do not exist yet. Their BPF_PROG_TEST_RUN cases (SYN to an upstream, SYN elsewhere, established data, reply, each against an empty program) will join this table with the packet path.\n"
        );
    }

    pub fn failfast(&mut self, f: &FailFast, plan: &Plan) {
        let (open, refused, dark) = (
            Summary::of(&f.open),
            Summary::of(&f.refused),
            Summary::of(&f.blackhole),
        );
        let o = &mut self.out;
        let _ = writeln!(o, "## 2. Fail-fast while open\n");
        let _ = writeln!(
            o,
            "`connect()` plus `close()`, {} times per row. Rows: an upstream whose breaker is OPEN (blackholed behind it, `ECONNREFUSED` from the kernel hook); a closed port that answers RST, without a breaker; a blackholed upstream without a breaker, measured {} time(s) to the kernel's own timeout with `net.ipv4.tcp_syn_retries=1` in the client namespace. The default of 6 takes about 127 s. Target: p99 under 50 µs while open.\n",
            plan.failfast, plan.blackhole_runs
        );
        let _ = writeln!(
            o,
            "| | p50 | p25–p75 | p99 | max | vs open (p50) |\n|---|---|---|---|---|---|"
        );
        for (name, s) in [
            ("breaker OPEN", open),
            ("refused port, no breaker", refused),
            ("blackholed, no breaker", dark),
        ] {
            let _ = writeln!(
                o,
                "| {name} | {} | {} – {} | {} | {} | {:.0}x |",
                fmt_us(s.p50),
                fmt_us(s.p25),
                fmt_us(s.p75),
                fmt_us(s.p99),
                fmt_us(s.max),
                s.p50 / open.p50.max(0.001)
            );
        }
        let _ = writeln!(
            o,
            "\nTarget p99 < 50 µs while open: {} ({}).\n",
            verdict(open.p99 < 50.0),
            fmt_us(open.p99)
        );
    }

    pub fn outage(&mut self, runs: &[Outage], plan: &Plan) {
        let o = &mut self.out;
        let _ = writeln!(o, "## 3. The outage scenario from the field\n");
        let clients = runs.first().map_or(32, |r| r.clients);
        let _ = writeln!(
            o,
            "{clients} concurrent clients, {} requests in all (connect, HTTP GET, response), each client pausing {} ms between requests, with a client timeout of 1 s. The upstream goes dark (SYNs vanish) {} ms after the start and returns {} ms later. Breaker settings: failure_threshold 5, open_duration {} ms, probe_interval {} ms. \"Reached the dead upstream\" counts requests started during the outage that hung for the client's timeout. Latencies are those of requests started during the outage. One run per row; the spread within it is in the plot `outage-latency-cdf.png`.\n",
            plan.outage_requests, plan.outage_interval_ms, plan.dark_at_ms, plan.dark_for_ms, plan.open_duration_ms, plan.probe_interval_ms
        );
        let _ = writeln!(
            o,
            "| | requests during outage | reached dead upstream | failed fast | served by fallback | p50 | p99 | max | back → breaker closed | back → first served |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in runs {
            let s = Summary::of(&r.during);
            let ms = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0} ms"));
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.variant.label(),
                s.n,
                r.reached_dead,
                r.failed_fast,
                r.served_by_fallback,
                fmt_us(s.p50),
                fmt_us(s.p99),
                fmt_us(s.max),
                ms(r.close_after_ms),
                ms(r.first_served_after_ms)
            );
        }
        let _ = writeln!(o, "\nTargets, for the breaker rows:\n");
        for r in runs.iter().filter(|r| {
            matches!(
                r.variant,
                OutageVariant::Breaker | OutageVariant::BreakerFallback
            )
        }) {
            let bound = r.threshold as usize + r.clients as usize;
            let p99 = Summary::of(&r.during).p99;
            let close_bound = (plan.open_duration_ms + plan.probe_interval_ms + 100) as f64;
            let _ = writeln!(
                o,
                "- {}: reached-dead {} ≤ {} (threshold + clients): {}. p99 during the outage {} < 1 ms: {}. Closed {} after the return, bound {} ms (open_duration + probe_interval + 100 ms): {}.",
                r.variant.label(),
                r.reached_dead,
                bound,
                verdict(r.reached_dead <= bound),
                fmt_us(p99),
                verdict(p99 < 1000.0),
                r.close_after_ms.map_or("never".into(), |v| format!("{v:.0} ms")),
                close_bound,
                verdict(r.close_after_ms.is_some_and(|v| v <= close_bound))
            );
        }
        let _ = writeln!(
            o,
            "\nWith a fallback, a request during the outage is a real request to the fallback server. Its latency is that server's service time under the load of every client at once, not the fail-fast path.\n"
        );
        let _ = writeln!(
            o,
            "\nThe p99 target is missed by design whenever the hung requests are more than 1 % of those in the outage window. The first `failure_threshold` requests and the connects in flight at the trip cannot fail fast: the breaker only learns from them. A HALF_OPEN trial to a still-dark upstream also waits out its own timeout. How many that is depends on how long the outage lasts against the request rate.\n"
        );
    }

    pub fn scale(&mut self, points: &[ScalePoint], _plan: &Plan) {
        let o = &mut self.out;
        let _ = writeln!(o, "## 5. Scale\n");
        let _ = writeln!(
            o,
            "Scenarios 1 and 4 with growing configurations. The endpoints are /32s with a port, all in one upstream, which puts them in the exact-endpoint hash. The measured destination is one of them. The default-policy row fills its LRU map with that many distinct destinations before measuring: non-blocking connects into a blackholed /16, then the measured connects to a destination of their own. Memory: the `memlock` of the daemon's map fds (/proc/PID/fdinfo), and the daemon's RSS after the run. One run per row. Targets: cost at the largest endpoint count within 10 % of cost at 10; daemon RSS under 50 MiB at 100 000 endpoints.\n"
        );
        let _ = writeln!(
            o,
            "| configuration | connect+close p50 | p99 | kernel ns per connect | kernel map memory | daemon RSS | daemon start |\n|---|---|---|---|---|---|---|"
        );
        for p in points {
            let s = Summary::of(&p.connect);
            let _ = writeln!(
                o,
                "| {} | {} | {} | {:.0} ns | {:.1} MiB | {:.1} MiB | {:.0} ms |",
                p.label,
                fmt_us(s.p50),
                fmt_us(s.p99),
                per_connect(&p.programs, p.connects),
                p.map_bytes as f64 / 1048576.0,
                p.rss_bytes as f64 / 1048576.0,
                p.startup_ms
            );
        }
        let endpoint_points: Vec<&ScalePoint> = points
            .iter()
            .filter(|p| p.label.ends_with("endpoints"))
            .collect();
        if let (Some(first), Some(last)) = (endpoint_points.first(), endpoint_points.last()) {
            let (a, b) = (
                per_connect(&first.programs, first.connects),
                per_connect(&last.programs, last.connects),
            );
            let (ca, cb) = (
                Summary::of(&first.connect).p50,
                Summary::of(&last.connect).p50,
            );
            let _ = writeln!(
                o,
                "\nKernel cost at {} vs {}: {:.2}x ({}). connect+close p50: {:.3}x ({}). Daemon RSS at {}: {:.1} MiB ({}).\n",
                last.label,
                first.label,
                b / a.max(1.0),
                verdict(b <= a * 1.10),
                cb / ca.max(0.001),
                verdict(cb <= ca * 1.10),
                last.label,
                last.rss_bytes as f64 / 1048576.0,
                verdict(last.rss_bytes < 50 * 1048576)
            );
        }
    }

    pub fn proxy(&mut self, p: Option<&Proxy>, outages: &[Outage], _plan: &Plan) {
        let o = &mut self.out;
        let _ = writeln!(o, "## 6. Against a userspace proxy (HAProxy)\n");
        let Some(p) = p else {
            let _ = writeln!(o, "HAProxy is not installed (`apt-get install haproxy`), so this scenario was skipped.\n");
            return;
        };
        let (d, b, h) = (
            Summary::of(&p.direct),
            Summary::of(&p.breaker),
            Summary::of(&p.haproxy),
        );
        let _ = writeln!(
            o,
            "HAProxy in TCP mode, in the client namespace, in front of the same upstream. It uses `observe layer4`, `error-limit 5`, `on-error mark-down` and active checks every probe_interval. {} requests per path (connect, HTTP GET, response), one client. Added latency is the path's p50 minus the direct path's p50. CPU per request: for HAProxy, its process CPU time; for the breaker, the kernel programs' run time (BPF stats) plus the daemon's CPU time over the run. One run per path; CPU time comes from /proc in clock ticks (10 ms), so the HAProxy figure is coarse.\n",
            p.requests
        );
        let added_b = b.p50 - d.p50;
        let added_h = h.p50 - d.p50;
        let cpu_b =
            (p.breaker_bpf_ns as f64 / 1e3 + p.breaker_daemon_cpu_s * 1e6) / p.requests as f64;
        let cpu_h = p.haproxy_cpu_s * 1e6 / p.requests as f64;
        let _ = writeln!(
            o,
            "| path | p50 | p99 | added latency (p50) | CPU per request |\n|---|---|---|---|---|"
        );
        let _ = writeln!(
            o,
            "| direct, no breaker | {} | {} | – | – |",
            fmt_us(d.p50),
            fmt_us(d.p99)
        );
        let _ = writeln!(
            o,
            "| direct, breaker attached | {} | {} | {:+.1} µs | {:.2} µs |",
            fmt_us(b.p50),
            fmt_us(b.p99),
            added_b,
            cpu_b
        );
        let _ = writeln!(
            o,
            "| through HAProxy | {} | {} | {:+.1} µs | {:.2} µs |",
            fmt_us(h.p50),
            fmt_us(h.p99),
            added_h,
            cpu_h
        );
        let tenfold = added_b.max(0.0) * 10.0 <= added_h;
        let _ = writeln!(
            o,
            "\nTarget: the breaker adds at least 10x less latency than the proxy: {} ({:+.1} µs vs {:+.1} µs). Run-to-run noise of about 1 µs bounds how small the breaker's side can be measured.\n",
            verdict(tenfold),
            added_b,
            added_h
        );
        let find = |v: OutageVariant| outages.iter().find(|r| r.variant == v);
        if let (Some(br), Some(hp)) = (find(OutageVariant::Breaker), find(OutageVariant::Haproxy)) {
            let _ = writeln!(
                o,
                "In the outage scenario (table 3), requests that reached the dead upstream: breaker {} vs HAProxy {}: {}. Recovery, from the upstream's return to the first request served: breaker {} vs HAProxy {}: {}.\n",
                br.reached_dead,
                hp.reached_dead,
                verdict(br.reached_dead <= hp.reached_dead),
                br.first_served_after_ms.map_or("–".into(), |v| format!("{v:.0} ms")),
                hp.first_served_after_ms.map_or("–".into(), |v| format!("{v:.0} ms")),
                verdict(match (br.first_served_after_ms, hp.first_served_after_ms) {
                    (Some(a), Some(b)) => a <= b,
                    (Some(_), None) => true,
                    _ => false,
                })
            );
        }
    }
}

fn write_programs(o: &mut String, programs: &[ProgCost], empty: &[ProgCost], connects: u32) {
    let _ = writeln!(
        o,
        "| program | runs | runs per connect | ns per run | ns per connect | empty program of the type, ns per run | net ns per connect |\n|---|---|---|---|---|---|---|"
    );
    let empty_for = |name: &str| {
        let kind = if name.contains("sock_ops") {
            "sockops"
        } else {
            "connect"
        };
        empty
            .iter()
            .find(|e| e.name.contains(kind))
            .map(ProgCost::ns_per_run)
            .unwrap_or(0.0)
    };
    let mut net_total = 0.0;
    for p in programs {
        let per = connects.max(1) as f64;
        let net = (p.ns_per_run() - empty_for(&p.name)).max(0.0) * p.runs as f64 / per;
        net_total += net;
        let _ = writeln!(
            o,
            "| {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} |",
            p.name,
            p.runs,
            p.runs as f64 / per,
            p.ns_per_run(),
            p.run_ns as f64 / per,
            empty_for(&p.name),
            net
        );
    }
    let total = per_connect(programs, connects);
    let _ = writeln!(o, "| all | | | | {total:.0} | | {net_total:.0} |");
    let _ = writeln!(
        o,
        "\nThe empty programs were measured in the same way, on the same cgroup, right after. They hold what every program of the type pays under BPF stats: dispatch plus the stats' own clock reads. The net column takes that away.\n\nTarget: under 200 ns per connect for the connect-path programs, net of empty programs: {} ({net_total:.0} ns net, {total:.0} ns raw).\n",
        verdict(net_total < 200.0)
    );
    if net_total >= 200.0 {
        let _ = writeln!(
            o,
            "Where the time goes: sock_ops runs six times per watched connect, and four of those runs return at once. The other two are the connect callback, which decides whether to watch, and the outcome. Each of them resolves the destination to its breaker again, through the exact-endpoint hash. In an experiment, taking that resolution out of the connect callback saved 40–50 ns per connect. Another variant was tried and dropped: connect4 turning the callbacks on itself with `bpf_setsockopt(TCP_BPF_SOCK_OPS_CB_FLAGS)` (kernel 6.12+). It cut sock_ops by about 100 ns, but the two sockopt helpers added about 90 ns to connect4, and an early STATE flag adds a seventh sock_ops run. There was no net gain. What would close the gap: resolve once per connect and carry the breaker in socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`), so that the outcome needs no second lookup.\n"
        );
    }
}
