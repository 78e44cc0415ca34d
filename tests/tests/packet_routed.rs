//! The packet path on a real kernel, for a workload whose sockets no cgroup hook
//! sees: a "vm" namespace routed through the lab's client namespace (the host),
//! with the programs on the host side of its link (`vm0`). The breaker trips on
//! refused, unreachable and blackholed upstreams from the vm's packets alone; while
//! it is open the vm's connects fail fast (reset) or time out (drop); it closes
//! again when the upstream is back. Needs root; outside CI it skips with a reason,
//! under CI=true it fails.
use std::time::{Duration, Instant};

use breaker_lab::{
    client::Attempt,
    lab::{Lab, UPSTREAM_V4, VM_LINK},
    testing::{check, outcomes},
};

fn lab(tag: &str) -> Option<Lab> {
    let mut lab = breaker_lab::testing::lab(tag, env!("CARGO_BIN_EXE_breaker-lab"))?;
    lab.add_vm().expect("a vm behind the client namespace");
    Some(lab)
}

fn vm_connect(lab: &Lab, to: &str, count: u32, concurrency: u32, timeout_ms: u32) -> Vec<Attempt> {
    lab.vm_client(&[
        "--to",
        to,
        "--count",
        &count.to_string(),
        "--concurrency",
        &concurrency.to_string(),
        "--timeout-ms",
        &timeout_ms.to_string(),
    ])
    .expect("the vm's client")
}

/// Waits for the daemon to say the packet path is on `vm0` (its programs are
/// verified after it serves metrics).
fn attached(lab: &Lab) -> bool {
    breaker_lab::testing::eventually(Duration::from_secs(30), || {
        let log = lab.daemon_log();
        log.contains("packet path attached") && log.contains(VM_LINK)
    })
}

fn state(lab: &Lab, upstream: &str, want: &str, within: Duration) -> bool {
    lab.wait_metric(
        "breaker_state",
        &[("upstream", upstream), ("state", want)],
        1.0,
        within,
    )
    .is_ok_and(|v| v == 1.0)
}

const CONFIG: &str = r#"
[[upstream]]
name = "refusing"
endpoints = ["10.77.0.2:8081"]
failure_threshold = 3
open_duration = "1s"

[[upstream]]
name = "unreachable"
endpoints = ["10.77.8.1:80"]
failure_threshold = 3
open_duration = "1h"

[[upstream]]
name = "blackholed"
endpoints = ["10.77.9.1:80"]
failure_threshold = 2
connect_timeout = "200ms"
open_duration = "1h"

[[upstream]]
name = "silent"
endpoints = ["10.77.9.2:80"]
failure_threshold = 2
connect_timeout = "200ms"
open_duration = "1h"
packet_action = "drop"

[[interface]]
name = "vm0"
"#;

#[test]
fn a_vm_behind_the_host_is_protected_by_the_packet_path_alone() {
    let Some(mut lab) = lab("pkt") else {
        return;
    };
    // The client namespace routes 10.77.8.1 nowhere: it answers the vm with an
    // ICMP host unreachable, as a router would.
    lab.client
        .ip(&["route", "add", "unreachable", "10.77.8.1/32"])
        .unwrap();
    // Every SYN gets its error: no rate limit on them in the lab.
    lab.client_sysctl("net/ipv4/icmp_ratelimit", "0").unwrap();
    lab.start_daemon(CONFIG).unwrap();
    check(&lab, attached(&lab), "the daemon attached to vm0");

    // Refused: the upstream's own resets count; the fourth connect is refused by
    // the breaker, fast, without reaching the upstream.
    let refusing = format!("{UPSTREAM_V4}:8081");
    let first = vm_connect(&lab, &refusing, 3, 1, 2000);
    check(
        &lab,
        outcomes(&first) == ["refused"; 3],
        &format!("the upstream's own refusals: {:?}", outcomes(&first)),
    );
    check(
        &lab,
        state(&lab, "refusing", "open", Duration::from_secs(2)),
        "refusing opened after 3 resets",
    );
    let rejected_before = lab
        .metric(
            "breaker_connects_rejected_total",
            &[("upstream", "refusing")],
        )
        .unwrap();
    let fast = vm_connect(&lab, &refusing, 20, 1, 2000);
    check(
        &lab,
        outcomes(&fast) == ["refused"; 20],
        &format!("while open: {:?}", outcomes(&fast)),
    );
    let rejected = lab
        .metric(
            "breaker_connects_rejected_total",
            &[("upstream", "refusing")],
        )
        .unwrap()
        - rejected_before;
    check(
        &lab,
        rejected >= 19.0,
        &format!("{rejected} of 20 refused by the breaker"),
    );
    // A veth: `auto` looks at its SYNs with TC (TCX on 6.6+, clsact before).
    let attached = ["tc (tcx)", "tc (clsact)"].iter().any(|kind| {
        lab.metric(
            "breaker_packet_interface_attached",
            &[("interface", VM_LINK), ("ingress", kind)],
        )
        .is_ok_and(|v| v == 1.0)
    });
    check(&lab, attached, "the metrics show vm0 attached with TC");
    let resets = breaker_lab::testing::eventually(Duration::from_secs(3), || {
        lab.metric("breaker_packet_events_total", &[("event", "reset_sent")])
            .is_ok_and(|v| v >= rejected)
    });
    check(&lab, resets, "the metrics count the resets sent");

    // It closes again once the upstream is back: the daemon's probe finds it.
    lab.serve(&refusing, "back").unwrap();
    check(
        &lab,
        state(&lab, "refusing", "closed", Duration::from_secs(10)),
        "refusing closed when its upstream came back",
    );
    let back = vm_connect(&lab, &refusing, 3, 1, 2000);
    check(
        &lab,
        outcomes(&back) == ["ok"; 3],
        &format!("after recovery: {:?}", outcomes(&back)),
    );
    let successes = lab
        .metric(
            "breaker_connect_successes_total",
            &[("upstream", "refusing")],
        )
        .unwrap();
    check(
        &lab,
        successes >= 3.0,
        &format!("the vm's successes counted from SYN-ACKs: {successes}"),
    );
    // Each timed from its SYN to the SYN-ACK, into the same histogram as the
    // socket path's.
    let timed = lab
        .metric(
            "breaker_connect_duration_seconds_count",
            &[("upstream", "refusing")],
        )
        .unwrap();
    check(
        &lab,
        timed == successes,
        &format!("every success timed once: {timed} timed, {successes} successes"),
    );

    // Unreachable: the host's ICMP errors quote the vm's SYNs. One connect at a
    // time until the breaker opens. Under emulation (the kernel matrix) an ICMP
    // error can reach the vm's socket while connect() still holds it: the
    // kernel then only notes it and sends the SYN again (a retransmission, not
    // a new attempt: the flow is kept ended), and that connect fails a second
    // later; so the count of connects is bounded, not exact.
    let mut seen = Vec::new();
    // The state metric follows the kernel a moment late: a connect may find the
    // breaker open (refused) before the metric says so.
    while seen.len() < 6
        && !seen.iter().any(|o| o == "refused")
        && !state(&lab, "unreachable", "open", Duration::ZERO)
    {
        seen.extend(
            outcomes(&vm_connect(&lab, "10.77.8.1:80", 1, 1, 4000))
                .into_iter()
                .map(str::to_string),
        );
    }
    check(
        &lab,
        state(&lab, "unreachable", "open", Duration::from_secs(2)),
        &format!("unreachable opened on the host's ICMP errors; the vm saw {seen:?}"),
    );
    check(
        &lab,
        {
            let failed = seen.iter().take_while(|o| *o == "unreachable").count();
            (1..=3).contains(&failed) && seen[failed..].iter().all(|o| o == "refused")
        },
        &format!("the vm's connects before it opened: {seen:?}"),
    );
    let failures = lab
        .metric(
            "breaker_connect_failures_total",
            &[("upstream", "unreachable"), ("reason", "unreachable")],
        )
        .unwrap();
    check(
        &lab,
        failures >= 2.0,
        &format!(
            "{failures} unreachable failures counted, want at least 2 of the 3 that opened it"
        ),
    );
    let after = vm_connect(&lab, "10.77.8.1:80", 1, 1, 2000);
    check(
        &lab,
        outcomes(&after) == ["refused"],
        &format!("unreachable, open: {:?}", outcomes(&after)),
    );
}

#[test]
fn a_blackholed_upstream_trips_on_timeouts_and_no_vm_client_waits_on_it_after() {
    let Some(mut lab) = lab("pkt-dark") else {
        return;
    };
    lab.start_daemon(CONFIG).unwrap();
    check(&lab, attached(&lab), "the daemon attached to vm0");
    // Two clients at once, into the blackhole (10.77.9.0/24 goes to the dark
    // link): their flows time out after connect_timeout, the breaker opens, and
    // their retransmitted SYNs (the vm's kernel resends after 1 s) are reset: they
    // fail long before their own 5 s timeout.
    let start = Instant::now();
    let dark = vm_connect(&lab, "10.77.9.1:80", 1, 2, 5000);
    let took = start.elapsed();
    check(
        &lab,
        state(&lab, "blackholed", "open", Duration::from_secs(1)),
        "blackholed opened on timeouts",
    );
    let timeouts = lab
        .metric(
            "breaker_connect_failures_total",
            &[("upstream", "blackholed"), ("reason", "timeout")],
        )
        .unwrap();
    check(
        &lab,
        timeouts == 2.0,
        &format!("{timeouts} timeouts counted, want 2 (one per connect, not per SYN)"),
    );
    check(
        &lab,
        outcomes(&dark) == ["refused"; 2] && took < Duration::from_millis(2500),
        &format!(
            "the two blackholed connects: {:?} in {took:?}",
            outcomes(&dark)
        ),
    );
    // From now on a connect fails at once.
    let fast = vm_connect(&lab, "10.77.9.1:80", 10, 1, 5000);
    let slowest = fast.iter().map(|a| a.latency_us).fold(0.0, f64::max);
    check(
        &lab,
        outcomes(&fast) == ["refused"; 10] && slowest < 100_000.0,
        &format!("open: {:?}, slowest {slowest} µs", outcomes(&fast)),
    );

    // packet_action = "drop": the same, but the vm's SYNs vanish.
    let _ = vm_connect(&lab, "10.77.9.2:80", 1, 2, 1500);
    check(
        &lab,
        state(&lab, "silent", "open", Duration::from_secs(1)),
        "silent opened on timeouts",
    );
    let dropped = vm_connect(&lab, "10.77.9.2:80", 1, 1, 500);
    check(
        &lab,
        outcomes(&dropped) == ["timeout"],
        &format!("drop: {:?}", outcomes(&dropped)),
    );
    let rejected = lab
        .metric("breaker_connects_rejected_total", &[("upstream", "silent")])
        .unwrap();
    check(
        &lab,
        rejected >= 1.0,
        &format!("silent rejected {rejected}"),
    );
}

const ACTIONS: &str = r#"
[[upstream]]
name = "answered"
endpoints = ["10.77.0.2:8082"]
failure_threshold = 2
open_duration = "1h"
packet_action = "icmp"

[[upstream]]
name = "moved"
endpoints = ["10.77.0.2:8083"]
fallback = "10.77.0.3:9000"
failure_threshold = 2
open_duration = "1h"
packet_action = "redirect"

[[upstream]]
name = "moved_dark"
endpoints = ["10.77.0.2:8084"]
fallback = "10.77.8.1:80"
failure_threshold = 2
open_duration = "1h"
packet_action = "redirect"

[[interface]]
name = "vm0"
"#;

#[test]
fn while_open_a_vm_gets_an_icmp_error_or_reaches_the_fallback() {
    let Some(mut lab) = lab("pkt-act") else {
        return;
    };
    lab.serve("10.77.0.3:9000", "fallback").unwrap();
    // moved_dark's fallback is routed nowhere: the host answers the vm with an
    // ICMP host unreachable, every time.
    lab.client
        .ip(&["route", "add", "unreachable", "10.77.8.1/32"])
        .unwrap();
    lab.client_sysctl("net/ipv4/icmp_ratelimit", "0").unwrap();
    lab.start_daemon(ACTIONS).unwrap();
    check(&lab, attached(&lab), "the daemon attached to vm0");
    let events = |event: &str| {
        lab.metric("breaker_packet_events_total", &[("event", event)])
            .unwrap_or(0.0)
    };

    // packet_action = "icmp": two refusals open it; then each SYN is answered with
    // a port unreachable, which the vm's stack turns into ECONNREFUSED. (Linux
    // drops an ICMP error that reaches a socket while connect() still holds it,
    // which a veth on the same CPU can do; the retransmitted SYN's error then
    // ends the connect, 1 s later. Hence the bound below, not "at once".)
    let answered = "10.77.0.2:8082";
    let first = vm_connect(&lab, answered, 2, 1, 3000);
    check(
        &lab,
        outcomes(&first) == ["refused"; 2],
        &format!("the upstream's own refusals: {:?}", outcomes(&first)),
    );
    check(
        &lab,
        state(&lab, "answered", "open", Duration::from_secs(2)),
        "answered opened after 2 resets",
    );
    let resets_before = events("reset_sent");
    let open = vm_connect(&lab, answered, 5, 1, 3000);
    let slowest = open.iter().map(|a| a.latency_us).fold(0.0, f64::max);
    eprintln!(
        "icmp, open: connect latencies {:?} µs",
        open.iter().map(|a| a.latency_us as u64).collect::<Vec<_>>()
    );
    check(
        &lab,
        outcomes(&open) == ["refused"; 5] && slowest < 1_500_000.0,
        &format!("icmp, open: {:?}, slowest {slowest} µs", outcomes(&open)),
    );
    let sent =
        breaker_lab::testing::eventually(Duration::from_secs(3), || events("icmp_sent") >= 5.0);
    check(
        &lab,
        sent && events("reset_sent") == resets_before,
        &format!(
            "ICMP errors sent {}, resets {} (before {resets_before})",
            events("icmp_sent"),
            events("reset_sent")
        ),
    );

    // packet_action = "redirect": once open, the vm's connects reach the fallback
    // and exchange data with it, addresses rewritten both ways.
    let moved = "10.77.0.2:8083";
    let first = vm_connect(&lab, moved, 2, 1, 3000);
    check(
        &lab,
        outcomes(&first) == ["refused"; 2],
        &format!("moved, before it opened: {:?}", outcomes(&first)),
    );
    check(
        &lab,
        state(&lab, "moved", "open", Duration::from_secs(2)),
        "moved opened after 2 resets",
    );
    let redirected = lab
        .vm_client(&[
            "--to",
            moved,
            "--count",
            "2",
            "--concurrency",
            "2",
            "--timeout-ms",
            "3000",
            "--http",
        ])
        .expect("the vm's client");
    check(
        &lab,
        redirected.len() == 4
            && redirected
                .iter()
                .all(|a| a.outcome == "ok" && a.body.as_deref() == Some("fallback")),
        &format!("redirected to the fallback: {redirected:?}"),
    );
    let accepted = lab.server("fallback").unwrap().accepted();
    check(
        &lab,
        accepted == 4,
        &format!("the fallback accepted {accepted} connects, want the 4"),
    );
    let counted = breaker_lab::testing::eventually(Duration::from_secs(3), || {
        lab.metric(
            "breaker_connects_redirected_total",
            &[("upstream", "moved")],
        )
        .is_ok_and(|v| v == 4.0)
            && events("flow_redirected") == 4.0
    });
    check(&lab, counted, "4 connects counted as redirected");

    // A fallback that cannot be reached: the host's ICMP error quotes the SYN
    // as it left for the fallback, and is rewritten to quote the upstream the vm
    // asked for, so the vm's connect fails with it (at once, or at the first
    // retransmission, as above) instead of waiting out its own 3 s.
    let dark = "10.77.0.2:8084";
    let first = vm_connect(&lab, dark, 2, 1, 3000);
    check(
        &lab,
        outcomes(&first) == ["refused"; 2]
            && state(&lab, "moved_dark", "open", Duration::from_secs(2)),
        &format!("moved_dark opened on its refusals: {:?}", outcomes(&first)),
    );
    let rewritten_before = events("segment_rewritten");
    let failed = vm_connect(&lab, dark, 2, 1, 3000);
    let slowest = failed.iter().map(|a| a.latency_us).fold(0.0, f64::max);
    check(
        &lab,
        outcomes(&failed) == ["unreachable"; 2] && slowest < 2_000_000.0,
        &format!(
            "the dark fallback's errors reached the vm: {:?}, slowest {slowest} µs",
            outcomes(&failed)
        ),
    );
    let counted = breaker_lab::testing::eventually(Duration::from_secs(3), || {
        events("segment_rewritten") >= rewritten_before + 2.0
    });
    check(
        &lab,
        counted,
        &format!(
            "the errors were counted as rewritten: {} (before {rewritten_before})",
            events("segment_rewritten")
        ),
    );
}

#[test]
fn a_stampede_of_vm_clients_reaches_a_dead_upstream_at_most_threshold_plus_in_flight() {
    let Some(mut lab) = lab("pkt-herd") else {
        return;
    };
    lab.start_daemon(
        r#"
[[upstream]]
name = "dead"
endpoints = ["10.77.0.2:8084"]
failure_threshold = 5
open_duration = "1h"

[[interface]]
name = "vm0"
"#,
    )
    .unwrap();
    check(&lab, attached(&lab), "the daemon attached to vm0");
    // 64 clients at once, 10 connects each, to a port nothing listens on: the
    // upstream's resets trip the breaker; only the connects whose SYN was on
    // its way when it tripped reach it after the threshold.
    let herd = vm_connect(&lab, "10.77.0.2:8084", 10, 64, 3000);
    check(
        &lab,
        herd.len() == 640 && herd.iter().all(|a| a.outcome == "refused"),
        &format!(
            "640 refused connects: {} attempts, outcomes {:?}",
            herd.len(),
            {
                let mut o = outcomes(&herd);
                o.dedup();
                o
            }
        ),
    );
    let dead = [("upstream", "dead")];
    let settled = breaker_lab::testing::eventually(Duration::from_secs(3), || {
        let m = lab.metrics().unwrap_or_default();
        let v = |name| breaker_lab::metrics::value(&m, name, &dead).unwrap_or(0.0);
        v("breaker_connect_failures_total") + v("breaker_connects_rejected_total") == 640.0
    });
    let m = lab.metrics().unwrap();
    let v = |name| breaker_lab::metrics::value(&m, name, &dead).unwrap_or(-1.0);
    let failures = v("breaker_connect_failures_total");
    let rejected = v("breaker_connects_rejected_total");
    check(
        &lab,
        settled,
        &format!("every connect counted once: {failures} failed + {rejected} rejected, want 640"),
    );
    check(
        &lab,
        (5.0..=5.0 + 64.0).contains(&failures),
        &format!("{failures} connects reached the dead upstream; bound is 5 + 64 in flight"),
    );
    let opened = breaker_lab::metrics::value(
        &m,
        "breaker_transitions_total",
        &[("upstream", "dead"), ("to", "open")],
    )
    .unwrap_or(0.0);
    check(
        &lab,
        opened == 1.0,
        &format!("tripped {opened} times, want once"),
    );
}

#[test]
fn a_redirected_flow_carries_on_across_a_reload() {
    use std::{
        io::{Read, Write},
        net::{SocketAddr, TcpListener, TcpStream},
    };
    let Some(mut lab) = lab("pkt-nat") else {
        return;
    };
    // The fallback: a listener of the test's own in the upstream namespace, so the
    // connection stays open as long as the test holds it.
    let fallback = lab
        .upstream
        .within(|| TcpListener::bind("10.77.0.3:9001"))
        .unwrap()
        .unwrap();
    let config = r#"
[[upstream]]
name = "moved"
endpoints = ["10.77.0.2:8086"]
fallback = "10.77.0.3:9001"
failure_threshold = 1
open_duration = "1h"
packet_action = "redirect"

[[interface]]
name = "vm0"
"#;
    lab.start_daemon(config).unwrap();
    check(&lab, attached(&lab), "the daemon attached to vm0");
    let _ = vm_connect(&lab, "10.77.0.2:8086", 1, 1, 2000);
    check(
        &lab,
        state(&lab, "moved", "open", Duration::from_secs(2)),
        "moved opened on the upstream's reset",
    );
    // The vm connects to the upstream; the packet path sends it to the fallback.
    let to: SocketAddr = "10.77.0.2:8086".parse().unwrap();
    let vm = lab.vm.as_ref().unwrap();
    let mut client = vm
        .within(move || TcpStream::connect_timeout(&to, Duration::from_secs(2)))
        .unwrap()
        .expect("the vm's connect, redirected");
    fallback.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut served = loop {
        match fallback.accept() {
            Ok((stream, _)) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("the fallback got no connect: {e}"),
        }
    };
    served.set_nonblocking(false).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    served
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let exchange = |client: &mut TcpStream, served: &mut TcpStream, word: &[u8]| -> bool {
        let (mut there, mut back) = (vec![0u8; word.len()], vec![0u8; word.len()]);
        client.write_all(word).is_ok()
            && served.read_exact(&mut there).is_ok()
            && served.write_all(&there).is_ok()
            && client.read_exact(&mut back).is_ok()
            && there == word
            && back == word
    };
    check(
        &lab,
        exchange(&mut client, &mut served, b"before"),
        "the redirected flow carries data both ways",
    );
    // A reload loads the programs anew; the flow's rewrites must carry on.
    let pid = nix::unistd::Pid::from_raw(lab.daemon_pid().expect("daemon running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let reloaded = breaker_lab::testing::eventually(Duration::from_secs(20), || {
        lab.daemon_log().contains("config reloaded")
    });
    check(&lab, reloaded, "the daemon reloaded");
    let again = breaker_lab::testing::eventually(Duration::from_secs(20), || {
        lab.daemon_log().matches("packet path attached").count() >= 2
    });
    check(&lab, again, "the reloaded programs are on vm0");
    check(
        &lab,
        exchange(&mut client, &mut served, b"after the reload"),
        "the redirected flow still carries data after the reload",
    );

    // On 6.6+ the interface's links outlive the daemon: killed, and gone for
    // longer than a reload's handover (10 s), it leaves the flow's rewrites
    // running, and the next daemon carries the flow's NAT entries on.
    if lab.daemon_log().contains("tc (tcx)") {
        lab.signal_daemon(nix::sys::signal::Signal::SIGKILL)
            .unwrap();
        std::thread::sleep(Duration::from_secs(11));
        check(
            &lab,
            exchange(&mut client, &mut served, b"with no daemon"),
            "the redirected flow carries data with no daemon",
        );
        lab.start_daemon(config).unwrap();
        check(&lab, attached(&lab), "the next daemon is on vm0");
        check(
            &lab,
            exchange(&mut client, &mut served, b"under the next daemon"),
            "the redirected flow carries data under the next daemon, 11 s later",
        );

        // A link detached by hand while no daemon ran: the programs did not see
        // every connect since, so after a gap longer than a handover the
        // redirected flows start over rather than rewrite a stranger's.
        lab.signal_daemon(nix::sys::signal::Signal::SIGKILL)
            .unwrap();
        let egress = std::fs::read_dir(lab.pins.join("links"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().contains("if:tce:"))
            .expect("vm0's egress pinned");
        let out = std::process::Command::new("bpftool")
            .args(["link", "detach", "pinned"])
            .arg(&egress)
            .output()
            .unwrap();
        assert!(out.status.success(), "bpftool link detach: {out:?}");
        std::thread::sleep(Duration::from_secs(11));
        lab.start_daemon(config).unwrap();
        check(&lab, attached(&lab), "the third daemon is on vm0");
        check(
            &lab,
            lab.daemon_log()
                .contains("the pinned redirected flows are older than a handover"),
            "with a link detached while no daemon ran, the old flows started over",
        );
    }
}

/// `fallbacks` naming another upstream, on the packet path: a vm flow sent there
/// is that upstream's flow, so its failures open that upstream's breaker and the
/// next entry takes over; and once a blackholed one has opened, the vm's SYN sent
/// again is reset instead of left to the dark.
#[test]
fn a_vm_flow_sent_to_an_upstream_fallback_counts_for_that_upstream() {
    let Some(mut lab) = lab("pkt-hops") else {
        return;
    };
    lab.serve("10.77.0.3:9002", "last").unwrap();
    // Nothing listens on 10.77.0.2:8087/8088 nor on 10.77.0.3:9003 (resets);
    // 10.77.9.0/24 goes to the dark link.
    lab.start_daemon(
        r#"
[[upstream]]
name = "moved"
endpoints = ["10.77.0.2:8087"]
fallbacks = ["standby", "10.77.0.3:9002"]
failure_threshold = 1
open_duration = "1h"
packet_action = "redirect"

[[upstream]]
name = "standby"
endpoints = ["10.77.0.3:9003"]
failure_threshold = 2
open_duration = "1h"

[[upstream]]
name = "moved2"
endpoints = ["10.77.0.2:8088"]
fallbacks = ["dark"]
failure_threshold = 1
open_duration = "1h"
packet_action = "redirect"

[[upstream]]
name = "dark"
endpoints = ["10.77.9.5:80"]
failure_threshold = 1
open_duration = "1h"

[[interface]]
name = "vm0"
"#,
    )
    .unwrap();
    check(&lab, attached(&lab), "the daemon attached to vm0");
    let redirected = |from: &str, to: &str| {
        lab.metric(
            "breaker_connects_redirected_total",
            &[("upstream", from), ("to", to)],
        )
        .unwrap_or(-1.0)
    };

    let first = vm_connect(&lab, "10.77.0.2:8087", 1, 1, 3000);
    check(
        &lab,
        outcomes(&first) == ["refused"] && state(&lab, "moved", "open", Duration::from_secs(2)),
        &format!("moved opened on its own reset: {:?}", outcomes(&first)),
    );
    let attempts = lab
        .vm_client(&[
            "--to",
            "10.77.0.2:8087",
            "--count",
            "4",
            "--timeout-ms",
            "3000",
            "--http",
        ])
        .expect("the vm's client");
    let got: Vec<String> = attempts
        .iter()
        .map(|a| a.body.clone().unwrap_or_else(|| a.outcome.clone()))
        .collect();
    check(
        &lab,
        got == ["refused", "refused", "last", "last"],
        &format!("standby's 2 resets, then the address: {got:?}"),
    );
    let standby_refused = lab
        .metric(
            "breaker_connect_failures_total",
            &[("upstream", "standby"), ("reason", "refused")],
        )
        .unwrap();
    check(
        &lab,
        standby_refused == 2.0 && state(&lab, "standby", "open", Duration::from_secs(2)),
        &format!("standby's breaker saw the 2 flows' resets ({standby_refused}) and opened"),
    );
    check(
        &lab,
        redirected("moved", "standby") == 2.0 && redirected("moved", "10.77.0.3:9002") == 2.0,
        "2 to standby, 2 to the address",
    );

    // A blackholed hop: its flow times out, its breaker opens, and the vm's SYN
    // sent again gets a reset, long before the client's own 6 s.
    let _ = vm_connect(&lab, "10.77.0.2:8088", 1, 1, 3000);
    check(
        &lab,
        state(&lab, "moved2", "open", Duration::from_secs(2)),
        "moved2 opened on its own reset",
    );
    let start = Instant::now();
    let dark = vm_connect(&lab, "10.77.0.2:8088", 1, 1, 6000);
    let took = start.elapsed();
    check(
        &lab,
        outcomes(&dark) == ["refused"] && took < Duration::from_millis(4500),
        &format!("the flow sent to dark: {:?} in {took:?}", outcomes(&dark)),
    );
    let timeouts = lab
        .metric(
            "breaker_connect_failures_total",
            &[("upstream", "dark"), ("reason", "timeout")],
        )
        .unwrap();
    check(
        &lab,
        timeouts == 1.0 && state(&lab, "dark", "open", Duration::from_secs(1)),
        &format!("dark counted the flow's timeout ({timeouts}) and opened"),
    );
    // Every hop open now: a new connect is reset at once, sent nowhere.
    let fast = vm_connect(&lab, "10.77.0.2:8088", 3, 1, 3000);
    let slowest = fast.iter().map(|a| a.latency_us).fold(0.0, f64::max);
    check(
        &lab,
        outcomes(&fast) == ["refused"; 3] && slowest < 500_000.0,
        &format!(
            "every hop open: {:?}, slowest {slowest} µs",
            outcomes(&fast)
        ),
    );
    check(
        &lab,
        redirected("moved2", "dark") == 1.0,
        &format!(
            "only the first went to dark: {}",
            redirected("moved2", "dark")
        ),
    );
}

/// A service's ejection cap holds on the packet path too: the vm's flows end
/// in the TC egress program, which goes through the service's slot as sock_ops
/// does. With one place (`min_healthy_percent = 50` of three), the first dead
/// endpoint opens and the second stays CLOSED however often it fails, each trip
/// held counted as overflow, its flows still reaching it. Seen failing with the
/// packet path's outcomes uncapped (the second opened on its first reset).
#[test]
fn the_ejection_cap_holds_on_the_packet_path() {
    let Some(mut lab) = lab("pkt-cap") else {
        return;
    };
    // Nothing listens on 10.77.0.2:8095-8097: each flow ends in a reset.
    lab.start_daemon(
        r#"
[[upstream]]
name = "pool"
endpoints = ["10.77.0.2:8095", "10.77.0.2:8096", "10.77.0.2:8097"]
per_endpoint = true
min_healthy_percent = 50
failure_threshold = 1
open_duration = "1h"

[[interface]]
name = "vm0"
"#,
    )
    .unwrap();
    check(&lab, attached(&lab), "the daemon attached to vm0");
    let (first, second) = ("pool/10.77.0.2:8095", "pool/10.77.0.2:8096");
    let first_flow = vm_connect(&lab, "10.77.0.2:8095", 1, 1, 3000);
    check(
        &lab,
        outcomes(&first_flow) == ["refused"] && state(&lab, first, "open", Duration::from_secs(2)),
        &format!(
            "the first dead endpoint opened: {:?}",
            outcomes(&first_flow)
        ),
    );
    let flows = vm_connect(&lab, "10.77.0.2:8096", 4, 1, 3000);
    check(
        &lab,
        outcomes(&flows) == ["refused"; 4],
        &format!("{:?}", outcomes(&flows)),
    );
    let failures = lab
        .wait_metric(
            "breaker_connect_failures_total",
            &[("upstream", second), ("reason", "refused")],
            4.0,
            Duration::from_secs(2),
        )
        .unwrap_or(-1.0);
    let overflow = lab
        .metric("breaker_ejection_overflow_total", &[("upstream", second)])
        .unwrap_or(-1.0);
    check(
        &lab,
        failures == 4.0 && overflow == 4.0 && state(&lab, second, "closed", Duration::ZERO),
        &format!(
            "the second's 4 flows reached it ({failures} counted), each trip held ({overflow}), \
             and it is still CLOSED"
        ),
    );
}

/// A service on the packet path, `packet_action = "redirect"`: once its dead
/// endpoint trips, the vm's flows to it are steered to the live endpoints,
/// spread over both by the SYN's sequence number, with no failed connect.
#[test]
fn a_vm_flow_to_an_ejected_endpoint_is_steered_to_the_live_ones() {
    let Some(mut lab) = lab("pkt-steer") else {
        return;
    };
    lab.serve("10.77.0.3:9301", "a").unwrap();
    lab.serve("10.77.0.3:9302", "b").unwrap();
    // Nothing listens on 10.77.0.3:9303: its flows end in a reset.
    lab.start_daemon(
        r#"
[[upstream]]
name = "web"
endpoints = ["10.77.0.3:9301", "10.77.0.3:9302", "10.77.0.3:9303"]
per_endpoint = true
failure_threshold = 1
open_duration = "1h"
packet_action = "redirect"

[[interface]]
name = "vm0"
"#,
    )
    .unwrap();
    check(&lab, attached(&lab), "the daemon attached to vm0");
    let dead = "web/10.77.0.3:9303";
    let first = vm_connect(&lab, "10.77.0.3:9303", 1, 1, 3000);
    check(
        &lab,
        outcomes(&first) == ["refused"] && state(&lab, dead, "open", Duration::from_secs(2)),
        &format!("the dead endpoint opened: {:?}", outcomes(&first)),
    );
    let attempts = lab
        .vm_client(&[
            "--to",
            "10.77.0.3:9303",
            "--count",
            "16",
            "--timeout-ms",
            "3000",
            "--http",
        ])
        .expect("the vm's client");
    let got: Vec<String> = attempts
        .iter()
        .map(|a| a.body.clone().unwrap_or_else(|| a.outcome.clone()))
        .collect();
    let (a, b) = (
        got.iter().filter(|g| *g == "a").count(),
        got.iter().filter(|g| *g == "b").count(),
    );
    // Both live endpoints serve: a chance of 2 in 2^16 that the spread picks
    // one for all 16 on its own.
    check(
        &lab,
        a + b == 16 && a > 0 && b > 0,
        &format!("16 served, spread over both live endpoints: {got:?}"),
    );
    let steered = lab
        .metric("breaker_connects_steered_total", &[("upstream", dead)])
        .unwrap_or(-1.0);
    check(&lab, steered == 16.0, &format!("16 steered, got {steered}"));
}

/// The packet path outlives its daemon: a daemon killed (SIGKILL) leaves the
/// interface's programs running on the pinned states (TCX and XDP links
/// pinned, clsact filters left attached), so a vm client still fails fast on
/// the blackhole it tripped on; the next daemon takes the interface over, and
/// so does a reload, with no moment unwatched. Seen failing with the TCX links
/// unpinned (the killed daemon took them along: the vm waited out its timeout).
#[test]
fn a_killed_daemon_leaves_the_packet_path_running_and_the_next_takes_it_over() {
    use nix::sys::signal::Signal;
    let Some(mut lab) = lab("pkt-kill") else {
        return;
    };
    lab.start_daemon(CONFIG).unwrap();
    check(&lab, attached(&lab), "the daemon attached to vm0");
    let _ = vm_connect(&lab, "10.77.9.1:80", 1, 2, 5000);
    check(
        &lab,
        state(&lab, "blackholed", "open", Duration::from_secs(1)),
        "blackholed opened on timeouts",
    );
    // The blackhole answers nothing: only the packet path's reset can end a
    // connect before the client's own 1.5 s.
    let fails_fast = |lab: &Lab, what: &str| {
        let fast = vm_connect(lab, "10.77.9.1:80", 3, 1, 1500);
        let slowest = fast.iter().map(|a| a.latency_us).fold(0.0, f64::max);
        check(
            lab,
            outcomes(&fast) == ["refused"; 3] && slowest < 500_000.0,
            &format!("{what}: {:?}, slowest {slowest} µs", outcomes(&fast)),
        );
    };
    lab.signal_daemon(Signal::SIGKILL).unwrap();
    fails_fast(&lab, "with the daemon killed");

    // On 6.6+ (TCX) the next daemon takes the pinned links over, and says so;
    // before, it attaches anew (the killed one's clsact filters removed).
    let taken_over = |lab: &Lab| lab.daemon_log().matches("pinned links taken over").count();
    let tcx = lab.daemon_log().contains("tc (tcx)");
    lab.start_daemon(CONFIG).unwrap();
    check(&lab, attached(&lab), "the next daemon attached to vm0");
    check(
        &lab,
        !tcx || breaker_lab::testing::eventually(Duration::from_secs(10), || taken_over(&lab) >= 1),
        "the next daemon took the pinned links over",
    );
    fails_fast(&lab, "under the next daemon");
    let pid = nix::unistd::Pid::from_raw(lab.daemon_pid().expect("daemon running") as i32);
    nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
    let reloaded = lab
        .wait_metric(
            "breaker_config_reloads_total",
            &[("result", "success")],
            1.0,
            Duration::from_secs(30),
        )
        .unwrap();
    check(
        &lab,
        reloaded == 1.0,
        &format!("the reload succeeded: {reloaded}"),
    );
    fails_fast(&lab, "after a reload");
    check(
        &lab,
        !tcx || taken_over(&lab) >= 2,
        "the reload took the pinned links over",
    );

    // A pin removed by hand takes its link along: the daemon notices within a
    // pass, says so, and attaches (and pins) again.
    let interface_pins = |lab: &Lab| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(lab.pins.join("links"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("if:"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let pinned = interface_pins(&lab);
    check(
        &lab,
        pinned.len() == if tcx { 2 } else { 0 },
        &format!("vm0's links pinned on tcx only: {pinned:?}"),
    );
    if tcx {
        std::fs::remove_file(&pinned[0]).unwrap();
        check(
            &lab,
            breaker_lab::testing::eventually(Duration::from_secs(10), || {
                lab.daemon_log()
                    .contains("a pin of the packet path's links was removed")
                    && interface_pins(&lab).len() == 2
            }),
            "the daemon noticed the removed pin and pinned vm0's links again",
        );
        fails_fast(&lab, "after a pin was removed by hand");

        // A link detached by hand keeps its pin but runs nothing: noticed too.
        let before = lab.daemon_log().matches("by another hand").count();
        let egress = interface_pins(&lab)
            .into_iter()
            .find(|p| p.to_string_lossy().contains("if:tce:"))
            .expect("vm0's egress pinned");
        let out = std::process::Command::new("bpftool")
            .args(["link", "detach", "pinned"])
            .arg(&egress)
            .output()
            .unwrap();
        assert!(out.status.success(), "bpftool link detach: {out:?}");
        check(
            &lab,
            breaker_lab::testing::eventually(Duration::from_secs(10), || {
                lab.daemon_log().matches("by another hand").count() > before
            }),
            "the daemon noticed the detached link and attached vm0 again",
        );
        fails_fast(&lab, "after a link was detached by hand");
    }

    // vm0 dropped from the config at a reload: its links go (pins too), and the
    // vm's connects are left alone: the blackhole's connect times out.
    let without_vm0 = CONFIG.replace("[[interface]]\nname = \"vm0\"\n", "");
    assert_ne!(without_vm0, CONFIG);
    lab.write_config(&without_vm0).unwrap();
    nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
    let reloaded = lab
        .wait_metric(
            "breaker_config_reloads_total",
            &[("result", "success")],
            2.0,
            Duration::from_secs(30),
        )
        .unwrap();
    check(
        &lab,
        reloaded == 2.0,
        &format!("the reload without vm0 succeeded: {reloaded}"),
    );
    let left = interface_pins(&lab);
    check(
        &lab,
        left.is_empty(),
        &format!("no pin of vm0 is left: {left:?}"),
    );
    let alone = vm_connect(&lab, "10.77.9.1:80", 1, 1, 1500);
    check(
        &lab,
        outcomes(&alone) == ["timeout"],
        &format!(
            "with vm0 unwatched the vm's connect goes into the blackhole: {:?}",
            outcomes(&alone)
        ),
    );
}
