//! `cargo xtask demo`: the breaker's main job, end to end, in a lab of its own.
//!
//! An unmodified client (in the lab cgroup) calls an HTTP upstream ten times a second.
//! The upstream goes dark (SYNs vanish), then comes back. The timeline shows the
//! connects that hung before the breaker opened, the fail-fast connects while it was
//! open, and what closed it after the upstream returned, as the daemon logged it.
//! A second client, a "vm" routed through the lab's host namespace (no cgroup hook
//! sees its sockets), calls the same upstream: the packet path on the host side of
//! its link protects it with the same breaker.
use std::{
    io::{BufRead, BufReader},
    process::Child,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::{
    client::Attempt,
    lab::{Lab, UPSTREAM_V4, VM_LINK, VM_V4},
    stats::Summary,
};

const FAILURE_THRESHOLD: u32 = 3;
const OPEN_DURATION: &str = "3s";
const PROBE_INTERVAL: &str = "500ms";

fn config() -> String {
    format!(
        r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:8080"]
failure_threshold = {FAILURE_THRESHOLD}
open_duration = "{OPEN_DURATION}"
probe_interval = "{PROBE_INTERVAL}"
probe_timeout = "300ms"

[[interface]]
name = "{VM_LINK}"
"#
    )
}

const HEALTHY_FOR: Duration = Duration::from_secs(2);
const DARK_FOR: Duration = Duration::from_secs(8);
const AFTER_CLOSE: Duration = Duration::from_secs(2);
/// Connect plus request timeout of the client: what a legacy app waits on a dead upstream.
const CLIENT_TIMEOUT_MS: &str = "1500";

/// How an attempt looked from the application.
fn class(a: &Attempt) -> &'static str {
    match a.outcome.as_str() {
        "ok" => "served",
        "refused" if a.latency_us < 10_000.0 => "failed fast",
        "timeout" => "hung until timeout",
        _ => "failed",
    }
}

struct Group {
    class: &'static str,
    from_s: f64,
    to_s: f64,
    latencies_us: Vec<f64>,
}

impl Group {
    fn print(&self) {
        let s = Summary::of(&self.latencies_us);
        let (n, p50, max) = (s.n, s.p50, s.max);
        println!(
            "  {:>6.2}s – {:>6.2}s  {n:>3} × {:<19} connect{} p50 {}, max {}",
            self.from_s,
            self.to_s,
            self.class,
            if self.class == "served" {
                "+request"
            } else {
                ""
            },
            human_us(p50),
            human_us(max)
        );
    }
}

fn human_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// Kills the background client when the demo ends, however it ends.
struct ClientGuard(Child);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run() -> anyhow::Result<()> {
    crate::privileges::check().map_err(|why| anyhow::anyhow!("the demo {why}; run it as root"))?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let lab_bin = std::env::current_exe()?;
    println!(
        "breaker demo: an unmodified HTTP client, an upstream that goes dark and comes back\n"
    );
    let mut lab = Lab::new("demo", &lab_bin)?;
    lab.add_vm()?;
    lab.serve("10.77.0.2:8080", "api")?;
    lab.start_daemon(&config())?;
    println!(
        "lab:      client netns {} (cgroup {}), upstream 10.77.0.2:8080 in netns {}",
        lab.client.name,
        lab.cgroup.display(),
        lab.upstream.name
    );
    println!(
        "vm:       {VM_V4} in netns {}, routed through the client netns by {VM_LINK}: no cgroup hook sees it; the packet path on {VM_LINK} does",
        lab.vm.as_ref().map_or("-", |v| v.name.as_str())
    );
    println!("breaker:  failure_threshold {FAILURE_THRESHOLD}, open_duration {OPEN_DURATION}, probe_interval {PROBE_INTERVAL}; client timeout {CLIENT_TIMEOUT_MS} ms, 10 requests/s\n");

    let mut child = lab
        .client_command(&[
            "--to",
            "10.77.0.2:8080",
            "--http",
            "--count",
            "100000",
            "--interval-ms",
            "100",
            "--timeout-ms",
            CLIENT_TIMEOUT_MS,
        ])
        .spawn()
        .context("starting the client")?;
    let stdout = child.stdout.take().context("client stdout")?;
    let _client = ClientGuard(child);
    // The vm calls the same upstream, a request a second, from its own kernel's view
    // no different from the client's.
    let mut vm_child = lab
        .vm_client_command(&[
            "--to",
            "10.77.0.2:8080",
            "--http",
            "--count",
            "100000",
            "--interval-ms",
            "1000",
            "--timeout-ms",
            CLIENT_TIMEOUT_MS,
        ])?
        .spawn()
        .context("starting the vm's client")?;
    let vm_stdout = vm_child.stdout.take().context("vm client stdout")?;
    let _vm_client = ClientGuard(vm_child);
    let vm_attempts = Arc::new(std::sync::Mutex::new(Vec::<Attempt>::new()));
    {
        let vm_attempts = vm_attempts.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(vm_stdout).lines().map_while(Result::ok) {
                if let Ok(a) = serde_json::from_str(&line) {
                    vm_attempts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(a);
                }
            }
        });
    }
    let (tx, rx) = mpsc::channel::<Attempt>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(a) = serde_json::from_str(&line) {
                if tx.send(a).is_err() {
                    break;
                }
            }
        }
    });

    let begin = Instant::now();
    let mut went_dark: Option<f64> = None;
    let mut came_back: Option<f64> = None;
    let mut closed_at: Option<f64> = None;
    let mut opened_at: Option<f64> = None;
    let mut state = String::from("closed");
    let mut group: Option<Group> = None;
    let mut all: Vec<(f64, Attempt)> = Vec::new();
    println!("timeline (seconds since start):");
    loop {
        if stop.load(Ordering::SeqCst) {
            println!("\ninterrupted: cleaning up");
            return Ok(());
        }
        let now = begin.elapsed();
        let t = now.as_secs_f64();
        if went_dark.is_none() && now >= HEALTHY_FOR {
            lab.blackhole(UPSTREAM_V4)?;
            went_dark = Some(t);
            flush(&mut group);
            println!("  {t:>6.2}s  ▼ upstream goes dark: SYNs to 10.77.0.2 now vanish");
        }
        if came_back.is_none() && now >= HEALTHY_FOR + DARK_FOR {
            lab.restore(UPSTREAM_V4)?;
            came_back = Some(t);
            flush(&mut group);
            println!("  {t:>6.2}s  ▲ upstream is back");
        }
        while let Ok(a) = rx.try_recv() {
            let start_s = a.start_ms / 1000.0;
            let end_s = start_s + a.latency_us / 1e6;
            let c = class(&a);
            match &mut group {
                Some(g) if g.class == c => {
                    g.to_s = end_s;
                    g.latencies_us.push(a.latency_us);
                }
                _ => {
                    flush(&mut group);
                    group = Some(Group {
                        class: c,
                        from_s: start_s,
                        to_s: end_s,
                        latencies_us: vec![a.latency_us],
                    });
                }
            }
            all.push((start_s, a));
        }
        let current = current_state(&lab).unwrap_or_else(|_| state.clone());
        if current != state {
            flush(&mut group);
            println!("  {t:>6.2}s  ● breaker {} -> {}", state, current);
            if current == "closed" && came_back.is_some() {
                closed_at = Some(t);
            }
            if current == "open" && went_dark.is_some() && opened_at.is_none() {
                opened_at = Some(t);
            }
            state = current;
        }
        if let Some(c) = closed_at {
            if t >= c + AFTER_CLOSE.as_secs_f64() {
                break;
            }
        }
        if now > HEALTHY_FOR + DARK_FOR + Duration::from_secs(15) {
            flush(&mut group);
            anyhow::bail!(
                "the breaker did not close within 15 s of the upstream's return:\n{}",
                lab.daemon_log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    flush(&mut group);
    let phases = Phases {
        dark: went_dark.unwrap_or(0.0),
        opened: opened_at,
        back: came_back.unwrap_or(0.0),
        closed: closed_at.unwrap_or(0.0),
    };
    let vm = vm_attempts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    summarize(&lab, &all, &vm, phases)?;
    Ok(())
}

fn flush(group: &mut Option<Group>) {
    if let Some(g) = group.take() {
        g.print();
    }
}

fn current_state(lab: &Lab) -> anyhow::Result<String> {
    let m = lab.metrics()?;
    for s in ["closed", "open", "half_open"] {
        if crate::metrics::value(&m, "breaker_state", &[("upstream", "api"), ("state", s)])? == 1.0
        {
            return Ok(s.to_string());
        }
    }
    anyhow::bail!("no breaker_state for api")
}

/// `key=value` from a daemon log line, quotes removed.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim_matches('"'))
}

/// The cause the daemon logged for the last transition of `api` to CLOSED.
fn close_cause(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .filter(|l| l.contains("breaker transition"))
        .filter(|l| field(l, "upstream") == Some("api") && field(l, "to") == Some("closed"))
        .find_map(|l| field(l, "cause"))
        .map(str::to_string)
}

/// What closed the breaker, in words, from the transition's cause.
fn closer(cause: Option<&str>) -> String {
    match cause {
        Some("probe_success") => "a probe (transition cause probe_success)".into(),
        Some("success") => "an application's trial connect (transition cause success)".into(),
        Some(other) => format!("a transition with cause {other}"),
        None => "a transition the daemon log gives no cause for".into(),
    }
}

/// Seconds since the start at which each phase began, as the demo saw them.
struct Phases {
    dark: f64,
    /// First CLOSED -> OPEN seen after the upstream went dark.
    opened: Option<f64>,
    back: f64,
    closed: f64,
}

/// The vm's requests during the outage, by how they looked to it.
fn summarize_vm(vm: &[Attempt], from: f64, to: f64) {
    // The vm's client started a moment after the demo's clock: close enough to
    // place its requests in the outage.
    let during: Vec<&Attempt> = vm
        .iter()
        .filter(|a| a.start_ms / 1000.0 >= from && a.start_ms / 1000.0 < to)
        .collect();
    let of = |c: &str| -> Vec<f64> {
        during
            .iter()
            .filter(|a| class(a) == c)
            .map(|a| a.latency_us)
            .collect()
    };
    let (hung, fast) = (of("hung until timeout"), of("failed fast"));
    println!(
        "  vm:          {} requests during the outage: {} hung until its timeout, {} failed fast (reset by the packet path): p50 {}, max {}; {} requests in all, {} served",
        during.len(),
        hung.len(),
        fast.len(),
        human_us(Summary::of(&fast).p50),
        human_us(Summary::of(&fast).max),
        vm.len(),
        vm.iter().filter(|a| a.outcome == "ok").count()
    );
}

fn summarize(lab: &Lab, all: &[(f64, Attempt)], vm: &[Attempt], at: Phases) -> anyhow::Result<()> {
    let Phases {
        dark,
        opened,
        back,
        closed,
    } = at;
    let phase = |from: f64, to: f64| {
        all.iter()
            .filter(move |(s, _)| *s >= from && *s < to)
            .map(|(_, a)| a)
    };
    let before: Vec<f64> = phase(0.0, dark).map(|a| a.latency_us).collect();
    let hung: Vec<(f64, &Attempt)> = all
        .iter()
        .filter(|(s, a)| *s >= dark && *s < back && a.outcome == "timeout")
        .map(|(s, a)| (*s, a))
        .collect();
    let fast: Vec<f64> = phase(dark, f64::MAX)
        .filter(|a| class(a) == "failed fast")
        .map(|a| a.latency_us)
        .collect();
    let after: Vec<f64> = phase(closed, f64::MAX)
        .filter(|a| a.outcome == "ok")
        .map(|a| a.latency_us)
        .collect();
    let first_served_after = phase(back, f64::MAX)
        .find(|a| a.outcome == "ok")
        .map(|a| a.start_ms / 1000.0 - back);
    println!("\nsummary:");
    println!(
        "  healthy:     connect+request p50 {} over {} requests",
        human_us(Summary::of(&before).p50),
        before.len()
    );
    let opened_line = match opened {
        Some(o) => {
            // Started before the trip and still waiting when it came.
            let in_flight = hung
                .iter()
                .filter(|(s, a)| *s < o && s + a.latency_us / 1e6 > o)
                .count();
            format!(
                "; the breaker opened {:.2}s after the upstream went dark, with {in_flight} of them still in flight",
                o - dark
            )
        }
        None => "; the breaker was not seen to open".into(),
    };
    println!(
        "  dark:        {} connects reached the dead upstream and hung until the client's timeout ({CLIENT_TIMEOUT_MS} ms); failure_threshold is {FAILURE_THRESHOLD}{opened_line}",
        hung.len()
    );
    println!(
        "  open:        {} connects failed fast with ECONNREFUSED: p50 {}, p99 {}, max {}",
        fast.len(),
        human_us(Summary::of(&fast).p50),
        human_us(Summary::of(&fast).p99),
        human_us(Summary::of(&fast).max)
    );
    let metrics = lab.metrics()?;
    let count = |name: &str, want: &[(&str, &str)]| {
        let mut labels = vec![("upstream", "api")];
        labels.extend_from_slice(want);
        // A series not yet created (no probe ever passed, say) is a zero count.
        crate::metrics::value(&metrics, name, &labels).unwrap_or(0.0)
    };
    let log = lab.daemon_log();
    println!(
        "  recovery:    {} closed the breaker {:.2}s after the upstream returned (open_duration {OPEN_DURATION}, probe_interval {PROBE_INTERVAL}); probes: {} passed, {} failed; first request served again after {}",
        closer(close_cause(&log).as_deref()),
        closed - back,
        count("breaker_probes_total", &[("result", "success")]),
        count("breaker_probes_total", &[("result", "failure")]),
        first_served_after.map(|s| format!("{s:.2}s")).unwrap_or_else(|| "-".into())
    );
    println!(
        "  after:       connect+request p50 {}",
        human_us(Summary::of(&after).p50)
    );
    summarize_vm(vm, dark, back);
    println!("\nmetrics excerpt (http://127.0.0.1:9464/metrics in the client netns):");
    let text = lab.metrics_text()?;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("upstream=\"api\"") && !l.ends_with(" 0"))
    {
        println!("  {line}");
    }
    println!("\ndaemon log: (removed with the lab; transitions below)");
    for line in log
        .lines()
        .filter(|l| l.contains("transition") || l.contains("probe passed"))
    {
        println!("  {line}");
    }
    println!("\ncleaning up the lab (namespaces, cgroup, daemon)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_close_cause_comes_from_the_last_transition_to_closed() {
        let log = "\
2026-11-27T10:00:01Z  INFO breaker::events: breaker transition upstream=\"api\" from=\"closed\" to=\"open\" cause=\"timeout\"
2026-11-27T10:00:04Z  INFO breaker::events: breaker transition upstream=\"api\" from=\"half_open\" to=\"closed\" cause=\"success\"
2026-11-27T10:00:09Z  INFO breaker::events: breaker transition upstream=\"api\" from=\"half_open\" to=\"closed\" cause=\"probe_success\"
";
        assert_eq!(close_cause(log).as_deref(), Some("probe_success"));
        assert_eq!(close_cause("nothing here"), None);
        assert!(closer(Some("success")).contains("trial connect"));
    }
}
