//! The breaker under conditions a host really has: only answers from the network
//! count as failures (an RST, an ICMP error, a SYN timeout, the kernel giving up;
//! not an application giving up), two breaker instances share sockets, and the protected cgroup
//! is removed and created again by a service restart.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use etherparse::icmpv4::DestUnreachableHeader;

use breaker_lab::{
    icmp_router,
    lab::Lab,
    testing::{check, outcomes},
};

fn lab(tag: &str) -> Option<Lab> {
    breaker_lab::testing::lab(tag, env!("CARGO_BIN_EXE_breaker-lab"))
}

/// `name{upstream=up, extra...}` on the lab's daemon.
fn metric(lab: &Lab, name: &str, up: &str, extra: &[(&str, &str)]) -> f64 {
    let mut labels = vec![("upstream", up)];
    labels.extend_from_slice(extra);
    lab.metric(name, &labels).unwrap()
}

#[test]
fn only_answers_from_the_network_count_as_failures() {
    let Some(mut lab) = lab("answers") else {
        return;
    };
    // Every failure kind on a breaker of its own, none near its threshold.
    let upstream = |name: &str, ep: &str| {
        format!(
            "[[upstream]]\nname = {name:?}\nendpoints = [{ep:?}]\nfailure_threshold = 100\nopen_duration = \"60s\"\n"
        )
    };
    lab.start_daemon(
        &[
            upstream("rst", "10.77.0.2:81"),
            upstream("patient", "10.77.9.1:80"),
            upstream("impatient", "10.77.9.2:80"),
            upstream("gaveup", "10.77.9.3:80"),
            upstream("icmp-host", "10.77.8.1:80"),
            upstream("icmp-port", "10.77.8.129:80"),
        ]
        .concat(),
    )
    .unwrap();
    let failures = |up: &str, reason: &str| {
        metric(
            &lab,
            "breaker_connect_failures_total",
            up,
            &[("reason", reason)],
        )
    };
    let abandoned = |up: &str| metric(&lab, "breaker_connects_abandoned_total", up, &[]);

    // An RST: refused.
    let rst = lab
        .client(&["--to", "10.77.0.2:81", "--count", "2"])
        .unwrap();
    check(
        &lab,
        outcomes(&rst) == ["refused", "refused"],
        &format!("{rst:?}"),
    );
    // A blackhole, the client waiting past the first SYN RTO: one timeout.
    lab.client(&[
        "--to",
        "10.77.9.1:80",
        "--count",
        "1",
        "--timeout-ms",
        "1500",
    ])
    .unwrap();
    // A blackhole, the client giving up before any answer: abandoned, no failure.
    lab.client(&[
        "--to",
        "10.77.9.2:80",
        "--count",
        "3",
        "--timeout-ms",
        "150",
    ])
    .unwrap();
    // Routers an RTT away answering with ICMP errors: one failure each, never
    // abandoned, although the client sees the error at once and closes.
    let rtt = Duration::from_millis(2);
    icmp_router::start(
        &lab.client,
        "brkhost",
        "10.77.8.0/25",
        DestUnreachableHeader::Host,
        rtt,
    )
    .unwrap();
    icmp_router::start(
        &lab.client,
        "brkport",
        "10.77.8.128/25",
        DestUnreachableHeader::Port,
        rtt,
    )
    .unwrap();
    for (to, errno) in [
        ("10.77.8.1:80", libc::EHOSTUNREACH),
        ("10.77.8.129:80", libc::ECONNREFUSED),
    ] {
        let got = lab
            .client(&["--to", to, "--count", "1", "--timeout-ms", "3000"])
            .unwrap();
        check(
            &lab,
            got[0].errno == Some(errno) && got[0].latency_us < 500_000.0,
            &format!("ICMP error from a router: {got:?}"),
        );
    }
    // A blackhole until the kernel gives up (one SYN retry): one timeout, not two.
    lab.client_sysctl("net/ipv4/tcp_syn_retries", "1").unwrap();
    let gaveup = lab
        .client(&[
            "--to",
            "10.77.9.3:80",
            "--count",
            "1",
            "--timeout-ms",
            "10000",
        ])
        .unwrap();
    check(
        &lab,
        gaveup[0].errno == Some(libc::ETIMEDOUT),
        &format!("the kernel gave up: {gaveup:?}"),
    );
    std::thread::sleep(Duration::from_millis(200));
    let table = [
        ("rst", failures("rst", "refused"), 2.0),
        ("patient", failures("patient", "timeout"), 1.0),
        ("impatient", failures("impatient", "timeout"), 0.0),
        ("impatient", failures("impatient", "refused"), 0.0),
        ("impatient abandoned", abandoned("impatient"), 3.0),
        ("gaveup", failures("gaveup", "timeout"), 1.0),
        ("gaveup", failures("gaveup", "refused"), 0.0),
        ("gaveup abandoned", abandoned("gaveup"), 0.0),
        ("patient abandoned", abandoned("patient"), 0.0),
        ("rst abandoned", abandoned("rst"), 0.0),
        ("rst", failures("rst", "unreachable"), 0.0),
        ("patient", failures("patient", "unreachable"), 0.0),
        ("impatient", failures("impatient", "unreachable"), 0.0),
        ("gaveup", failures("gaveup", "unreachable"), 0.0),
        // An ICMP error, even port unreachable (ECONNREFUSED to the client), is
        // `unreachable`: no segment came back.
        ("icmp-host", failures("icmp-host", "unreachable"), 1.0),
        ("icmp-host", failures("icmp-host", "refused"), 0.0),
        ("icmp-host abandoned", abandoned("icmp-host"), 0.0),
        ("icmp-port", failures("icmp-port", "unreachable"), 1.0),
        ("icmp-port", failures("icmp-port", "refused"), 0.0),
        ("icmp-port abandoned", abandoned("icmp-port"), 0.0),
    ];
    let wrong: Vec<String> = table
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| format!("{what}: {got}, want {want}"))
        .collect();
    check(&lab, wrong.is_empty(), &wrong.join("\n"));
}

/// A cgroup nested in the lab's, removed on drop (before the lab's own).
struct Nested(PathBuf);

impl Drop for Nested {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn two_breaker_instances_on_overlapping_cgroups_each_count_correctly() {
    let Some(mut lab) = lab("twoinst") else {
        return;
    };
    lab.serve("10.77.0.2:8080", "api").unwrap();
    let body = r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:8080"]

[[upstream]]
name = "dead"
endpoints = ["10.77.0.2:81"]
failure_threshold = 3
open_duration = "60s"
"#;
    // One daemon on the lab cgroup, another on a cgroup inside it, where the
    // clients run: both see every connect.
    let inner = Nested(lab.cgroup.join("inner"));
    std::fs::create_dir_all(&inner.0).unwrap();
    lab.start_daemon(body).unwrap();
    let other = lab
        .start_other_daemon("second", &inner.0, "127.0.0.1:9465", body)
        .unwrap();
    let healthy = lab
        .run_client(
            &inner.0,
            &["--to", "10.77.0.2:8080", "--count", "10", "--http"],
        )
        .unwrap();
    check(
        &lab,
        healthy.iter().all(|a| a.body.as_deref() == Some("api")),
        &format!("{healthy:?}"),
    );
    let dead = lab
        .run_client(&inner.0, &["--to", "10.77.0.2:81", "--count", "5"])
        .unwrap();
    check(
        &lab,
        dead.iter().all(|a| a.errno == Some(libc::ECONNREFUSED)),
        &format!("{dead:?}"),
    );
    std::thread::sleep(Duration::from_millis(200));
    for (who, get) in [
        (
            "first",
            Box::new(|n: &str, l: &[(&str, &str)]| lab.metric(n, l).unwrap())
                as Box<dyn Fn(&str, &[(&str, &str)]) -> f64>,
        ),
        (
            "second",
            Box::new(|n: &str, l: &[(&str, &str)]| lab.other_metric(&other, n, l).unwrap()),
        ),
    ] {
        let successes = get("breaker_connect_successes_total", &[("upstream", "api")]);
        let failures = get("breaker_connect_failures_total", &[("upstream", "dead")]);
        let open = get("breaker_state", &[("upstream", "dead"), ("state", "open")]);
        check(
            &lab,
            successes == 10.0 && failures == 3.0 && open == 1.0,
            &format!(
                "the {who} instance counted its own: successes {successes} (want 10), failures {failures} (want 3), open {open}\n--- second daemon log ---\n{}",
                std::fs::read_to_string(&other.log).unwrap_or_default()
            ),
        );
    }
    drop(other);
}

#[test]
fn a_recreated_cgroup_is_protected_again() {
    let Some(mut lab) = lab("recreate") else {
        return;
    };
    lab.start_daemon(
        r#"
[[upstream]]
name = "dead"
endpoints = ["10.77.0.2:81"]
failure_threshold = 2
open_duration = "60s"
"#,
    )
    .unwrap();
    let trip = lab
        .client(&["--to", "10.77.0.2:81", "--count", "3"])
        .unwrap();
    check(
        &lab,
        outcomes(&trip) == ["refused"; 3],
        &format!("{trip:?}"),
    );
    let rejected = || metric(&lab, "breaker_connects_rejected_total", "dead", &[]);
    check(&lab, rejected() == 1.0, "tripped: the third was rejected");
    // A service restart: systemd removes the service's cgroup and makes a new one.
    std::fs::remove_dir(&lab.cgroup).unwrap();
    let gone = lab
        .wait_metric("breaker_cgroup_attached", &[], 0.0, Duration::from_secs(2))
        .unwrap();
    check(&lab, gone == 0.0, "the missing cgroup shows in the metrics");
    let health = lab.http_get("/healthz").unwrap();
    check(
        &lab,
        health.contains(" 503 ") && health.contains("cgroup does not exist"),
        &format!("/healthz says so: {health}"),
    );
    std::fs::create_dir(&lab.cgroup).unwrap();
    let recreated = Instant::now();
    let back = lab
        .wait_metric("breaker_cgroup_attached", &[], 1.0, Duration::from_secs(2))
        .unwrap();
    check(
        &lab,
        back == 1.0 && recreated.elapsed() < Duration::from_secs(1),
        &format!("re-attached within a second ({:?})", recreated.elapsed()),
    );
    // The breaker kept its state: the dead upstream is still rejected in the kernel.
    let after = lab
        .client(&["--to", "10.77.0.2:81", "--count", "2"])
        .unwrap();
    check(
        &lab,
        after.iter().all(|a| a.errno == Some(libc::ECONNREFUSED)) && rejected() == 3.0,
        &format!("still OPEN for the new cgroup's processes: {after:?}"),
    );
    check(
        &lab,
        lab.daemon_log().contains("re-attached"),
        "the daemon says it re-attached",
    );
    let health = lab.http_get("/healthz").unwrap();
    check(
        &lab,
        health.contains(" 200 "),
        &format!("/healthz is ok again: {health}"),
    );
    // A crash-looping service recreates its cgroup again and again: each re-attach
    // replaces the previous links, so the daemon's descriptors do not grow.
    let pid = lab.daemon_pid().expect("the daemon runs");
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds();
    for _ in 0..5 {
        std::fs::remove_dir(&lab.cgroup).unwrap();
        lab.wait_metric("breaker_cgroup_attached", &[], 0.0, Duration::from_secs(2))
            .unwrap();
        std::fs::create_dir(&lab.cgroup).unwrap();
        lab.wait_metric("breaker_cgroup_attached", &[], 1.0, Duration::from_secs(2))
            .unwrap();
    }
    let after = fds();
    check(
        &lab,
        after <= before + 1,
        &format!("descriptors after 5 more recreations: {before} -> {after}"),
    );
    let still = lab
        .client(&["--to", "10.77.0.2:81", "--count", "1"])
        .unwrap();
    check(
        &lab,
        still[0].errno == Some(libc::ECONNREFUSED) && rejected() == 4.0,
        &format!("still rejected in the kernel after the recreations: {still:?}"),
    );
}

#[test]
fn a_flood_of_failing_destinations_never_evicts_an_open_one() {
    let Some(mut lab) = lab("flood") else {
        return;
    };
    lab.start_daemon(
        r#"
[default_policy]
failure_threshold = 2
open_duration = "1h"
max_destinations = 64
"#,
    )
    .unwrap();
    // The dead destination trips first ... (open_duration is far longer than the
    // flood, which takes a while under emulation, and a destination gone
    // half-open by then would let the check's first connect through as a trial.)
    let trip = lab
        .client(&["--to", "10.77.0.2:82", "--count", "3"])
        .unwrap();
    check(
        &lab,
        outcomes(&trip) == ["refused"; 3],
        &format!("{trip:?}"),
    );
    let d = [("upstream", "default")];
    check(
        &lab,
        lab.metric("breaker_connects_rejected_total", &d).unwrap() == 1.0,
        "tripped",
    );
    // ... then 400 other destinations fail (closed ports: RSTs), six times the
    // LRU map's size, one failure each: none of them trips.
    let flood = lab
        .client(&["--to", "10.77.0.2:2000", "--count", "400", "--each-port"])
        .unwrap();
    check(
        &lab,
        flood.len() == 400 && outcomes(&flood).iter().all(|o| *o == "refused"),
        &format!("400 destinations refused once each: {:?}", outcomes(&flood)),
    );
    // The dead destination is still rejected in the kernel, not let through.
    let again = lab
        .client(&["--to", "10.77.0.2:82", "--count", "2"])
        .unwrap();
    check(
        &lab,
        again.iter().all(|a| a.errno == Some(libc::ECONNREFUSED))
            && lab.metric("breaker_connects_rejected_total", &d).unwrap() == 3.0,
        &format!(
            "the OPEN destination survived the flood: {again:?}, rejected {}",
            lab.metric("breaker_connects_rejected_total", &d).unwrap()
        ),
    );
    check(
        &lab,
        lab.metric("breaker_default_policy_destinations", &[("state", "open")])
            .unwrap()
            == 1.0,
        "one destination open",
    );
}

/// The attempts a backgrounded client printed.
fn attempts_of(child: std::process::Child) -> Vec<breaker_lab::client::Attempt> {
    let out = child.wait_with_output().unwrap();
    breaker_lab::client::parse_attempts(&String::from_utf8_lossy(&out.stdout)).unwrap()
}

/// Connects already in flight when a blackholed upstream's breaker trips do not
/// wait on it: the kernel retransmits an unanswered SYN for minutes (here the
/// clients would give up at 60 s), but once the breaker turns connects away,
/// sock_ops fails each of them (ETIMEDOUT) at its next retransmission timeout.
/// The first connect times out while the breaker is still closed (1 of 2): it is
/// left to retransmit, and failed at a later timeout, once the second connect's
/// timeout has tripped the breaker and been failed at once.
#[test]
fn connects_in_flight_when_the_breaker_trips_fail_instead_of_waiting_on_the_blackhole() {
    let Some(mut lab) = lab("inflight") else {
        return;
    };
    lab.start_daemon(
        "[[upstream]]\nname = \"dark\"\nendpoints = [\"10.77.0.2:8080\"]\nfailure_threshold = 2\nconnect_timeout = \"1s\"\nopen_duration = \"1h\"\n",
    )
    .unwrap();
    lab.blackhole("10.77.0.2").unwrap();
    let spawn = || {
        lab.client_command(&[
            "--to",
            "10.77.0.2:8080",
            "--count",
            "1",
            "--timeout-ms",
            "60000",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
    };
    let first = spawn();
    let timeouts = |lab: &Lab, n: f64| {
        lab.wait_metric(
            "breaker_connect_failures_total",
            &[("upstream", "dark"), ("reason", "timeout")],
            n,
            breaker_lab::testing::patience(Duration::from_secs(10)),
        )
        .unwrap()
    };
    timeouts(&lab, 1.0);
    let second = spawn();
    let first = attempts_of(first);
    let second = attempts_of(second);
    check(
        &lab,
        first.len() == 1
            && first[0].errno == Some(libc::ETIMEDOUT)
            && (1.5e6..30e6).contains(&first[0].latency_us),
        &format!("the connect counted before the trip was failed by the kernel (ETIMEDOUT) at a later retransmission, well before the client's 60 s: {first:?}"),
    );
    check(
        &lab,
        second.len() == 1 && second[0].errno == Some(libc::ETIMEDOUT) && second[0].latency_us < 5e6,
        &format!("the connect whose timeout tripped the breaker was failed at once (ETIMEDOUT): {second:?}"),
    );
    // Counted as the kernel closes each socket, just after the client hears.
    let aborted = lab
        .wait_metric(
            "breaker_connects_aborted_total",
            &[("upstream", "dark")],
            2.0,
            breaker_lab::testing::patience(Duration::from_secs(5)),
        )
        .unwrap();
    check(&lab, aborted == 2.0, &format!("2 aborted, not {aborted}"));
    let counted = timeouts(&lab, 2.0);
    check(
        &lab,
        counted == 2.0,
        &format!("2 timeouts, each counted once, not {counted}"),
    );
}

/// The race an abort runs: the kernel sends one more SYN as it arms the timer that
/// fails the connect, and if that SYN is answered first the connect succeeds. It
/// then gets its own TCP_USER_TIMEOUT back (an application's, as gRPC sets one),
/// never the 1 ms that would kill the healthy connection at its first loss. Here
/// the route comes back before the first timeout, which trips the breaker
/// (threshold 1): the SYN sent with the abort reaches the upstream, whose answer
/// comes back within the same softirq, before the next tick. Under emulation it
/// may come after the tick instead, and then the connect fails, also acceptable.
#[test]
fn a_connect_that_gets_through_as_it_is_failed_keeps_its_own_user_timeout() {
    let Some(mut lab) = lab("abortrace") else {
        return;
    };
    lab.serve("10.77.0.2:8080", "up").unwrap();
    lab.start_daemon(
        "[[upstream]]\nname = \"race\"\nendpoints = [\"10.77.0.2:8080\"]\nfailure_threshold = 1\nconnect_timeout = \"2s\"\nopen_duration = \"1h\"\n",
    )
    .unwrap();
    lab.blackhole("10.77.0.2").unwrap();
    let client = lab
        .client_command(&[
            "--to",
            "10.77.0.2:8080",
            "--count",
            "1",
            "--timeout-ms",
            "30000",
            "--user-timeout-ms",
            "20000",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // connect4 has seen it: its first SYN is gone into the blackhole.
    lab.wait_metric(
        "breaker_connect_attempts_total",
        &[("upstream", "race")],
        1.0,
        breaker_lab::testing::patience(Duration::from_secs(10)),
    )
    .unwrap();
    lab.restore("10.77.0.2").unwrap();
    let attempts = attempts_of(client);
    let emulated = breaker_lab::testing::patience(Duration::from_secs(1)) > Duration::from_secs(1);
    let got_through = attempts.len() == 1
        && attempts[0].outcome == "ok"
        && attempts[0].user_timeout_ms == Some(20_000);
    let failed = attempts.len() == 1 && attempts[0].errno == Some(libc::ETIMEDOUT);
    check(
        &lab,
        got_through || (emulated && failed),
        &format!("the connect got through with its own 20 s user timeout: {attempts:?}"),
    );
    let timeouts = metric(
        &lab,
        "breaker_connect_failures_total",
        "race",
        &[("reason", "timeout")],
    );
    check(
        &lab,
        timeouts == 1.0,
        &format!("the first SYN timed out (and tripped the breaker): {timeouts}"),
    );
    // The abort was made (and raced, or not): counted at the socket's end, just
    // after the client hears.
    let (counted, other) = if got_through {
        (
            "breaker_connects_abort_raced_total",
            "breaker_connects_aborted_total",
        )
    } else {
        (
            "breaker_connects_aborted_total",
            "breaker_connects_abort_raced_total",
        )
    };
    let n = lab
        .wait_metric(
            counted,
            &[("upstream", "race")],
            1.0,
            breaker_lab::testing::patience(Duration::from_secs(5)),
        )
        .unwrap();
    let m = metric(&lab, other, "race", &[]);
    check(
        &lab,
        n == 1.0 && m == 0.0,
        &format!("{counted} {n} (1), {other} {m} (0)"),
    );
}

/// The other side: while its breaker lets connects through, a connect whose SYN
/// went unanswered is counted as a timeout but left to the kernel, which may still
/// get it through (a lost SYN, a route back); and a dry-run breaker, open or not,
/// never fails a connect.
#[test]
fn a_connect_is_left_to_retransmit_while_its_breaker_lets_connects_through() {
    let Some(mut lab) = lab("retransmit") else {
        return;
    };
    lab.serve("10.77.0.2:8080", "closed").unwrap();
    lab.serve("10.77.0.2:8081", "dry").unwrap();
    lab.start_daemon(
        "[[upstream]]\nname = \"closed\"\nendpoints = [\"10.77.0.2:8080\"]\nfailure_threshold = 5\nconnect_timeout = \"200ms\"\nopen_duration = \"1h\"\n\n[[upstream]]\nname = \"dry\"\nmode = \"dry_run\"\nendpoints = [\"10.77.0.2:8081\"]\nfailure_threshold = 1\nopen_duration = \"1h\"\n",
    )
    .unwrap();
    lab.blackhole("10.77.0.2").unwrap();
    let spawn = |port: &str| {
        lab.client_command(&["--to", port, "--count", "1", "--timeout-ms", "70000"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let closed = spawn("10.77.0.2:8080");
    let dry = spawn("10.77.0.2:8081");
    // Both SYNs timed out once (the dry run's at the kernel's 1 s) and `dry` is
    // open; then the route comes back, and the next retransmissions get through.
    for (up, state) in [("closed", "closed"), ("dry", "open")] {
        lab.wait_metric(
            "breaker_connect_failures_total",
            &[("upstream", up), ("reason", "timeout")],
            1.0,
            breaker_lab::testing::patience(Duration::from_secs(10)),
        )
        .unwrap();
        let in_state = metric(&lab, "breaker_state", up, &[("state", state)]);
        check(&lab, in_state == 1.0, &format!("{up} is {state}"));
    }
    lab.restore("10.77.0.2").unwrap();
    for (up, child) in [("closed", closed), ("dry", dry)] {
        let attempts = attempts_of(child);
        check(
            &lab,
            outcomes(&attempts) == ["ok"],
            &format!("{up}: the connect got through once the route was back: {attempts:?}"),
        );
        let aborted = metric(&lab, "breaker_connects_aborted_total", up, &[]);
        check(&lab, aborted == 0.0, &format!("{up}: {aborted} aborted"));
    }
}
