//! Scenario 8, end to end: a "vm" routed through the lab's host namespace, the
//! packet path on the host side of its link (`vm0`), no cgroup hook on its
//! sockets. How fast its connects fail while a breaker is open, against a
//! blackholed upstream without one; and what the programs cost a bulk TCP
//! transfer through the host (iperf3), with them attached against without, in
//! alternating rounds of one run.
use std::{path::Path, process::Stdio, time::Duration};

use anyhow::Context;

use super::Plan;
use crate::{
    client::Attempt,
    lab::{Lab, BLACKHOLE_V4, UPSTREAM_V4, VM_LINK},
};

fn latencies(attempts: &[Attempt]) -> Vec<f64> {
    attempts.iter().map(|a| a.latency_us).collect()
}

/// Waits for the daemon to say the packet path is on `vm0`.
fn attached(lab: &Lab) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let log = lab.daemon_log();
        if log.contains("packet path attached") && log.contains(VM_LINK) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("the daemon did not attach to {VM_LINK}")
}

/// The packet path's programs, as the kernel names them (15 bytes at most).
const PACKET_PROGRAMS: [&str; 3] = ["brk_xdp_ingress", "brk_tc_ingress", "brk_tc_egress"];

/// Waits until the packet path's programs are gone from the kernel, so off
/// `vm0`. With the daemon gone and the pins removed, the kernel lets a link,
/// and then its program, go only once its last reference has, and the baseline
/// must not meet them. Asked of the programs, not of the interface: the
/// bpftool of Debian 12 (7.1) lists no TCX link under `net show`.
fn detached() -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = std::process::Command::new("bpftool")
            .args(["-j", "prog", "show"])
            .output()
            .context("running bpftool (cargo xtask setup installs it)")?;
        let progs: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).with_context(|| {
                format!(
                    "bpftool's program list: {}",
                    String::from_utf8_lossy(&out.stdout)
                )
            })?;
        let loaded: Vec<&str> = progs
            .iter()
            .filter_map(|p| p.get("name").and_then(|n| n.as_str()))
            .filter(|n| PACKET_PROGRAMS.contains(n))
            .collect();
        if loaded.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the packet path's programs stayed loaded after the daemon stopped and its pins \
             went (another breaker on this host?): {loaded:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct VmFailFast {
    /// connect() of the vm to an upstream whose breaker is OPEN (reset by the
    /// ingress hook), µs.
    pub open: Vec<f64>,
    /// connect() of the vm to a blackholed upstream without a breaker, to its
    /// kernel's own timeout (tcp_syn_retries = 1 in the vm), µs.
    pub blackhole: Vec<f64>,
}

pub fn vm_failfast(lab_bin: &Path, plan: &Plan) -> anyhow::Result<VmFailFast> {
    let mut lab = Lab::new("bpv", lab_bin)?;
    lab.add_vm()?;
    let dark = format!("{BLACKHOLE_V4}:80");
    lab.start_daemon(&format!(
        "[[upstream]]\nname = \"dark\"\nendpoints = [\"{dark}\"]\nfailure_threshold = 1\n\
         connect_timeout = \"200ms\"\nopen_duration = \"1h\"\n\n[[interface]]\nname = \"{VM_LINK}\"\n"
    ))?;
    attached(&lab)?;
    // One connect into the blackhole trips it (its flow times out after 200 ms).
    let _ = lab.vm_client(&["--to", &dark, "--count", "1", "--timeout-ms", "3000"])?;
    lab.wait_metric(
        "breaker_state",
        &[("upstream", "dark"), ("state", "open")],
        1.0,
        Duration::from_secs(3),
    )
    .context("the breaker did not open")?;
    let open = lab.vm_client(&[
        "--to",
        &dark,
        "--count",
        &plan.failfast.to_string(),
        "--timeout-ms",
        "3000",
    ])?;
    anyhow::ensure!(
        open.iter().all(|a| a.outcome == "refused"),
        "the vm's connects to an open breaker must be refused"
    );
    lab.stop_daemon()?;
    detached()?;
    lab.vm_sysctl("net/ipv4/tcp_syn_retries", "1")?;
    let blackhole = lab.vm_client(&[
        "--to",
        &dark,
        "--count",
        &plan.blackhole_runs.to_string(),
        "--timeout-ms",
        "600000",
    ])?;
    // Without the programs, a connect into the blackhole waits for the vm
    // kernel's own timeout: anything else is no baseline.
    anyhow::ensure!(
        blackhole.iter().all(|a| a.outcome == "timeout"),
        "the vm's connects into the blackhole without a breaker must time out, not {:?}",
        blackhole
            .iter()
            .map(|a| a.outcome.as_str())
            .collect::<Vec<_>>()
    );
    // The first connects warm caches and the client's page tables.
    let skip = (open.len() / 20).min(100);
    Ok(VmFailFast {
        open: latencies(&open[skip..]),
        blackhole: latencies(&blackhole),
    })
}

pub struct Throughput {
    /// Gbit/s received by the upstream, one per round, with the programs on vm0.
    pub with: Vec<f64>,
    /// The same without them (no daemon).
    pub without: Vec<f64>,
    pub seconds: u32,
}

/// iperf3 from the vm to the upstream for `seconds`: the receiver's Gbit/s.
fn iperf(lab: &Lab, seconds: u32) -> anyhow::Result<f64> {
    let vm = lab.vm.as_ref().context("no vm")?;
    let out = vm
        .command("iperf3")
        .args(["-c", UPSTREAM_V4, "-p", "5201", "-J", "-t"])
        .arg(seconds.to_string())
        .stderr(Stdio::piped())
        .output()
        .context("running iperf3 in the vm")?;
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("iperf3's JSON report")?;
    if let Some(e) = json.get("error") {
        anyhow::bail!("iperf3: {e}");
    }
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .context("no sum_received in iperf3's report")
}

pub fn throughput(lab_bin: &Path, plan: &Plan) -> anyhow::Result<Throughput> {
    let mut lab = Lab::new("bpt", lab_bin)?;
    lab.add_vm()?;
    let mut server = lab
        .upstream
        .command("iperf3")
        .args(["-s", "-B", UPSTREAM_V4, "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s in the upstream namespace (Debian package iperf3)")?;
    std::thread::sleep(Duration::from_millis(300));
    // The transfer's own destination is a protected upstream: its SYN is tracked,
    // every other segment costs the programs' parse.
    let config = format!(
        "[[upstream]]\nname = \"bulk\"\nendpoints = [\"{UPSTREAM_V4}:5201\"]\n\n\
         [[interface]]\nname = \"{VM_LINK}\"\n"
    );
    let (pairs, seconds) = if plan.quick { (2, 1) } else { (6, 2) };
    let mut with = Vec::new();
    let mut without = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for pair in 0..pairs {
            // ABBA: neither side always runs first.
            let order = if pair % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for attached_now in order {
                if attached_now {
                    lab.start_daemon(&config)?;
                    attached(&lab)?;
                    with.push(iperf(&lab, seconds)?);
                    lab.stop_daemon()?;
                    detached()?;
                } else {
                    without.push(iperf(&lab, seconds)?);
                }
            }
        }
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    result?;
    Ok(Throughput {
        with,
        without,
        seconds,
    })
}
