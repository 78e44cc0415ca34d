//! End-to-end tests of the connect path on a real kernel: the daemon attached to a
//! lab cgroup, real servers in a namespace, an unmodified client in the cgroup.
//! They need root; outside CI they skip with a reason, under CI=true they fail.
use std::time::{Duration, Instant};

use breaker_lab::{
    lab::{Lab, BLACKHOLE_V4, UPSTREAM_V4},
    testing::{check, outcomes},
};

fn lab(tag: &str) -> Option<Lab> {
    breaker_lab::testing::lab(tag, env!("CARGO_BIN_EXE_breaker-lab"))
}

const UP: &[(&str, &str)] = &[("upstream", "api")];

#[test]
fn refused_upstream_opens_after_threshold_and_then_fails_fast() {
    let Some(mut lab) = lab("refused") else {
        return;
    };
    lab.start_daemon(
        r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:81"]
failure_threshold = 3
open_duration = "60s"
"#,
    )
    .unwrap();
    let attempts = lab
        .client(&["--to", "10.77.0.2:81", "--count", "40"])
        .unwrap();
    check(
        &lab,
        attempts.iter().all(|a| a.outcome == "refused"),
        &format!(
            "every connect fails with ECONNREFUSED: {:?}",
            outcomes(&attempts)
        ),
    );
    let m = lab.metrics().unwrap();
    let v = |name, labels: &[(&str, &str)]| breaker_lab::metrics::value(&m, name, labels).unwrap();
    check(
        &lab,
        v(
            "breaker_connect_failures_total",
            &[("upstream", "api"), ("reason", "refused")],
        ) == 3.0,
        "exactly failure_threshold connects reached the upstream",
    );
    check(
        &lab,
        v("breaker_connects_rejected_total", UP) == 37.0,
        "the rest were rejected in the kernel",
    );
    check(
        &lab,
        v("breaker_connect_attempts_total", UP) == 40.0,
        "every connect was seen",
    );
    check(
        &lab,
        v("breaker_state", &[("upstream", "api"), ("state", "open")]) == 1.0,
        "the breaker is open",
    );
    let transitions = lab
        .wait_metric(
            "breaker_transitions_total",
            &[("upstream", "api"), ("from", "closed"), ("to", "open")],
            1.0,
            Duration::from_secs(2),
        )
        .unwrap();
    check(&lab, transitions == 1.0, "one closed->open transition");
    // The fast-fail path: median well under a millisecond.
    let fast: Vec<f64> = attempts[3..].iter().map(|a| a.latency_us).collect();
    let med = breaker_lab::stats::Summary::of(&fast).p50;
    check(
        &lab,
        med < 1000.0,
        &format!("rejected connect() median {med:.1} µs should be well under 1 ms"),
    );
    // The kernel's own log line for the trip reaches the daemon's log (aya-log).
    let deadline = Instant::now() + Duration::from_secs(2);
    while !lab.daemon_log().contains("upstream 1 state 0 -> 1") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    check(
        &lab,
        lab.daemon_log().contains("upstream 1 state 0 -> 1"),
        "kernel log of the trip forwarded",
    );
    // Errno is ECONNREFUSED, not EPERM.
    check(
        &lab,
        attempts[3..]
            .iter()
            .all(|a| a.errno == Some(libc::ECONNREFUSED)),
        "rejections carry ECONNREFUSED",
    );
}

#[test]
fn blackholed_upstream_opens_after_threshold_syn_timeouts() {
    let Some(mut lab) = lab("blackhole") else {
        return;
    };
    lab.start_daemon(&format!(
        r#"
[[upstream]]
name = "api"
endpoints = ["{BLACKHOLE_V4}:80"]
failure_threshold = 2
open_duration = "60s"
"#
    ))
    .unwrap();
    let begin = Instant::now();
    let attempts = lab
        .client(&[
            "--to",
            &format!("{BLACKHOLE_V4}:80"),
            "--count",
            "6",
            "--timeout-ms",
            "1500",
        ])
        .unwrap();
    let took = begin.elapsed();
    check(
        &lab,
        outcomes(&attempts)[..2] == ["timeout", "timeout"],
        &format!(
            "the first two hang until the client gives up: {:?}",
            outcomes(&attempts)
        ),
    );
    check(
        &lab,
        attempts[2..]
            .iter()
            .all(|a| a.outcome == "refused" && a.latency_us < 100_000.0),
        &format!("then they fail fast: {attempts:?}"),
    );
    let m = lab.metrics().unwrap();
    let v = |name, labels: &[(&str, &str)]| breaker_lab::metrics::value(&m, name, labels).unwrap();
    check(
        &lab,
        v(
            "breaker_connect_failures_total",
            &[("upstream", "api"), ("reason", "timeout")],
        ) == 2.0,
        "two SYN timeouts counted",
    );
    check(
        &lab,
        v("breaker_connects_rejected_total", UP) == 4.0,
        "four rejected",
    );
    // Counted at the first SYN retransmission (~1 s), not after the kernel's 127 s.
    check(
        &lab,
        took < Duration::from_secs(10),
        &format!("took {took:?}"),
    );
}

#[test]
fn fallback_receives_connects_while_open() {
    let Some(mut lab) = lab("fallback") else {
        return;
    };
    lab.serve("10.77.0.3:9000", "fallback").unwrap();
    lab.start_daemon(
        r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:81"]
fallback = "10.77.0.3:9000"
failure_threshold = 2
open_duration = "60s"
"#,
    )
    .unwrap();
    let attempts = lab
        .client(&["--to", "10.77.0.2:81", "--count", "6", "--http"])
        .unwrap();
    check(
        &lab,
        outcomes(&attempts)[..2] == ["refused", "refused"],
        &format!("{:?}", outcomes(&attempts)),
    );
    check(
        &lab,
        attempts[2..]
            .iter()
            .all(|a| a.outcome == "ok" && a.body.as_deref() == Some("fallback")),
        &format!("while open, the application transparently reaches the fallback: {attempts:?}"),
    );
    check(
        &lab,
        lab.server("fallback").unwrap().accepted() == 4,
        "the fallback server accepted 4 connections",
    );
    check(
        &lab,
        lab.metric("breaker_connects_redirected_total", UP).unwrap() == 4.0,
        "4 redirected",
    );
    check(
        &lab,
        lab.metric("breaker_connects_rejected_total", UP).unwrap() == 0.0,
        "none rejected",
    );
}

/// `fallbacks` are tried in order: an upstream named there takes redirected
/// connects while its own breaker is CLOSED, and they are its connects (watched,
/// counted, able to trip it); once it is open the next hop takes them; when every
/// hop is open the connect fails fast.
#[test]
fn ordered_fallbacks_skip_an_open_upstream_and_fail_fast_when_every_one_is_open() {
    let Some(mut lab) = lab("fallbacks") else {
        return;
    };
    lab.serve("10.77.0.3:9001", "live").unwrap();
    lab.serve("10.77.0.3:9002", "last").unwrap();
    // Nothing listens on 10.77.0.3:9003: "dead" refuses every connect.
    lab.start_daemon(
        r#"
[defaults]
failure_threshold = 2
open_duration = "60s"

[[upstream]]
name = "api"
endpoints = ["10.77.0.2:81"]
fallbacks = ["live", "10.77.0.3:9002"]

[[upstream]]
name = "api2"
endpoints = ["10.77.0.2:82"]
fallbacks = ["dead", "10.77.0.3:9002"]

[[upstream]]
name = "solo"
endpoints = ["10.77.0.2:83"]
fallbacks = ["dead"]
failure_threshold = 1

[[upstream]]
name = "live"
endpoints = ["10.77.0.3:9001"]

[[upstream]]
name = "dead"
endpoints = ["10.77.0.3:9003"]
"#,
    )
    .unwrap();
    let redirected = |from: &str, to: &str| {
        lab.metric(
            "breaker_connects_redirected_total",
            &[("upstream", from), ("to", to)],
        )
        .unwrap()
    };
    let bodies = |attempts: &[breaker_lab::client::Attempt]| -> Vec<String> {
        attempts
            .iter()
            .map(|a| a.body.clone().unwrap_or_else(|| a.outcome.clone()))
            .collect()
    };

    // A CLOSED upstream hop takes the connects, as its own.
    let attempts = lab
        .client(&["--to", "10.77.0.2:81", "--count", "4", "--http"])
        .unwrap();
    check(
        &lab,
        bodies(&attempts) == ["refused", "refused", "live", "live"],
        &format!("api: its own 2 failures, then \"live\": {attempts:?}"),
    );
    check(
        &lab,
        redirected("api", "live") == 2.0,
        "2 redirected to live",
    );
    check(
        &lab,
        redirected("api", "10.77.0.3:9002") == 0.0,
        "none past live",
    );
    let live = [("upstream", "live")];
    check(
        &lab,
        lab.metric("breaker_connect_attempts_total", &live).unwrap() == 2.0
            && lab
                .metric("breaker_connect_successes_total", &live)
                .unwrap()
                == 2.0,
        "the redirected connects are live's, watched to their outcome",
    );

    // A failing upstream hop trips on the redirected connects; the next hop
    // takes over.
    let attempts = lab
        .client(&["--to", "10.77.0.2:82", "--count", "6", "--http"])
        .unwrap();
    check(
        &lab,
        bodies(&attempts) == ["refused", "refused", "refused", "refused", "last", "last"],
        &format!("api2: its own 2 failures, dead's 2, then the address: {attempts:?}"),
    );
    let dead = [("upstream", "dead")];
    check(
        &lab,
        lab.metric(
            "breaker_connect_failures_total",
            &[("upstream", "dead"), ("reason", "refused")],
        )
        .unwrap()
            == 2.0,
        "dead's breaker counted the redirected connects' failures",
    );
    check(
        &lab,
        lab.metric("breaker_state", &[("upstream", "dead"), ("state", "open")])
            .unwrap()
            == 1.0,
        "and opened",
    );
    check(
        &lab,
        redirected("api2", "dead") == 2.0 && redirected("api2", "10.77.0.3:9002") == 2.0,
        "2 to dead, 2 to the address",
    );
    check(
        &lab,
        lab.server("last").unwrap().accepted() == 2,
        "the address took the 2",
    );

    // Every hop open: fail fast.
    let started = Instant::now();
    let attempts = lab
        .client(&["--to", "10.77.0.2:83", "--count", "3"])
        .unwrap();
    let took = started.elapsed();
    check(
        &lab,
        attempts.iter().all(|a| a.outcome == "refused"),
        &format!("{:?}", outcomes(&attempts)),
    );
    let solo = [("upstream", "solo")];
    check(
        &lab,
        lab.metric("breaker_connects_rejected_total", &solo)
            .unwrap()
            == 2.0
            && redirected("solo", "dead") == 0.0,
        "solo's connects after its trip were rejected, not sent to the open \"dead\"",
    );
    check(
        &lab,
        lab.metric("breaker_connect_attempts_total", &dead).unwrap() == 2.0,
        "dead saw no connect of solo's",
    );
    check(
        &lab,
        took < Duration::from_secs(5),
        &format!("took {took:?}"),
    );
}

#[test]
fn probe_closes_the_breaker_after_the_upstream_returns() {
    let Some(mut lab) = lab("recovery") else {
        return;
    };
    lab.serve("10.77.0.2:8080", "api").unwrap();
    lab.start_daemon(
        r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:8080"]
failure_threshold = 2
open_duration = "1s"
probe_interval = "200ms"
probe_timeout = "300ms"
"#,
    )
    .unwrap();
    let healthy = lab
        .client(&["--to", "10.77.0.2:8080", "--count", "3", "--http"])
        .unwrap();
    check(
        &lab,
        healthy.iter().all(|a| a.body.as_deref() == Some("api")),
        &format!("healthy: {healthy:?}"),
    );

    lab.blackhole(UPSTREAM_V4).unwrap();
    let dark = lab
        .client(&[
            "--to",
            "10.77.0.2:8080",
            "--count",
            "4",
            "--timeout-ms",
            "1500",
        ])
        .unwrap();
    check(
        &lab,
        outcomes(&dark) == ["timeout", "timeout", "refused", "refused"],
        &format!("dark: {:?}", outcomes(&dark)),
    );
    // Probes run (and fail) while it is dark; the breaker stays open.
    let failed = lab
        .wait_metric(
            "breaker_probes_total",
            &[("upstream", "api"), ("result", "failure")],
            1.0,
            Duration::from_secs(3),
        )
        .unwrap();
    check(
        &lab,
        failed >= 1.0,
        "a probe failed while the upstream was dark",
    );
    check(
        &lab,
        lab.metric("breaker_state", &[("upstream", "api"), ("state", "closed")])
            .unwrap()
            == 0.0,
        "still not closed",
    );

    lab.restore(UPSTREAM_V4).unwrap();
    let back = Instant::now();
    let closed = lab
        .wait_metric(
            "breaker_state",
            &[("upstream", "api"), ("state", "closed")],
            1.0,
            Duration::from_secs(6),
        )
        .unwrap();
    check(
        &lab,
        closed == 1.0,
        &format!(
            "closed by a probe after the upstream returned (waited {:?})",
            back.elapsed()
        ),
    );
    check(
        &lab,
        lab.metric(
            "breaker_probes_total",
            &[("upstream", "api"), ("result", "success")],
        )
        .unwrap()
            >= 1.0,
        "a probe passed",
    );
    check(
        &lab,
        lab.metric(
            "breaker_transitions_total",
            &[("upstream", "api"), ("from", "half_open"), ("to", "closed")],
        )
        .unwrap()
            == 1.0,
        "half_open->closed once",
    );
    let after = lab
        .client(&["--to", "10.77.0.2:8080", "--count", "3", "--http"])
        .unwrap();
    check(
        &lab,
        after.iter().all(|a| a.body.as_deref() == Some("api")),
        &format!("after recovery: {after:?}"),
    );
}

#[test]
fn ipv6_upstream_trips_and_redirects() {
    let Some(mut lab) = lab("ipv6") else { return };
    lab.serve("[fd77::3]:9000", "fallback6").unwrap();
    lab.serve("[fd77::2]:8080", "healthy6").unwrap();
    lab.start_daemon(
        r#"
[[upstream]]
name = "api"
endpoints = ["[fd77::2]:81"]
fallback = "[fd77::3]:9000"
failure_threshold = 2
open_duration = "60s"

[[upstream]]
name = "healthy"
endpoints = ["[fd77::2]:8080"]
"#,
    )
    .unwrap();
    let attempts = lab
        .client(&["--to", "[fd77::2]:81", "--count", "5", "--http"])
        .unwrap();
    check(
        &lab,
        outcomes(&attempts)[..2] == ["refused", "refused"],
        &format!("{:?}", outcomes(&attempts)),
    );
    check(
        &lab,
        attempts[2..]
            .iter()
            .all(|a| a.body.as_deref() == Some("fallback6")),
        &format!("{attempts:?}"),
    );
    check(
        &lab,
        lab.metric(
            "breaker_connect_failures_total",
            &[("upstream", "api"), ("reason", "refused")],
        )
        .unwrap()
            == 2.0,
        &format!("2 IPv6 failures: {}", lab.metrics_text().unwrap()),
    );
    let ok = lab
        .client(&["--to", "[fd77::2]:8080", "--count", "3", "--http"])
        .unwrap();
    check(
        &lab,
        ok.iter().all(|a| a.body.as_deref() == Some("healthy6")),
        &format!("{ok:?}"),
    );
    check(
        &lab,
        lab.metric(
            "breaker_connect_successes_total",
            &[("upstream", "healthy")],
        )
        .unwrap()
            == 3.0,
        "3 IPv6 successes",
    );
}

#[test]
fn sixty_four_concurrent_clients_stay_within_the_bounds() {
    let Some(mut lab) = lab("concurrency") else {
        return;
    };
    lab.start_daemon(&format!(
        r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:81"]
failure_threshold = 5
open_duration = "60s"

[[upstream]]
name = "dark"
endpoints = ["{BLACKHOLE_V4}:80"]
failure_threshold = 3
open_duration = "300ms"
half_open_max_connections = 2
probe_interval = "60s"
probe_timeout = "200ms"
"#
    ))
    .unwrap();
    // Trip under a stampede: at most threshold + the connects in flight at the trip.
    let attempts = lab
        .client(&[
            "--to",
            "10.77.0.2:81",
            "--count",
            "10",
            "--concurrency",
            "64",
        ])
        .unwrap();
    check(
        &lab,
        attempts.len() == 640 && attempts.iter().all(|a| a.outcome == "refused"),
        "640 refused connects",
    );
    let failures = lab
        .metric("breaker_connect_failures_total", &[("upstream", "api")])
        .unwrap();
    check(
        &lab,
        (5.0..=5.0 + 64.0).contains(&failures),
        &format!("{failures} failed connects reached the upstream; bound is 5 + 64"),
    );
    check(
        &lab,
        lab.metric("breaker_connects_rejected_total", UP).unwrap() == 640.0 - failures,
        "all others rejected",
    );
    std::thread::sleep(Duration::from_millis(200));
    check(
        &lab,
        lab.metric(
            "breaker_transitions_total",
            &[("upstream", "api"), ("to", "open")],
        )
        .unwrap()
            == 1.0,
        "tripped exactly once",
    );

    // HALF_OPEN never admits more than its permitted trials, whatever the load.
    let dark = [("upstream", "dark")];
    let _ = lab
        .client(&[
            "--to",
            &format!("{BLACKHOLE_V4}:80"),
            "--count",
            "12",
            "--concurrency",
            "64",
            // Longer than the first SYN RTO (about 1 s): a connect the client
            // abandons before any answer is not a failure of the upstream.
            "--timeout-ms",
            "1500",
            "--interval-ms",
            "50",
        ])
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let m = lab.metrics().unwrap();
    let v = |name, labels: &[(&str, &str)]| breaker_lab::metrics::value(&m, name, labels).unwrap();
    let admitted =
        v("breaker_connect_attempts_total", &dark) - v("breaker_connects_rejected_total", &dark);
    let half_opens = v(
        "breaker_transitions_total",
        &[("upstream", "dark"), ("from", "open"), ("to", "half_open")],
    );
    check(
        &lab,
        half_opens >= 1.0,
        "the breaker went half-open at least once",
    );
    let bound = 3.0 + 64.0 + 2.0 * half_opens;
    check(&lab, admitted <= bound, &format!("{admitted} connects admitted; bound {bound} (3 + 64 in flight + 2 per half-open round, {half_opens} rounds)"));
}

#[test]
fn unrelated_traffic_is_never_touched() {
    let Some(mut lab) = lab("unrelated") else {
        return;
    };
    lab.serve("10.77.0.2:8080", "other-port").unwrap();
    lab.serve("10.77.0.3:81", "other-host").unwrap();
    lab.start_daemon(
        r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:81"]
failure_threshold = 1
open_duration = "60s"
"#,
    )
    .unwrap();
    let trip = lab
        .client(&["--to", "10.77.0.2:81", "--count", "2"])
        .unwrap();
    check(&lab, outcomes(&trip) == ["refused", "refused"], "tripped");
    check(
        &lab,
        lab.metric("breaker_connects_rejected_total", UP).unwrap() == 1.0,
        "second connect rejected",
    );
    let port = lab
        .client(&["--to", "10.77.0.2:8080", "--count", "3", "--http"])
        .unwrap();
    check(
        &lab,
        port.iter().all(|a| a.body.as_deref() == Some("other-port")),
        &format!("same host, other port: {port:?}"),
    );
    let host = lab
        .client(&["--to", "10.77.0.3:81", "--count", "3", "--http"])
        .unwrap();
    check(
        &lab,
        host.iter().all(|a| a.body.as_deref() == Some("other-host")),
        &format!("same port, other host: {host:?}"),
    );
    let udp = lab
        .client(&["--to", "10.77.0.2:81", "--count", "3", "--udp"])
        .unwrap();
    check(
        &lab,
        udp.iter().all(|a| a.outcome == "ok"),
        &format!("UDP to the open upstream passes: {udp:?}"),
    );
    check(
        &lab,
        lab.metric("breaker_connect_attempts_total", UP).unwrap() == 2.0,
        "none of that was counted against the upstream",
    );
    // A process outside the lab cgroup is not affected either.
    let outside = lab
        .client
        .within(|| {
            std::net::TcpStream::connect_timeout(
                &"10.77.0.3:81".parse().unwrap(),
                Duration::from_secs(2),
            )
            .is_ok()
        })
        .unwrap();
    check(&lab, outside, "a connect from outside the cgroup works");
    check(
        &lab,
        lab.metric("breaker_connect_attempts_total", UP).unwrap() == 2.0,
        "and is not seen",
    );
}

#[test]
fn default_policy_gives_each_destination_its_own_breaker() {
    let Some(mut lab) = lab("default") else {
        return;
    };
    lab.serve("10.77.0.2:8080", "healthy").unwrap();
    lab.start_daemon(
        r#"
[default_policy]
failure_threshold = 2
open_duration = "60s"
"#,
    )
    .unwrap();
    let dead = lab
        .client(&["--to", "10.77.0.2:82", "--count", "5"])
        .unwrap();
    check(
        &lab,
        dead.iter().all(|a| a.outcome == "refused"),
        "dead destination refused",
    );
    let d = [("upstream", "default")];
    check(
        &lab,
        lab.metric("breaker_connect_failures_total", &d).unwrap() == 2.0,
        "2 failures reached it",
    );
    check(
        &lab,
        lab.metric("breaker_connects_rejected_total", &d).unwrap() == 3.0,
        "3 rejected",
    );
    let ok = lab
        .client(&["--to", "10.77.0.2:8080", "--count", "3", "--http"])
        .unwrap();
    check(
        &lab,
        ok.iter().all(|a| a.body.as_deref() == Some("healthy")),
        &format!("another destination is unaffected: {ok:?}"),
    );
    let open = lab
        .wait_metric(
            "breaker_default_policy_destinations",
            &[("state", "open")],
            1.0,
            Duration::from_secs(2),
        )
        .unwrap();
    check(&lab, open == 1.0, "one destination open");
}

#[test]
fn http_probe_needs_a_2xx_answer_to_close() {
    let Some(mut lab) = lab("httpprobe") else {
        return;
    };
    lab.serve("10.77.0.2:8080", "health")
        .unwrap()
        .set_status(503);
    lab.start_daemon(
        r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:81"]
failure_threshold = 1
open_duration = "300ms"
probe_interval = "100ms"
probe = { address = "10.77.0.2:8080", http_path = "/healthz" }
"#,
    )
    .unwrap();
    let trip = lab
        .client(&["--to", "10.77.0.2:81", "--count", "2"])
        .unwrap();
    check(&lab, outcomes(&trip) == ["refused", "refused"], "tripped");
    // The health endpoint accepts the TCP connect but answers 503: probes fail.
    let failed = lab
        .wait_metric(
            "breaker_probes_total",
            &[("upstream", "api"), ("result", "failure")],
            2.0,
            Duration::from_secs(5),
        )
        .unwrap();
    check(
        &lab,
        failed >= 2.0,
        &format!("HTTP 503 probes count as failures ({failed})"),
    );
    check(
        &lab,
        lab.metric("breaker_state", &[("upstream", "api"), ("state", "closed")])
            .unwrap()
            == 0.0,
        "not closed on a 503",
    );
    check(
        &lab,
        lab.daemon_log().contains("answered HTTP 503"),
        "the probe failure says why",
    );
    lab.server("health").unwrap().set_status(200);
    let closed = lab
        .wait_metric(
            "breaker_state",
            &[("upstream", "api"), ("state", "closed")],
            1.0,
            Duration::from_secs(5),
        )
        .unwrap();
    check(&lab, closed == 1.0, "a 200 answer closes the breaker");
}

#[test]
fn application_trial_in_half_open_closes_the_breaker() {
    let Some(mut lab) = lab("trial") else { return };
    lab.serve("10.77.0.2:8080", "api").unwrap();
    // The probe target never answers, and probes are rare: only application traffic
    // admitted in HALF_OPEN can close this breaker.
    lab.start_daemon(&format!(
        r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:8080"]
failure_threshold = 2
open_duration = "1s"
half_open_max_connections = 1
probe_interval = "60s"
probe_timeout = "200ms"
probe = {{ address = "{BLACKHOLE_V4}:80" }}
"#
    ))
    .unwrap();
    lab.blackhole(UPSTREAM_V4).unwrap();
    let dark = lab
        .client(&[
            "--to",
            "10.77.0.2:8080",
            "--count",
            "3",
            "--timeout-ms",
            "1500",
        ])
        .unwrap();
    check(
        &lab,
        outcomes(&dark) == ["timeout", "timeout", "refused"],
        &format!("{:?}", outcomes(&dark)),
    );
    lab.restore(UPSTREAM_V4).unwrap();
    // Well past open_duration: the breaker is half-open (the probe target stays dark).
    std::thread::sleep(Duration::from_millis(2600));
    let trial = lab
        .client(&["--to", "10.77.0.2:8080", "--count", "1", "--http"])
        .unwrap();
    check(
        &lab,
        trial[0].body.as_deref() == Some("api"),
        &format!("the trial connect reached the upstream: {trial:?}"),
    );
    let closed = lab
        .wait_metric(
            "breaker_state",
            &[("upstream", "api"), ("state", "closed")],
            1.0,
            Duration::from_secs(2),
        )
        .unwrap();
    check(
        &lab,
        closed == 1.0,
        "its success closed the breaker (success_threshold 1)",
    );
    check(
        &lab,
        lab.metric(
            "breaker_probes_total",
            &[("upstream", "api"), ("result", "success")],
        )
        .unwrap()
            == 0.0,
        "no probe passed",
    );
}

#[test]
fn cidr_and_any_port_endpoints_match_exact_port_first_then_longest_prefix() {
    let Some(mut lab) = lab("prefixes") else {
        return;
    };
    // fd77:0:0:1::/64 is in fd77::/48 but not in the lab's fd77::/64: send it to the void.
    lab.client
        .ip(&["-6", "route", "add", "fd77:0:0:1::/64", "dev", "dark"])
        .unwrap();
    // "wide" overlaps "subnet" and "v6net" on the same ports with shorter prefixes.
    lab.start_daemon(
        r#"
[[upstream]]
name = "wide"
endpoints = ["10.77.0.0/16:81", "[fd77::/48]:82"]
failure_threshold = 100
open_duration = "60s"
probe = { address = "10.77.0.2:81" }

[[upstream]]
name = "subnet"
endpoints = ["10.77.0.0/24:81"]
failure_threshold = 1
open_duration = "60s"
probe = { address = "10.77.0.2:81" }

[[upstream]]
name = "anyport"
endpoints = ["10.77.0.3"]
failure_threshold = 1
open_duration = "60s"
probe = { address = "10.77.0.3:83" }

[[upstream]]
name = "v6net"
endpoints = ["[fd77::/64]:82"]
failure_threshold = 1
open_duration = "60s"
probe = { address = "[fd77::2]:82" }
"#,
    )
    .unwrap();
    let count = |name: &str| {
        lab.metric("breaker_connect_attempts_total", &[("upstream", name)])
            .unwrap()
    };
    // 10.77.0.2:81 is in the /16 and the /24, both with port 81: the /24 wins, and
    // "subnet" opens after one refusal.
    let a = lab
        .client(&["--to", "10.77.0.2:81", "--count", "2"])
        .unwrap();
    check(&lab, outcomes(&a) == ["refused", "refused"], "refused");
    check(
        &lab,
        count("subnet") == 2.0 && count("wide") == 0.0,
        "the /24 beats the /16",
    );
    check(
        &lab,
        lab.metric("breaker_connects_rejected_total", &[("upstream", "subnet")])
            .unwrap()
            == 1.0,
        "subnet opened",
    );
    // 10.77.0.3:81 matches all three IPv4 endpoints; the exact port wins, then the /24.
    lab.client(&["--to", "10.77.0.3:81", "--count", "1"])
        .unwrap();
    check(
        &lab,
        count("subnet") == 3.0 && count("anyport") == 0.0 && count("wide") == 0.0,
        "exact port beats any-port, and the /24 beats the /16",
    );
    // A destination only in the /16 (routed to the void) belongs to "wide".
    lab.client(&[
        "--to",
        &format!("{BLACKHOLE_V4}:81"),
        "--count",
        "1",
        "--timeout-ms",
        "300",
    ])
    .unwrap();
    check(
        &lab,
        count("wide") == 1.0 && count("subnet") == 3.0,
        "outside the /24, the /16 matches",
    );
    // 10.77.0.3:83 only matches the any-port endpoint.
    lab.client(&["--to", "10.77.0.3:83", "--count", "2"])
        .unwrap();
    check(&lab, count("anyport") == 2.0, "any-port endpoint matched");
    check(
        &lab,
        lab.metric(
            "breaker_connects_rejected_total",
            &[("upstream", "anyport")],
        )
        .unwrap()
            == 1.0,
        "anyport opened",
    );
    // IPv6: fd77::3 is in the /48 and the /64, both with port 82: the /64 wins.
    lab.client(&["--to", "[fd77::3]:82", "--count", "2"])
        .unwrap();
    check(
        &lab,
        count("v6net") == 2.0 && count("wide") == 1.0,
        "the IPv6 /64 beats the /48",
    );
    // Only in the /48: "wide".
    lab.client(&[
        "--to",
        "[fd77:0:0:1::1]:82",
        "--count",
        "1",
        "--timeout-ms",
        "300",
    ])
    .unwrap();
    check(
        &lab,
        count("wide") == 2.0 && count("v6net") == 2.0,
        "outside the /64, the /48 matches",
    );
    // Same prefixes, other port: nobody's.
    let other = lab
        .client(&["--to", "[fd77::3]:84", "--count", "1"])
        .unwrap();
    check(
        &lab,
        other[0].outcome == "refused" && count("v6net") == 2.0 && count("wide") == 2.0,
        "other port not matched",
    );
}

#[test]
fn sigterm_leaves_protection_in_place_until_uninstall() {
    let Some(mut lab) = lab("detach") else { return };
    lab.start_daemon(
        r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:81"]
failure_threshold = 1
open_duration = "1h"
"#,
    )
    .unwrap();
    let trip = lab
        .client(&["--to", "10.77.0.2:81", "--count", "1"])
        .unwrap();
    check(&lab, trip[0].outcome == "refused", "tripped");
    // The upstream comes back, but the breaker stays open for an hour...
    lab.serve("10.77.0.2:81", "back").unwrap();
    let held = lab
        .client(&["--to", "10.77.0.2:81", "--count", "2", "--http"])
        .unwrap();
    check(
        &lab,
        held.iter().all(|a| a.outcome == "refused"),
        &format!("still held back: {held:?}"),
    );
    // ...also once the daemon is stopped: the pinned programs keep enforcing.
    let status = lab
        .signal_daemon(nix::sys::signal::Signal::SIGTERM)
        .unwrap()
        .expect("the daemon was running");
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status}\n{}",
        lab.daemon_log()
    );
    assert!(
        lab.daemon_log().contains("the programs stay attached"),
        "{}",
        lab.daemon_log()
    );
    let stopped = lab
        .client(&["--to", "10.77.0.2:81", "--count", "2", "--http"])
        .unwrap();
    check(
        &lab,
        stopped.iter().all(|a| a.outcome == "refused"),
        &format!("still held back with no daemon: {stopped:?}"),
    );
    // What the kernel has attached to the cgroup, as bpftool shows it.
    let attached = |lab: &breaker_lab::lab::Lab| lab.attached_programs().unwrap().len();
    check(
        &lab,
        attached(&lab) == 4,
        "the four programs stay attached with no daemon",
    );
    // `breaker uninstall` removes every pin, and with them the programs.
    let out = lab.uninstall().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for pin in [
        "links/brk_connect4",
        "links/brk_sock_ops",
        "maps/UPSTREAM_STATES",
    ] {
        assert!(stdout.contains(pin), "uninstall names {pin}: {stdout}");
    }
    assert!(!lab.pins.exists(), "the pin folder is gone");
    check(
        &lab,
        attached(&lab) == 0,
        "nothing is attached after uninstall",
    );
    let after = lab
        .client(&["--to", "10.77.0.2:81", "--count", "3", "--http"])
        .unwrap();
    assert!(
        after.iter().all(|a| a.body.as_deref() == Some("back")),
        "connects reach the upstream once breaker is uninstalled: {after:?}"
    );
    let again = lab.uninstall().unwrap();
    assert!(
        again.status.success()
            && String::from_utf8_lossy(&again.stdout).contains("nothing to remove"),
        "{again:?}"
    );
}

/// `connect_timeout` brings the `timeout` outcome forward to that long after the
/// SYN: a client that gives up after 600 ms trips a 200 ms breaker on a blackhole
/// after three connects, while one on the kernel's 1 s RTO has closed each of them
/// before it could count (abandoned, never a failure) and never trips.
#[test]
fn connect_timeout_counts_a_blackholed_connect_sooner() {
    let Some(mut lab) = lab("conntimeout") else {
        return;
    };
    lab.start_daemon(&format!(
        "[[upstream]]\nname = \"quick\"\nendpoints = [\"{BLACKHOLE_V4}:80\"]\nfailure_threshold = 3\nopen_duration = \"1h\"\nconnect_timeout = \"200ms\"\n[[upstream]]\nname = \"kernel\"\nendpoints = [\"{BLACKHOLE_V4}:81\"]\nfailure_threshold = 3\nopen_duration = \"1h\"\n"
    ))
    .unwrap();
    let run = |port: u16| {
        let started = Instant::now();
        let to = format!("{BLACKHOLE_V4}:{port}");
        let a = lab
            .client(&["--to", &to, "--count", "4", "--timeout-ms", "600"])
            .unwrap();
        (a, started.elapsed())
    };
    let (quick, took) = run(80);
    check(
        &lab,
        outcomes(&quick) == ["timeout", "timeout", "timeout", "refused"],
        &format!("three blackholed connects trip it: {:?}", outcomes(&quick)),
    );
    let (kernel, _) = run(81);
    check(
        &lab,
        outcomes(&kernel) == ["timeout"; 4],
        &format!(
            "on the kernel's RTO it never trips: {:?}",
            outcomes(&kernel)
        ),
    );
    let m = lab.metrics().unwrap();
    let v = |name, up: &str, reason: Option<&str>| {
        let mut labels = vec![("upstream", up)];
        labels.extend(reason.map(|r| ("reason", r)));
        breaker_lab::metrics::value(&m, name, &labels).unwrap()
    };
    check(
        &lab,
        v("breaker_connect_failures_total", "quick", Some("timeout")) == 3.0
            && v("breaker_connects_abandoned_total", "quick", None) == 0.0,
        "each of quick's connects counted as a timeout, none abandoned",
    );
    check(
        &lab,
        v("breaker_connect_failures_total", "kernel", Some("timeout")) == 0.0
            && v("breaker_connects_abandoned_total", "kernel", None) == 4.0,
        "the client closed each of kernel's connects before its 1 s RTO",
    );
    // Three client timeouts and a fail-fast: the breaker was open well before the
    // kernel's first RTO would have counted even one.
    check(
        &lab,
        took < Duration::from_secs(3),
        &format!("took {took:?}"),
    );
}

/// Each successful watched connect adds its time to its upstream's histogram,
/// once; failed connects add nothing, nor do other upstreams' connects.
#[test]
fn successful_connects_fill_their_upstreams_duration_histogram() {
    let Some(mut lab) = lab("durations") else {
        return;
    };
    lab.serve("10.77.0.2:8080", "api").unwrap();
    lab.start_daemon(
        r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:8080", "10.77.0.2:8081"]
failure_threshold = 100

[[upstream]]
name = "other"
endpoints = ["10.77.0.3:80"]
"#,
    )
    .unwrap();
    let ok = lab
        .client(&["--to", "10.77.0.2:8080", "--count", "5"])
        .unwrap();
    let refused = lab
        .client(&["--to", "10.77.0.2:8081", "--count", "3"])
        .unwrap();
    check(
        &lab,
        outcomes(&ok) == ["ok"; 5] && outcomes(&refused) == ["refused"; 3],
        &format!("{ok:?} {refused:?}"),
    );
    let samples = breaker_lab::metrics::parse(&lab.metrics_text().unwrap());
    let of = |name: &str, upstream: &str| -> Vec<(String, f64)> {
        samples
            .iter()
            .filter(|s| {
                s.name == name
                    && s.labels
                        .iter()
                        .any(|(k, v)| k == "upstream" && v == upstream)
            })
            .map(|s| {
                let le = s.labels.iter().find(|(k, _)| k == "le");
                (le.map(|(_, v)| v.clone()).unwrap_or_default(), s.value)
            })
            .collect()
    };
    let buckets = of("breaker_connect_duration_seconds_bucket", "api");
    let count = of("breaker_connect_duration_seconds_count", "api");
    let sum = of("breaker_connect_duration_seconds_sum", "api");
    let bounds: Vec<f64> = buckets
        .iter()
        .filter_map(|(le, _)| le.parse::<f64>().ok())
        .filter(|b| b.is_finite())
        .collect();
    let cumulative: Vec<f64> = buckets.iter().map(|(_, v)| *v).collect();
    check(
        &lab,
        count == [(String::new(), 5.0)]
            && buckets.last() == Some(&("+Inf".to_string(), 5.0))
            && cumulative.windows(2).all(|w| w[0] <= w[1])
            && bounds.len() == 13
            && bounds.windows(2).all(|w| w[1] == 2.0 * w[0])
            && matches!(sum.as_slice(), [(_, s)] if (0.0..5.0).contains(s)),
        &format!("api's histogram: five connects in powers of two ticks: {buckets:?} count {count:?} sum {sum:?}"),
    );
    check(
        &lab,
        of("breaker_connect_duration_seconds_count", "other") == [(String::new(), 0.0)],
        "another upstream's histogram is empty",
    );
}
