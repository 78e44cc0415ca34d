//! `cargo xtask bench`: every scenario of the benchmark issue, each against its
//! baseline measured in the same run, written to BENCHMARKS.md with PNG plots.
//!
//! Figures live here, never in timed tests: the machines are shared and noisy, so
//! each scenario compares ratios within one run and reports its spread.
mod detection;
mod fill;
mod haproxy;
mod kernel_stats;
mod packet;
mod packet_lab;
mod plot;
mod report;
mod scenarios;

use std::path::Path;

use anyhow::Context;

pub use crate::stats::Summary;
pub use kernel_stats::StatsEnabled;
pub use report::Report;

/// How much each scenario does.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    /// Scenario 1: pairs of rounds (one per side, in ABBA order), connects per round.
    pub healthy_rounds: u32,
    pub healthy_per_round: u32,
    /// Scenario 4: pairs of rounds (breaker programs, empty programs), connects per round.
    pub kernel_rounds: u32,
    pub kernel_per_round: u32,
    /// Scenario 2: connects per variant; blackhole timeouts measured.
    pub failfast: u32,
    pub blackhole_runs: u32,
    /// Scenario 3: total requests by 32 clients, their pacing, and the outage window.
    pub outage_requests: u32,
    pub outage_interval_ms: u64,
    pub dark_at_ms: u64,
    pub dark_for_ms: u64,
    pub open_duration_ms: u64,
    pub probe_interval_ms: u64,
    /// Scenario 5: endpoint counts, connects per count, default-policy destinations.
    pub scale_endpoints: Vec<u32>,
    pub scale_connects: u32,
    /// Pairs of the smallest and largest endpoint rows measured again, in
    /// alternating order, so the kernel cost ratio has a noise.
    pub scale_repeats: u32,
    pub lru_destinations: u32,
    /// Scenario 6: rounds, and requests through each path per round.
    pub proxy_rounds: u32,
    pub proxy_requests: u32,
    /// Scenario 7: endpoint counts restarted (the last one also reloaded).
    pub restart_endpoints: Vec<u32>,
    /// Scenario 8: packets per case and hook, one run each.
    pub packet_runs: u32,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            quick: false,
            healthy_rounds: 10,
            healthy_per_round: 10_000,
            kernel_rounds: 6,
            kernel_per_round: 10_000,
            failfast: 10_000,
            blackhole_runs: 3,
            outage_requests: 10_000,
            outage_interval_ms: 15,
            dark_at_ms: 1000,
            dark_for_ms: 3000,
            open_duration_ms: 1000,
            probe_interval_ms: 200,
            scale_endpoints: vec![10, 1_000, 100_000],
            scale_connects: 20_000,
            scale_repeats: 2,
            lru_destinations: 1_000_000,
            proxy_rounds: 5,
            proxy_requests: 10_000,
            restart_endpoints: vec![10, 100_000],
            packet_runs: 5_000,
        }
    }

    pub fn quick() -> Plan {
        Plan {
            quick: true,
            healthy_rounds: 2,
            healthy_per_round: 2_000,
            kernel_rounds: 3,
            kernel_per_round: 1_000,
            failfast: 1_000,
            blackhole_runs: 1,
            outage_requests: 3_200,
            outage_interval_ms: 15,
            dark_at_ms: 500,
            dark_for_ms: 1500,
            open_duration_ms: 500,
            probe_interval_ms: 100,
            scale_endpoints: vec![10, 1_000, 10_000],
            scale_connects: 2_000,
            scale_repeats: 1,
            lru_destinations: 10_000,
            proxy_rounds: 3,
            proxy_requests: 500,
            restart_endpoints: vec![10, 10_000],
            packet_runs: 500,
        }
    }
}

/// The scenarios by name, for `--only`.
pub const SCENARIOS: [&str; 8] = [
    "healthy",
    "failfast",
    "outage",
    "scale",
    "proxy",
    "operations",
    "packet",
    "detection",
];

pub fn run(quick: bool, out: &Path, only: &[String]) -> anyhow::Result<()> {
    for name in only {
        anyhow::ensure!(
            SCENARIOS.contains(&name.as_str()),
            "unknown scenario {name:?}; known: {}",
            SCENARIOS.join(", ")
        );
    }
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    crate::privileges::check()
        .map_err(|why| anyhow::anyhow!("the benchmarks {why}; run them as root"))?;
    let plan = if quick { Plan::quick() } else { Plan::full() };
    let lab_bin = std::env::current_exe()?;
    let plots = out.join("bench-plots");
    std::fs::create_dir_all(&plots).with_context(|| format!("creating {}", plots.display()))?;
    let mut report = Report::new(&plan);

    if wanted("healthy") {
        eprintln!("bench: scenario 1 (cost while healthy) and 4 (kernel program cost)");
        let healthy = scenarios::healthy(&lab_bin, &plan)?;
        report.healthy(&healthy, &plan);
        plot::healthy(&plots.join("healthy-connect-cdf.png"), &healthy)?;
    }
    if wanted("failfast") {
        eprintln!("bench: scenario 2 (fail-fast while open)");
        let failfast = scenarios::failfast(&lab_bin, &plan)?;
        report.failfast(&failfast, &plan);
        plot::failfast(&plots.join("failfast-cdf.png"), &failfast)?;
    }
    let mut outages = Vec::new();
    if wanted("outage") {
        eprintln!("bench: scenario 3 (outage)");
        for variant in scenarios::OutageVariant::ALL {
            if variant == scenarios::OutageVariant::Haproxy && !haproxy::available() {
                continue;
            }
            eprintln!("bench:   outage {}", variant.label());
            outages.push(scenarios::outage(&lab_bin, &plan, variant)?);
        }
        report.outage(&outages, &plan);
        plot::outage(&plots.join("outage-latency-cdf.png"), &outages)?;
    }
    if wanted("scale") {
        eprintln!("bench: scenario 5 (scale)");
        let scale = scenarios::scale(&lab_bin, &plan)?;
        report.scale(&scale, &plan);
    }
    if wanted("proxy") {
        eprintln!("bench: scenario 6 (against HAProxy)");
        let proxy = if haproxy::available() {
            Some(scenarios::proxy(&lab_bin, &plan)?)
        } else {
            None
        };
        report.proxy(proxy.as_ref(), &outages, &plan);
        if let Some(p) = &proxy {
            plot::proxy(&plots.join("proxy-request-cdf.png"), p)?;
        }
    }
    if wanted("operations") {
        eprintln!("bench: scenario 7 (restart and reload)");
        let ops = scenarios::operations(&lab_bin, &plan)?;
        report.operations(&ops, &plan);
    }
    if wanted("packet") {
        eprintln!("bench: scenario 8 (the packet path's cost per packet)");
        let cost = packet::packet_cost(&plan)?;
        report.packet(&cost);
        eprintln!("bench:   the vm's connects while open");
        let failfast = packet_lab::vm_failfast(&lab_bin, &plan)?;
        eprintln!("bench:   throughput through the host (iperf3)");
        let throughput = packet_lab::throughput(&lab_bin, &plan)?;
        report.packet_lab(&failfast, &throughput, &plan);
    }
    if wanted("detection") {
        eprintln!("bench: scenario 9 (how fast a blackhole is noticed)");
        let rows = detection::detection(&lab_bin, &plan)?;
        report.detection(&rows);
    }
    let path = out.join("BENCHMARKS.md");
    std::fs::write(&path, report.render())?;
    eprintln!(
        "bench: wrote {} and plots in {}",
        path.display(),
        plots.display()
    );
    let table = report.headline_table();
    eprintln!("bench: headline\n{table}");
    // A full run of every scenario is the one the README quotes.
    if !quick && only.is_empty() {
        let readme = out.join("README.md");
        if update_readme(&readme, &table)? {
            eprintln!("bench: copied the headline table into {}", readme.display());
        }
    }
    Ok(())
}

const README_BEGIN: &str = "<!-- bench-headline: begin (written by cargo xtask bench) -->";
const README_END: &str = "<!-- bench-headline: end -->";

/// Replaces the README's text between the headline markers with `table`. False
/// when there is no README there, or it has no markers.
fn update_readme(readme: &Path, table: &str) -> anyhow::Result<bool> {
    let Ok(text) = std::fs::read_to_string(readme) else {
        return Ok(false);
    };
    let Some(updated) = replace_between(&text, README_BEGIN, README_END, table) else {
        return Ok(false);
    };
    std::fs::write(readme, updated).with_context(|| format!("writing {}", readme.display()))?;
    Ok(true)
}

fn replace_between(text: &str, begin: &str, end: &str, with: &str) -> Option<String> {
    let start = text.find(begin)? + begin.len();
    let stop = start + text[start..].find(end)?;
    Some(format!("{}\n{with}{}", &text[..start], &text[stop..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headline_replaces_only_the_marked_block() {
        let text = format!("a\n{README_BEGIN}\nold\n{README_END}\nb\n");
        let new = replace_between(&text, README_BEGIN, README_END, "| x |\n").unwrap();
        assert_eq!(new, format!("a\n{README_BEGIN}\n| x |\n{README_END}\nb\n"));
        assert!(replace_between("no markers", README_BEGIN, README_END, "t").is_none());
    }
}
