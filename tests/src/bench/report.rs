//! BENCHMARKS.md: a headline table of every target, then one section per scenario,
//! each figure next to its baseline from the same run, the target, and whether it
//! was met. Every sentence about a result is computed from the run.
use std::fmt::Write;

use crate::stats::{fmt_us, Spread, Summary};

use super::{
    kernel_stats::{ProgCost, SOCK_RELEASE},
    scenarios::{
        FailFast, Healthy, KernelPair, Operations, Outage, OutageVariant, Proxy, ScalePoint,
    },
    Plan,
};

/// Scenario 4's target, net of empty programs, per connect.
const KERNEL_NS_TARGET: f64 = 120.0;
/// Scenario 4's target with every policy on (issue 11's cost bound).
const KERNEL_EVERY_POLICY_NS_TARGET: f64 = 150.0;

/// One target of the run, for the headline table.
struct Headline {
    what: String,
    figure: String,
    target: String,
    verdict: String,
}

pub struct Report {
    intro: String,
    body: String,
    headline: Vec<Headline>,
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

/// What the spread of the rounds says about `value` against zero and against `bound`:
/// empty when it is clear of both.
/// `what` names the figure when the verdict is about something else.
fn noise_note(
    spread: &Spread,
    value: f64,
    bound: f64,
    what: &str,
    unit: impl Fn(f64) -> String,
) -> String {
    let noise = spread.half_range();
    if spread.n < 2 {
        String::new()
    } else if value.abs() <= noise {
        format!(", {what}within the measured noise (±{})", unit(noise))
    } else if (value - bound).abs() <= noise {
        format!(
            ", the bound lies within the measured noise (±{})",
            unit(noise)
        )
    } else {
        String::new()
    }
}

fn signed_us(us: f64) -> String {
    format!("{us:+.2} µs")
}

/// Whole nanoseconds; rounded first so that a tiny negative never prints as "-0".
fn ns(v: f64) -> String {
    format!("{} ns", fmt0(v))
}

/// `median (min – max)` of per-round figures.
fn med_range(s: &Spread, unit: impl Fn(f64) -> String) -> String {
    format!("{} ({} – {})", unit(s.median), unit(s.min), unit(s.max))
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

pub(super) fn per_connect(programs: &[ProgCost], connects: u32) -> f64 {
    programs.iter().map(|p| p.run_ns).sum::<u64>() as f64 / connects.max(1) as f64
}

/// The empty program of `p`'s kernel type in the same pair, ns per run.
fn empty_ns(pair: &KernelPair, p: &ProgCost) -> Option<f64> {
    pair.empty
        .iter()
        .find(|e| e.prog_type == p.prog_type)
        .map(ProgCost::ns_per_run)
}

/// One pair's net cost per connect: each program's time per run less its empty
/// program's, times its runs. A program with no empty program of its type counts raw.
fn net_per_connect(pair: &KernelPair) -> f64 {
    pair.breaker
        .iter()
        .map(|p| (p.ns_per_run() - empty_ns(pair, p).unwrap_or(0.0)) * p.runs as f64)
        .sum::<f64>()
        / pair.connects.max(1) as f64
}

/// One table of scenario 4 (a row per program and an "all" row) for `pairs`;
/// returns the net and raw spreads per connect and the runs-per-connect line.
fn kernel_table(o: &mut String, pairs: &[KernelPair]) -> (Spread, Spread, String) {
    let _ = writeln!(
            o,
            "| program | runs per connect | ns per run | ns per connect | empty program of its type, ns per run | net ns per connect: median (min – max) |\n|---|---|---|---|---|---|"
        );
    let mut names: Vec<&str> = Vec::new();
    for pair in pairs {
        for p in &pair.breaker {
            if !names.contains(&p.name.as_str()) {
                names.push(&p.name);
            }
        }
    }
    let mut runs_per_connect = Vec::new();
    for name in &names {
        let rows: Vec<(&KernelPair, &ProgCost)> = pairs
            .iter()
            .filter_map(|k| k.breaker.iter().find(|p| p.name == *name).map(|p| (k, p)))
            .collect();
        let per = |k: &KernelPair| k.connects.max(1) as f64;
        let runs = Spread::of(
            &rows
                .iter()
                .map(|(k, p)| p.runs as f64 / per(k))
                .collect::<Vec<_>>(),
        );
        let ns_run = Spread::of(&rows.iter().map(|(_, p)| p.ns_per_run()).collect::<Vec<_>>());
        let ns_conn = Spread::of(
            &rows
                .iter()
                .map(|(k, p)| p.run_ns as f64 / per(k))
                .collect::<Vec<_>>(),
        );
        let empties: Vec<f64> = rows.iter().filter_map(|(k, p)| empty_ns(k, p)).collect();
        let net = Spread::of(
            &rows
                .iter()
                .map(|(k, p)| {
                    (p.ns_per_run() - empty_ns(k, p).unwrap_or(0.0)) * p.runs as f64 / per(k)
                })
                .collect::<Vec<_>>(),
        );
        let _ = writeln!(
            o,
            "| {name} | {:.2} | {} | {} | {} | {} |",
            runs.median,
            fmt0(ns_run.median),
            fmt0(ns_conn.median),
            if empties.is_empty() {
                "none: counted in full".to_string()
            } else {
                fmt0(Spread::of(&empties).median)
            },
            med_range(&net, ns)
        );
        runs_per_connect.push((name.to_string(), runs.median));
    }
    let raw = Spread::of(
        &pairs
            .iter()
            .map(|k| per_connect(&k.breaker, k.connects))
            .collect::<Vec<_>>(),
    );
    let net = Spread::of(&pairs.iter().map(net_per_connect).collect::<Vec<_>>());
    let _ = writeln!(
        o,
        "| all | | | {} | | {} |\n",
        fmt0(raw.median),
        med_range(&net, ns)
    );
    if !names.contains(&SOCK_RELEASE) {
        let _ = writeln!(
            o,
            "The daemon held no `{SOCK_RELEASE}` program in this run, so none is counted.\n"
        );
    }
    let runs_of = |n: &str| {
        runs_per_connect
            .iter()
            .find(|(name, _)| name == n)
            .map_or("–".to_string(), |(_, r)| format!("{r:.2}"))
    };
    let runs_line = format!(
        "runs per connect: connect4 {}, sock_ops {}{}",
        runs_of(breaker_common::abi::program_names::CONNECT4),
        runs_of(breaker_common::abi::program_names::SOCK_OPS),
        if names.contains(&SOCK_RELEASE) {
            format!(", sock_release {}", runs_of(SOCK_RELEASE))
        } else {
            String::new()
        }
    );
    (net, raw, runs_line)
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
            "Written by `{command}`. Every figure is set against a baseline measured in the same run, on the same machine.{}\n",
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
            "Method: each scenario builds its own lab. The client runs in a network namespace, inside a cgroup; the breaker attaches to that cgroup. The upstreams live in another namespace, across a veth pair. Latency is measured by the client (`breaker-lab connect`) around each `connect()` (plus `close()`, or plus the HTTP exchange where stated). Where a scenario has rounds, a figure is the median over rounds, with the min – max of the rounds beside it. The measured noise of a figure is half that range: a figure within it of zero (or of its bound) is reported so. The plots are in `bench-plots/`.\n"
        );
        Report {
            intro: out,
            body: String::new(),
            headline: Vec::new(),
        }
    }

    fn head(&mut self, what: &str, figure: String, target: String, verdict: String) {
        self.headline.push(Headline {
            what: what.to_string(),
            figure,
            target,
            verdict,
        });
    }

    /// Every target of the run with its figure and verdict, as a Markdown table.
    pub fn headline_table(&self) -> String {
        let mut o = String::from("| scenario | figure | target | verdict |\n|---|---|---|---|\n");
        for h in &self.headline {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                h.what, h.figure, h.target, h.verdict
            );
        }
        o
    }

    pub fn render(&self) -> String {
        format!(
            "{}## Headline\n\nEvery target of this run, met or missed; the sections below say how each figure was measured.\n\n{}\n{}",
            self.intro,
            self.headline_table(),
            self.body
        )
    }

    pub fn healthy(&mut self, h: &Healthy, plan: &Plan) {
        let o = &mut self.body;
        let _ = writeln!(o, "## 1. Cost while healthy\n");
        let _ = writeln!(
            o,
            "`connect()` plus `close()` (SO_LINGER 0) to a local TCP listener in the upstream namespace. There are {} pairs of rounds, {} connects per round, with one daemon running throughout. In each pair the client runs one round in a bare cgroup (no breaker) and one in the cgroup the breaker is attached to, where the upstream is CLOSED and every connect is watched. The pairs alternate which side goes first (ABBA: breaker, bare, bare, breaker, ...). Each pair gives a difference, breaker minus bare, of the round medians and of the round p99s; the verdict is judged on the median of those paired differences. The first 1 % of each round is dropped as warm-up. Target: median and p99 within 5 % or 1 µs of the baseline, whichever is larger.\n",
            h.pairs.len(),
            h.per_round
        );
        let _ = writeln!(
            o,
            "| | no breaker, median of rounds | breaker, CLOSED, median of rounds | paired difference, median | pairs: min – max | pairs: p25 – p75 | ratio | target |\n|---|---|---|---|---|---|---|---|"
        );
        let mut heads = Vec::new();
        for (name, pick) in [
            ("median", (|s: &Summary| s.p50) as fn(&Summary) -> f64),
            ("p99", |s: &Summary| s.p99),
        ] {
            let bare: Vec<f64> = h.pairs.iter().map(|p| pick(&p.bare)).collect();
            let with: Vec<f64> = h.pairs.iter().map(|p| pick(&p.breaker)).collect();
            let diffs: Vec<f64> = h
                .pairs
                .iter()
                .map(|p| pick(&p.breaker) - pick(&p.bare))
                .collect();
            let (b, w, d) = (Spread::of(&bare), Spread::of(&with), Spread::of(&diffs));
            let allowed = (b.median * 0.05).max(1.0);
            let v = format!(
                "{}{}",
                verdict(d.median <= allowed),
                noise_note(&d, d.median, allowed, "", fmt_us)
            );
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {} | {} – {} | {} – {} | {:.3} | ≤ {}: {v} |",
                fmt_us(b.median),
                fmt_us(w.median),
                signed_us(d.median),
                signed_us(d.min),
                signed_us(d.max),
                signed_us(d.p25),
                signed_us(d.p75),
                (b.median + d.median) / b.median.max(0.001),
                signed_us(allowed)
            );
            heads.push((
                format!("1. connect+close while CLOSED, {name}, breaker − bare"),
                format!(
                    "{} (pairs {} – {})",
                    signed_us(d.median),
                    signed_us(d.min),
                    signed_us(d.max)
                ),
                format!("≤ {} (5 % or 1 µs)", signed_us(allowed)),
                v,
            ));
        }
        let _ = writeln!(
            o,
            "| connects | {} | {} | | | | | |\n",
            h.pairs.iter().map(|p| p.bare.n).sum::<usize>(),
            h.pairs.iter().map(|p| p.breaker.n).sum::<usize>()
        );
        let _ = writeln!(o, "Per pair, in the order run:\n");
        let _ = writeln!(
            o,
            "| pair | first | bare median | breaker median | difference | bare p99 | breaker p99 | difference |\n|---|---|---|---|---|---|---|---|"
        );
        for (i, p) in h.pairs.iter().enumerate() {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                i + 1,
                if p.breaker_first { "breaker" } else { "bare" },
                fmt_us(p.bare.p50),
                fmt_us(p.breaker.p50),
                signed_us(p.breaker.p50 - p.bare.p50),
                fmt_us(p.bare.p99),
                fmt_us(p.breaker.p99),
                signed_us(p.breaker.p99 - p.bare.p99),
            );
        }
        let _ = writeln!(o);
        for (what, figure, target, v) in heads {
            self.head(&what, figure, target, v);
        }
        self.kernel(h, plan);
    }

    fn kernel(&mut self, h: &Healthy, _plan: &Plan) {
        let o = &mut self.body;
        let _ = writeln!(o, "## 4. Cost of the kernel programs per connect\n");
        let per_round = h.kernel.first().map_or(0, |k| k.connects);
        let _ = writeln!(
            o,
            "The kernel's own BPF statistics (`kernel.bpf_stats_enabled=1`, on for this part only), over {} pairs of rounds of {per_round} connects as in scenario 1, after its latency rounds. In each pair, one round runs through the breaker's programs (the daemon's, on the lab cgroup) and one through empty programs of the same types (`breaker calibrate`, on the bare cgroup), in ABBA order. The empty programs hold what every program of a type pays under BPF stats: dispatch plus the stats' own clock reads. Net cost per connect: each program's ns per run less its empty program's, times its runs, summed, over the connects; a program with no empty program of its type counts in full. Every figure below is the median over pairs. Targets: under {KERNEL_NS_TARGET:.0} ns per connect net of empty programs with scenario 1's policy (consecutive failures only), and under {KERNEL_EVERY_POLICY_NS_TARGET:.0} ns with every policy on (a second daemon, started after the first stopped, with `{}` on the same upstream), judged on the median.\n",
            h.kernel.len(),
            super::scenarios::EVERY_POLICY.replace('\n', ", ")
        );
        let _ = writeln!(o, "Consecutive failures only:\n");
        let (net, raw, runs_line) = kernel_table(o, &h.kernel);
        let v = format!(
            "{}{}",
            verdict(net.median < KERNEL_NS_TARGET),
            noise_note(&net, net.median, KERNEL_NS_TARGET, "", ns)
        );
        let _ = writeln!(
            o,
            "Target: under {KERNEL_NS_TARGET:.0} ns per connect net of empty programs: {v} (median {} net over {} pairs, min – max {} – {}; {} raw). The breaker's {runs_line}.\n",
            ns(net.median),
            net.n,
            ns(net.min),
            ns(net.max),
            ns(raw.median)
        );
        self.head(
            "4. kernel programs per connect, net of empty programs",
            format!(
                "{} ({} – {}); {runs_line}",
                ns(net.median),
                ns(net.min),
                ns(net.max)
            ),
            format!("< {KERNEL_NS_TARGET:.0} ns"),
            v,
        );
        let o = &mut self.body;
        let _ = writeln!(o, "Every policy on:\n");
        let (all, all_raw, all_runs) = kernel_table(o, &h.kernel_every_policy);
        let v = format!(
            "{}{}",
            verdict(all.median < KERNEL_EVERY_POLICY_NS_TARGET),
            noise_note(&all, all.median, KERNEL_EVERY_POLICY_NS_TARGET, "", ns)
        );
        let _ = writeln!(
            o,
            "Target: under {KERNEL_EVERY_POLICY_NS_TARGET:.0} ns per connect net of empty programs with every policy on: {v} (median {} net over {} pairs, min – max {} – {}; {} raw; {} more than consecutive failures only). The breaker's {all_runs}.\n",
            ns(all.median),
            all.n,
            ns(all.min),
            ns(all.max),
            ns(all_raw.median),
            ns(all.median - net.median)
        );
        self.head(
            "4. kernel programs per connect, every policy on, net of empty programs",
            format!("{} ({} – {})", ns(all.median), ns(all.min), ns(all.max)),
            format!("< {KERNEL_EVERY_POLICY_NS_TARGET:.0} ns"),
            v,
        );
    }

    pub fn failfast(&mut self, f: &FailFast, plan: &Plan) {
        let (open, refused, dark) = (
            Summary::of(&f.open),
            Summary::of(&f.refused),
            Summary::of(&f.blackhole),
        );
        let o = &mut self.body;
        let _ = writeln!(o, "## 2. Fail-fast while open\n");
        let _ = writeln!(
            o,
            "`connect()` plus `close()`, {} times per row. Rows: an upstream whose breaker is OPEN (blackholed behind it, `ECONNREFUSED` from the kernel hook); a closed port that answers RST, without a breaker; a blackholed upstream without a breaker, measured {} time(s) to the kernel's own timeout with `net.ipv4.tcp_syn_retries=1` in the client namespace. Target: p99 under 50 µs while open.\n",
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
        let v = verdict(open.p99 < 50.0);
        let _ = writeln!(
            o,
            "\nTarget p99 < 50 µs while open: {v} ({}).\n",
            fmt_us(open.p99)
        );
        self.head(
            "2. connect() while OPEN, p99",
            format!(
                "{} (blackholed without the breaker: p50 {})",
                fmt_us(open.p99),
                fmt_us(dark.p50)
            ),
            "< 50 µs".into(),
            v.into(),
        );
    }

    pub fn outage(&mut self, runs: &[Outage], plan: &Plan) {
        let o = &mut self.body;
        let _ = writeln!(o, "## 3. The outage scenario from the field\n");
        let clients = runs.first().map_or(32, |r| r.clients);
        let threshold = runs.first().map_or(0, |r| r.threshold);
        let _ = writeln!(
            o,
            "{clients} concurrent clients, {} requests in all (connect, HTTP GET, response), each client pausing {} ms between requests, with a client timeout of {} ms (longer than the first SYN retransmission timeout, about 1 s, at which the breaker counts a blackholed connect; a client that gives up sooner abandons its connect, which never counts as a failure). The upstream goes dark (SYNs vanish) {} ms after the start and returns {} ms later. Breaker settings: failure_threshold {threshold}, open_duration {} ms, probe_interval {} ms; the \"rate policy too\" row adds `{}`. \"Reached the dead upstream\" counts requests started during the outage that waited on the dark: 0.9 s or more, most of the first SYN's timeout (1 s), whatever ended them: the kernel (ETIMEDOUT, as the breaker fails connects in flight once it turns connects away), a proxy's connect timeout, or the client's timeout; \"hung\" those that waited for the client's timeout. Latencies are those of requests started during the outage. One run per row; the spread within it is in the plot `outage-latency-cdf.png`.\n",
            plan.outage_requests, plan.outage_interval_ms, super::scenarios::CLIENT_TIMEOUT_MS, plan.dark_at_ms, plan.dark_for_ms, plan.open_duration_ms, plan.probe_interval_ms,
            super::scenarios::RATE_POLICY.replace('\n', ", ")
        );
        let _ = writeln!(
            o,
            "| | requests during outage | reached dead upstream | hung | failed fast | served by fallback | p50 | p99 | max | back → breaker closed | back → first served |\n|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in runs {
            let s = Summary::of(&r.during);
            let ms = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0} ms"));
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.variant.label(),
                s.n,
                r.reached_dead,
                r.hung,
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
        let mut heads = Vec::new();
        for r in runs.iter().filter(|r| r.variant.has_breaker()) {
            let bound = r.threshold as usize + r.clients as usize;
            let s = Summary::of(&r.during);
            let close_bound = (plan.open_duration_ms + plan.probe_interval_ms + 100) as f64;
            let closed = r
                .close_after_ms
                .map_or("never".into(), |v| format!("{v:.0} ms"));
            let (v_dead, v_p99, v_close) = (
                verdict(r.reached_dead <= bound),
                verdict(s.p99 < 1000.0),
                verdict(r.close_after_ms.is_some_and(|v| v <= close_bound)),
            );
            let _ = writeln!(
                o,
                "- {}: reached-dead {} ≤ {} (threshold + clients): {v_dead}. p99 during the outage {} < 1 ms: {v_p99}. Closed {closed} after the return, bound {close_bound:.0} ms (open_duration + probe_interval + 100 ms): {v_close}.",
                r.variant.label(),
                r.reached_dead,
                bound,
                fmt_us(s.p99),
            );
            if s.n > 0 && s.p99 >= 1000.0 {
                let share = r.hung as f64 / s.n as f64;
                let _ = writeln!(
                    o,
                    "  Of its {} requests during the outage, {} ({:.1} %) hung until the client's timeout{}.",
                    s.n,
                    r.hung,
                    100.0 * share,
                    if share > 0.01 {
                        ": more than 1 %, so the p99 is one of them"
                    } else {
                        ""
                    }
                );
            }
            let label = r.variant.label();
            heads.push((
                format!("3. outage, {label}: requests that reached the dead upstream"),
                format!("{}", r.reached_dead),
                format!("≤ {bound} (threshold + clients)"),
                v_dead,
            ));
            heads.push((
                format!("3. outage, {label}: p99 during the outage"),
                fmt_us(s.p99),
                "< 1 ms".into(),
                v_p99,
            ));
            heads.push((
                format!("3. outage, {label}: upstream back → breaker closed"),
                closed,
                format!("≤ {close_bound:.0} ms"),
                v_close,
            ));
        }
        let _ = writeln!(o);
        for (what, figure, target, v) in heads {
            self.head(&what, figure, target, v.into());
        }
    }

    pub fn scale(&mut self, scale: &super::scenarios::Scale, _plan: &Plan) {
        let points = &scale.points;
        let o = &mut self.body;
        let _ = writeln!(o, "## 5. Scale\n");
        let _ = writeln!(
            o,
            "Scenarios 1 and 4 with growing configurations. The endpoints are /32s with a port, all in one upstream, which puts them in the exact-endpoint table (`ENDPOINT_TABLE`). The measured destination is one of them. The default-policy row first makes one connect to each of that many distinct destinations that answer RST (addresses of a /16 the upstream namespace owns, nothing listening), from the lab cgroup, so that each is a failure the breaker sees; then the measured connects go to a healthy destination of their own. Kernel ns per connect is raw (BPF stats, empty programs not taken off). Memory: the `memlock` of the daemon's map fds (/proc/PID/fdinfo), and the daemon's RSS after the run. One run per row; the smallest and largest endpoint rows' kernel cost is measured again in pairs (each pair's order alternating), and their ratio is the median over the rows' pair and those, its noise half their spread. Targets: cost at the largest endpoint count within 10 % of cost at 10; daemon RSS under 50 MiB at the largest endpoint count.\n"
        );
        let _ = writeln!(
            o,
            "| configuration | connect+close p50 | p99 | kernel ns per connect | kernel map memory | daemon RSS | daemon start | default-policy entries held |\n|---|---|---|---|---|---|---|---|"
        );
        for p in points {
            let s = Summary::of(&p.connect);
            let held = match &p.fill {
                None => "–".to_string(),
                Some((_, Ok(n))) => n.to_string(),
                Some((_, Err(e))) => format!("not counted: {e}"),
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {:.0} ns | {:.1} MiB | {:.1} MiB | {:.0} ms | {held} |",
                p.label,
                fmt_us(s.p50),
                fmt_us(s.p99),
                per_connect(&p.programs, p.connects),
                p.map_bytes as f64 / 1048576.0,
                p.rss_bytes as f64 / 1048576.0,
                p.startup_ms
            );
        }
        for p in points {
            if let Some((f, held)) = &p.fill {
                let held = match held {
                    Ok(n) => format!(
                        "`DEFAULT_STATES` then held {n} entries, counted by walking its keys"
                    ),
                    Err(e) => format!("counting `DEFAULT_STATES` failed: {e}"),
                };
                let _ = writeln!(
                    o,
                    "\nThe fill for \"{}\": {} connects to distinct destinations in {:.1} s, {} of them refused. {held}.",
                    p.label, f.attempted, f.secs, f.refused
                );
            }
        }
        let endpoint_points: Vec<&ScalePoint> =
            points.iter().filter(|p| p.fill.is_none()).collect();
        let mut heads = Vec::new();
        if let (Some(first), Some(last)) = (endpoint_points.first(), endpoint_points.last()) {
            let (a, b) = (
                per_connect(&first.programs, first.connects),
                per_connect(&last.programs, last.connects),
            );
            let ratios: Vec<f64> = std::iter::once((a, b))
                .chain(scale.repeats.iter().copied())
                .map(|(a, b)| b / a.max(1.0))
                .collect();
            let ratio = Spread::of(&ratios);
            let (ca, cb) = (
                Summary::of(&first.connect).p50,
                Summary::of(&last.connect).p50,
            );
            let rss = last.rss_bytes as f64 / 1048576.0;
            let (v_k, v_c, v_r) = (
                verdict(ratio.median <= 1.10),
                verdict(cb <= ca * 1.10),
                verdict(last.rss_bytes < 50 * 1048576),
            );
            // Against no change (1x) and against the bound, as a change from 1x.
            let k_note = noise_note(&ratio, ratio.median - 1.0, 0.10, "the change is ", |v| {
                format!("{v:.2}x")
            });
            let pairs: Vec<String> = ratios.iter().map(|r| format!("{r:.2}x")).collect();
            let _ = writeln!(
                o,
                "\nKernel cost at {} vs {}: {:.2}x, the median of {} pairs ({}) ({v_k}{k_note}). connect+close p50: {:.3}x ({v_c}). Daemon RSS at {}: {rss:.1} MiB ({v_r}).\n",
                last.label,
                first.label,
                ratio.median,
                ratios.len(),
                pairs.join(", "),
                cb / ca.max(0.001),
                last.label,
            );
            heads.push((
                format!("5. kernel cost, {} vs {}", last.label, first.label),
                format!(
                    "{:.2}x, median of {} pairs (the rows': {b:.0} ns vs {a:.0} ns{})",
                    ratio.median,
                    ratios.len(),
                    // One pair has no noise to speak of.
                    if ratio.n >= 2 {
                        format!("; noise ±{:.2}x", ratio.half_range())
                    } else {
                        String::new()
                    }
                ),
                "≤ 1.10x".to_string(),
                format!("{v_k}{k_note}"),
            ));
            heads.push((
                format!("5. connect+close p50, {} vs {}", last.label, first.label),
                format!("{:.3}x", cb / ca.max(0.001)),
                "≤ 1.10x".to_string(),
                v_c.to_string(),
            ));
            heads.push((
                format!("5. daemon RSS at {}", last.label),
                format!("{rss:.1} MiB"),
                "< 50 MiB".to_string(),
                v_r.to_string(),
            ));
        }
        for (what, figure, target, v) in heads {
            self.head(&what, figure, target, v);
        }
    }

    pub fn proxy(&mut self, p: Option<&Proxy>, outages: &[Outage], _plan: &Plan) {
        let o = &mut self.body;
        let _ = writeln!(o, "## 6. Against a userspace proxy (HAProxy)\n");
        let Some(p) = p else {
            let _ = writeln!(o, "HAProxy is not installed (`apt-get install haproxy`), so this scenario was skipped.\n");
            return;
        };
        let _ = writeln!(
            o,
            "HAProxy in TCP mode, in the client namespace, in front of the same upstream. It uses `observe layer4`, `error-limit 5`, `on-error mark-down` and active checks every probe_interval. {} rounds; in each, {} requests (connect, HTTP GET, response, one client) down each path, in an order that rotates from round to round. The daemon and HAProxy run throughout; the direct and HAProxy paths run in the bare cgroup, the breaker's path in the lab cgroup. BPF stats are on throughout, so the breaker's path also pays the stats' clock reads. Added latency is, within each round, the path's p50 minus the direct path's p50. CPU per request: for HAProxy, its process CPU time over its rounds; for the breaker, the kernel programs' run time (BPF stats) plus the daemon's CPU time over its rounds. CPU time from /proc comes in clock ticks (10 ms). Each cell is the median over rounds (min – max).\n",
            p.rounds.len(),
            p.requests
        );
        let s = |f: &dyn Fn(&super::scenarios::ProxyRound) -> f64| {
            Spread::of(&p.rounds.iter().map(f).collect::<Vec<_>>())
        };
        let added_b = s(&|r| r.breaker.p50 - r.direct.p50);
        let added_h = s(&|r| r.haproxy.p50 - r.direct.p50);
        let _ = writeln!(
            o,
            "| path | p50 | p99 | added latency (p50) | CPU per request |\n|---|---|---|---|---|"
        );
        let _ = writeln!(
            o,
            "| direct, no breaker | {} | {} | – | – |",
            med_range(&s(&|r| r.direct.p50), fmt_us),
            med_range(&s(&|r| r.direct.p99), fmt_us),
        );
        let _ = writeln!(
            o,
            "| direct, breaker attached | {} | {} | {} | {} |",
            med_range(&s(&|r| r.breaker.p50), fmt_us),
            med_range(&s(&|r| r.breaker.p99), fmt_us),
            med_range(&added_b, signed_us),
            med_range(&s(&|r| r.breaker_cpu_us), |v| format!("{v:.2} µs")),
        );
        let _ = writeln!(
            o,
            "| through HAProxy | {} | {} | {} | {} |",
            med_range(&s(&|r| r.haproxy.p50), fmt_us),
            med_range(&s(&|r| r.haproxy.p99), fmt_us),
            med_range(&added_h, signed_us),
            med_range(&s(&|r| r.haproxy_cpu_us), |v| format!("{v:.2} µs")),
        );
        let tenfold = added_b.median.max(0.0) * 10.0 <= added_h.median;
        let v = format!(
            "{}{}",
            verdict(tenfold),
            noise_note(
                &added_b,
                added_b.median,
                added_h.median / 10.0,
                "the breaker's added latency is ",
                fmt_us,
            )
        );
        let _ = writeln!(
            o,
            "\nTarget: the breaker adds at least 10x less latency than the proxy, on the medians over rounds: {v} (breaker {} vs HAProxy {}; the breaker's added latency in its rounds spans {} – {}).\n",
            signed_us(added_b.median),
            signed_us(added_h.median),
            signed_us(added_b.min),
            signed_us(added_b.max),
        );
        let mut heads = vec![(
            "6. latency added to a request, breaker vs HAProxy".to_string(),
            format!(
                "{} vs {}",
                signed_us(added_b.median),
                signed_us(added_h.median)
            ),
            "breaker ≤ HAProxy / 10".to_string(),
            v,
        )];
        let find = |v: OutageVariant| outages.iter().find(|r| r.variant == v);
        if let (Some(br), Some(hp)) = (find(OutageVariant::Breaker), find(OutageVariant::Haproxy)) {
            let v_dead = verdict(br.reached_dead <= hp.reached_dead);
            let v_back = verdict(match (br.first_served_after_ms, hp.first_served_after_ms) {
                (Some(a), Some(b)) => a <= b,
                (Some(_), None) => true,
                _ => false,
            });
            let ms = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.0} ms"));
            let _ = writeln!(
                o,
                "In the outage scenario (table 3, one run each), requests that reached the dead upstream: breaker {} vs HAProxy {}: {v_dead}. Recovery, from the upstream's return to the first request served: breaker {} vs HAProxy {}: {v_back}.\n",
                br.reached_dead,
                hp.reached_dead,
                ms(br.first_served_after_ms),
                ms(hp.first_served_after_ms),
            );
            heads.push((
                "6. outage: requests that reached the dead upstream, breaker vs HAProxy".into(),
                format!("{} vs {}", br.reached_dead, hp.reached_dead),
                "breaker ≤ HAProxy".into(),
                v_dead.into(),
            ));
            heads.push((
                "6. outage: upstream back → first request served, breaker vs HAProxy".into(),
                format!(
                    "{} vs {}",
                    ms(br.first_served_after_ms),
                    ms(hp.first_served_after_ms)
                ),
                "breaker ≤ HAProxy".into(),
                v_back.into(),
            ));
        }
        for (what, figure, target, v) in heads {
            self.head(&what, figure, target, v);
        }
    }
}

fn fmt0(v: f64) -> String {
    format!("{}", v.round() + 0.0)
}

impl Report {
    pub fn operations(&mut self, ops: &Operations, plan: &Plan) {
        let o = &mut self.body;
        let _ = writeln!(o, "## 7. Restart and reload\n");
        let _ = writeln!(
            o,
            "Restart: a daemon makes the pins, then each run SIGKILLs it and times a new one from its start until its metrics answer, which is after it has started probing. With the same binary and config (the runs check that each one did) the new daemon resumes the pinned links and maps as they are; with a config changed between runs, as after an upgrade, it loads and verifies the programs, writes the config maps and swaps the programs in under the pinned links. {} run(s) per endpoint count and case; the endpoints are /32s with a port in one upstream. Kill: 32 clients connect every 10 ms to an OPEN upstream whose address is blackholed, while the daemon is SIGKILLed and started again; an attempt that did not fail fast with ECONNREFUSED reached the dead upstream. Reload: {} endpoints, one changed per reload, SIGHUP to the log's `config reloaded`; meanwhile a client makes connect()+close() to a CLOSED upstream of the same config, against rounds with no reload (ABBA). Targets: restart under 1 s at 100 000 endpoints; 0 connects reaching the dead upstream; reload under 2 s at 100 000 endpoints; p99 during a reload within the noise of p99 without.\n",
            if plan.quick { 1 } else { 3 },
            ops.reload_endpoints
        );
        let _ = writeln!(
            o,
            "| endpoints | restart (resumed), median | min – max | config changed (loaded anew), median | min – max |\n|---|---|---|---|---|"
        );
        for ((n, times), (_, anew)) in ops.restart_ms.iter().zip(&ops.restart_anew_ms) {
            let (s, spread) = (Summary::of(times), Spread::of(times));
            let (a, a_spread) = (Summary::of(anew), Spread::of(anew));
            let _ = writeln!(
                o,
                "| {n} | {:.0} ms | {:.0} – {:.0} ms | {:.0} ms | {:.0} – {:.0} ms |",
                s.p50, spread.min, spread.max, a.p50, a_spread.min, a_spread.max
            );
        }
        let reload = Summary::of(&ops.reload_ms);
        let reload_spread = Spread::of(&ops.reload_ms);
        let during = Spread::of(&ops.p99_during);
        let without = Spread::of(&ops.p99_without);
        let noise = (without.max - without.min) / 2.0;
        let _ = writeln!(
            o,
            "\nKill: {} attempts by 32 clients, {} reached the dead upstream; the daemon was down {:.0} ms.\n\nReload of {} endpoints: median {:.0} ms ({:.0} – {:.0} ms over {} reloads). Closed-upstream connect p99: {:.1} µs during a reload ({:.1} – {:.1}), {:.1} µs without ({:.1} – {:.1}); the noise of the rounds without is ±{:.1} µs.\n",
            ops.kill_attempts,
            ops.kill_reached,
            ops.kill_gap_ms,
            ops.reload_endpoints,
            reload.p50,
            reload_spread.min,
            reload_spread.max,
            ops.reload_ms.len(),
            during.median,
            during.min,
            during.max,
            without.median,
            without.min,
            without.max,
            noise
        );
        let largest = ops.restart_ms.last();
        if let Some((n, times)) = largest {
            let median = Summary::of(times).p50;
            let met = *n >= 100_000 && median < 1000.0;
            self.head(
                "7. restart",
                format!("{median:.0} ms at {n} endpoints"),
                "under 1 s at 100 000".into(),
                if *n < 100_000 {
                    "not measured at 100 000 (quick run)".into()
                } else {
                    verdict(met).into()
                },
            );
        }
        self.head(
            "7. kill and restart",
            format!(
                "{} of {} connects reached the dead upstream",
                ops.kill_reached, ops.kill_attempts
            ),
            "0".into(),
            verdict(ops.kill_reached == 0).into(),
        );
        self.head(
            "7. reload",
            format!("{:.0} ms at {} endpoints", reload.p50, ops.reload_endpoints),
            "under 2 s at 100 000".into(),
            if ops.reload_endpoints < 100_000 {
                "not measured at 100 000 (quick run)".into()
            } else {
                verdict(reload.p50 < 2000.0).into()
            },
        );
        self.head(
            "7. p99 during reload",
            format!(
                "{:+.1} µs (noise ±{noise:.1})",
                during.median - without.median
            ),
            "within the noise".into(),
            verdict(during.median - without.median <= noise.max(1.0)).into(),
        );
    }
    pub fn detection(&mut self, rows: &[super::detection::DetectionRow]) {
        let o = &mut self.body;
        let _ = writeln!(o, "## 9. How fast a blackholed upstream is noticed\n");
        let _ = writeln!(
            o,
            "One client connects to the upstream one connect at a time (each waiting for the last, 5 ms apart), so a blackholed connect ends at the client's own timeout and the breaker opens after `failure_threshold` of them, `failure_threshold = {}`; the upstream goes dark (its SYNs vanish) 300 ms after the start. Time from the outage until the breaker is OPEN (polled every 10 ms from the metrics), for each run; 8 s without opening is given up on. A connect the client gives up on before any outcome is abandoned, never a failure; `connect_timeout` moves the timeout outcome to its first SYN retransmission. Target: OPEN within 0.8 s with `connect_timeout = \"200ms\"`.\n",
            super::detection::THRESHOLD
        );
        let _ = writeln!(o, "| | opened after (each run) | median |\n|---|---|---|");
        let fmt = |v: &Option<f64>| v.map_or("not within 8 s".to_string(), |s| format!("{s:.2} s"));
        let median = |r: &super::detection::DetectionRow| -> Option<f64> {
            let mut v: Vec<f64> = r
                .opened_after
                .iter()
                .map(|x| x.unwrap_or(f64::INFINITY))
                .collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v.get(v.len() / 2).copied().filter(|x| x.is_finite())
        };
        for r in rows {
            let runs: Vec<String> = r.opened_after.iter().map(fmt).collect();
            let _ = writeln!(
                o,
                "| {} | {} | {} |",
                r.label,
                runs.join(", "),
                fmt(&median(r))
            );
        }
        let fast = rows.iter().find(|r| r.connect_timeout.is_some());
        let worst = fast.map(|r| {
            r.opened_after
                .iter()
                .map(|x| x.unwrap_or(f64::INFINITY))
                .fold(0.0, f64::max)
        });
        let met = worst.is_some_and(|w| w < 0.8);
        let v = verdict(met);
        let _ = writeln!(
            o,
            "\nTarget OPEN within 0.8 s with connect_timeout 200 ms (every run): {v}.\n"
        );
        let today = rows
            .iter()
            .find(|r| r.connect_timeout.is_none() && r.client_timeout_ms > 1000)
            .and_then(median);
        self.head(
            "9. blackhole noticed (OPEN), connect_timeout 200 ms",
            format!(
                "slowest run {} (without it, a 1.5 s client: median {})",
                fmt(&worst.filter(|w| w.is_finite())),
                fmt(&today)
            ),
            "< 0.8 s".into(),
            v.into(),
        );
    }

    pub fn packet_lab(
        &mut self,
        f: &super::packet_lab::VmFailFast,
        t: &super::packet_lab::Throughput,
        plan: &Plan,
    ) {
        let (open, dark) = (Summary::of(&f.open), Summary::of(&f.blackhole));
        let o = &mut self.body;
        let _ = writeln!(
            o,
            "### The vm's connects while open
"
        );
        let _ = writeln!(
            o,
            "A \"vm\" namespace routed through the lab's host namespace, the packet path on the host side of its link (`vm0`, TC on a veth), no cgroup hook on its sockets. `connect()` plus `close()` from the vm, {} times (the first {} left out as warm-up): to an upstream whose breaker is OPEN (the ingress hook answers each SYN with a reset), and, without a breaker, to a blackholed upstream, {} time(s), to the vm kernel's own timeout with `tcp_syn_retries=1`. Target: p99 under 100 µs while open.\n",
            plan.failfast,
            plan.failfast as usize - f.open.len(),
            plan.blackhole_runs
        );
        let _ = writeln!(o, "| | p50 | p99 | max |\n|---|---|---|---|");
        for (name, s) in [
            ("breaker OPEN (reset)", open),
            ("blackholed, no breaker", dark),
        ] {
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {} |",
                fmt_us(s.p50),
                fmt_us(s.p99),
                fmt_us(s.max)
            );
        }
        let v = verdict(open.p99 < 100.0);
        let _ = writeln!(
            o,
            "\nTarget p99 < 100 µs while open: {v} ({}).\n",
            fmt_us(open.p99)
        );
        self.head(
            "8. the vm's connect() while OPEN, p99",
            format!(
                "{} (blackholed without the breaker: p50 {})",
                fmt_us(open.p99),
                fmt_us(dark.p50)
            ),
            "< 100 µs".into(),
            v.into(),
        );

        let (with, without) = (Summary::of(&t.with), Summary::of(&t.without));
        let spread = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
            (hi - lo) / 2.0 / without.p50.max(f64::MIN_POSITIVE) * 100.0
        };
        let loss = (1.0 - with.p50 / without.p50.max(f64::MIN_POSITIVE)) * 100.0;
        let noise = spread(&t.without).max(spread(&t.with));
        let o = &mut self.body;
        let _ = writeln!(
            o,
            "### Throughput through the host
"
        );
        let _ = writeln!(
            o,
            "iperf3 from the vm to the upstream through the host namespace, {} s per round, {} round(s) per side in ABBA order: with the daemon's programs on `vm0` (the transfer's destination a configured upstream: its SYN is tracked, every other segment is parsed and passed), and without (no daemon). Gbit/s at the receiver, median of the rounds. Half the spread of each side's rounds, as a share of the median without, is the noise (the larger side's). Target: at most 3 % lower with the programs.\n",
            t.seconds,
            t.with.len()
        );
        let _ = writeln!(o, "| | median | rounds |\n|---|---|---|");
        for (name, s, v) in [
            ("with the packet path", with, &t.with),
            ("without", without, &t.without),
        ] {
            let rounds: Vec<String> = v.iter().map(|g| format!("{g:.2}")).collect();
            let _ = writeln!(
                o,
                "| {name} | {:.2} Gbit/s | {} |",
                s.p50,
                rounds.join(", ")
            );
        }
        let met = loss <= 3.0;
        let v = if !met && loss < noise {
            format!("{}, within the measured noise", verdict(met))
        } else {
            verdict(met).to_string()
        };
        let change = format!(
            "{:.1} % {}",
            loss.abs(),
            if loss >= 0.0 { "lower" } else { "higher" }
        );
        let _ = writeln!(
            o,
            "\nWith the programs: {change} (noise ±{noise:.1} %). Target at most 3 % lower: {v}.\n"
        );
        self.head(
            "8. throughput through the packet path (iperf3)",
            format!("{change} than without (noise ±{noise:.1} %)"),
            "at most 3 % lower".into(),
            v,
        );
    }

    pub fn packet(&mut self, p: &super::packet::PacketCost) {
        let o = &mut self.body;
        let _ = writeln!(o, "## 8. Packet path: cost per packet\n");
        let _ = writeln!(
            o,
            "`brk_xdp_ingress` and `brk_tc_ingress` under BPF_PROG_TEST_RUN on the daemon's real maps (two upstreams, one CLOSED, one OPEN), for the SYNs one run per packet ({} packets per case and hook, each SYN from its own client port, so each starts its own flow or gets its own reset): the kernel's time per run, median, less the median of an empty program of the same type run on the same packets the same way (XDP {:.0} ns, TC {:.0} ns). The segment of an established flow changes nothing, so it is timed as the kernel's average over 10 000 repeats, in 20 batches (median), less the empty program's measured the same way. Two batches of the empty programs, one before and one after the cases, lie {:.0} ns apart: differences below that are noise. Targets (net): a segment of an established flow under 20 ns, a SYN to a CLOSED upstream under 80 ns, a SYN answered with a reset under 150 ns.\n",
            p.runs, p.empty_xdp.p50, p.empty_tc.p50, p.noise_ns
        );
        let _ = writeln!(
            o,
            "| packet | XDP median | XDP net | TC median | TC net | target (net) |\n|---|---|---|---|---|---|"
        );
        for r in &p.rows {
            let _ = writeln!(
                o,
                "| {} | {:.0} ns | {:.0} ns | {:.0} ns | {:.0} ns | under {:.0} ns |",
                r.case, r.xdp.p50, r.xdp_net, r.tc.p50, r.tc_net, r.target_ns
            );
        }
        let _ = writeln!(o);
        // What the design itself costs; whether a target lies below that is
        // the run's finding.
        for f in &p.floors {
            let below = match p.rows.iter().find(|r| r.case == f.of) {
                Some(r) if f.net > r.target_ns + p.noise_ns => format!(
                    " In this run the {:.0} ns target of \"{}\" lies below this floor by more than the noise.",
                    r.target_ns, r.case
                ),
                Some(r) => format!(
                    " In this run the {:.0} ns target of \"{}\" is not below this floor by more than the noise.",
                    r.target_ns, r.case
                ),
                None => String::new(),
            };
            let _ = writeln!(
                o,
                "The floor of \"{}\": `{}` (XDP) {}, on {} SYNs of their own clients, timed the same way: {:.0} ns median, {:.0} ns net of the empty XDP program.{below}\n",
                f.of, f.program, f.does, p.runs, f.summary.p50, f.net
            );
        }
        let rows: Vec<_> = p
            .rows
            .iter()
            .map(|r| (r.case, r.xdp_net, r.tc_net, r.target_ns))
            .collect();
        for (case, xdp, tc, target) in rows {
            let floor = p
                .floors
                .iter()
                .find(|f| f.of == case)
                .map_or(String::new(), |f| {
                    format!("; the design's floor (XDP) {:.0} ns", f.net)
                });
            self.head(
                &format!("8. packet: {case}"),
                format!(
                    "XDP {xdp:.0} ns, TC {tc:.0} ns net (noise ±{:.0}){floor}",
                    p.noise_ns
                ),
                format!("under {target:.0} ns net"),
                verdict(xdp < target && tc < target).into(),
            );
        }
    }
}
