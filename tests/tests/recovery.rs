//! Recovery on a real kernel: no application waits on a blackhole once a breaker has
//! tripped, a breaker never holds a destination shut that nothing will test again,
//! and outcomes go to the breaker the connect hook chose.
use std::time::{Duration, Instant};

use breaker_lab::{
    lab::{Lab, BLACKHOLE_V4, UPSTREAM_V4},
    testing::{check, outcomes},
};

fn lab(tag: &str) -> Option<Lab> {
    breaker_lab::testing::lab(tag, env!("CARGO_BIN_EXE_breaker-lab"))
}

/// Trips `to` with `n` blackholed connects (each counted at the first SYN RTO).
fn trip_dark(lab: &Lab, to: &str, n: u32) {
    let dark = lab
        .client(&[
            "--to",
            to,
            "--count",
            &n.to_string(),
            "--timeout-ms",
            "1500",
        ])
        .unwrap();
    check(
        lab,
        dark.iter().all(|a| a.outcome == "timeout"),
        &format!("dark connects time out: {:?}", outcomes(&dark)),
    );
}

#[test]
fn a_trial_into_a_blackhole_fails_within_trial_connect_timeout() {
    let Some(mut lab) = lab("trialbudget") else {
        return;
    };
    lab.start_daemon(&format!(
        r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:8080"]
failure_threshold = 2
open_duration = "1s"
half_open_max_connections = 1
trial_connect_timeout = "1s"
probe_interval = "60s"
probe_timeout = "200ms"
probe = {{ address = "{BLACKHOLE_V4}:80" }}
"#
    ))
    .unwrap();
    lab.blackhole(UPSTREAM_V4).unwrap();
    trip_dark(&lab, "10.77.0.2:8080", 2);
    std::thread::sleep(Duration::from_millis(1200));
    // The application waits up to 10 s; the trial's SYN budget ends it first.
    let trial = lab
        .client(&[
            "--to",
            "10.77.0.2:8080",
            "--count",
            "1",
            "--timeout-ms",
            "10000",
        ])
        .unwrap();
    let took_ms = trial[0].latency_us / 1000.0;
    check(
        &lab,
        trial[0].errno == Some(libc::ETIMEDOUT) && took_ms <= 1150.0,
        &format!("the trial fails with ETIMEDOUT within 1 s (+150 ms): {trial:?}"),
    );
    let reopened = lab
        .wait_metric(
            "breaker_transitions_total",
            &[("upstream", "api"), ("from", "half_open"), ("to", "open")],
            1.0,
            Duration::from_secs(2),
        )
        .unwrap();
    check(
        &lab,
        reopened == 1.0,
        "the failed trial reopened the breaker",
    );
}

/// One outage of a probed upstream: application connects fail fast throughout,
/// probes run every probe_interval, the breaker reports `half_open` while probing,
/// and it closes within probe_interval + 100 ms of the upstream's return.
#[test]
fn a_probed_upstream_fails_fast_through_an_outage_and_recovers_by_probe() {
    let Some(mut lab) = lab("outage") else {
        return;
    };
    lab.serve("10.77.0.2:8080", "api").unwrap();
    lab.start_daemon(
        r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:8080"]
failure_threshold = 2
open_duration = "2s"
probe_interval = "500ms"
probe_timeout = "300ms"
"#,
    )
    .unwrap();
    lab.blackhole(UPSTREAM_V4).unwrap();
    trip_dark(&lab, "10.77.0.2:8080", 2);
    let opened = Instant::now();
    // 100 connects over 10 s of blackholed OPEN (and then probing) time.
    let during = lab
        .client(&[
            "--to",
            "10.77.0.2:8080",
            "--count",
            "100",
            "--interval-ms",
            "100",
            "--timeout-ms",
            "3000",
        ])
        .unwrap();
    let slowest_ms = during
        .iter()
        .map(|a| a.latency_us / 1000.0)
        .fold(0.0, f64::max);
    check(
        &lab,
        during.len() == 100
            && during
                .iter()
                .all(|a| a.errno == Some(libc::ECONNREFUSED) && a.latency_us < 50_000.0),
        &format!(
            "all 100 fail fast with ECONNREFUSED (slowest {slowest_ms:.1} ms): {:?}",
            outcomes(&during)
        ),
    );
    let probing_ms = opened.elapsed().as_millis() as f64 - 2000.0;
    let probes = lab
        .metric(
            "breaker_probes_total",
            &[("upstream", "api"), ("result", "failure")],
        )
        .unwrap();
    let expected = probing_ms / 500.0;
    check(
        &lab,
        probes >= (expected * 0.75).floor() && probes <= expected.ceil() + 1.0,
        &format!("{probes} failed probes in {probing_ms:.0} ms of probing: about one per 500 ms"),
    );
    check(
        &lab,
        lab.metric(
            "breaker_state",
            &[("upstream", "api"), ("state", "half_open")],
        )
        .unwrap()
            == 1.0,
        "a probing breaker reports half_open",
    );
    lab.restore(UPSTREAM_V4).unwrap();
    let back = Instant::now();
    let closed = lab
        .wait_metric(
            "breaker_state",
            &[("upstream", "api"), ("state", "closed")],
            1.0,
            Duration::from_secs(3),
        )
        .unwrap();
    let waited = back.elapsed();
    check(
        &lab,
        closed == 1.0 && waited <= Duration::from_millis(600),
        &format!("closed by a probe within probe_interval + 100 ms of the return: {waited:?}"),
    );
    let after = lab
        .client(&["--to", "10.77.0.2:8080", "--count", "2", "--http"])
        .unwrap();
    check(
        &lab,
        after.iter().all(|a| a.body.as_deref() == Some("api")),
        &format!("served again: {after:?}"),
    );
}

/// Routes the upstream to "unreachable" in the client namespace: a connect fails in
/// the kernel after the connect hook admitted it, and no SYN leaves.
fn unreachable(lab: &Lab, on: bool) {
    let verb = if on { "add" } else { "del" };
    lab.client
        .ip(&["route", verb, "unreachable", &format!("{UPSTREAM_V4}/32")])
        .unwrap();
}

const DEFAULT_POLICY: &str = r#"
[default_policy]
failure_threshold = 2
open_duration = "1s"
"#;

#[test]
fn a_lost_default_policy_trial_never_wedges_its_destination() {
    let Some(mut lab) = lab("losttrial") else {
        return;
    };
    // The trial lease is twice trial_connect_timeout: 1 s.
    lab.start_daemon(&format!(
        "{DEFAULT_POLICY}trial_connect_timeout = \"500ms\"\n"
    ))
    .unwrap();
    let trip = lab
        .client(&["--to", "10.77.0.2:82", "--count", "2"])
        .unwrap();
    check(&lab, outcomes(&trip) == ["refused", "refused"], "tripped");
    unreachable(&lab, true);
    std::thread::sleep(Duration::from_millis(1100));
    // The trial never reaches the network, and its application keeps the socket:
    // nobody will ever report on it.
    let mut holder = lab
        .client_command(&["--to", "10.77.0.2:82", "--count", "1", "--hold-ms", "8000"])
        .spawn()
        .unwrap();
    let admitted = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    unreachable(&lab, false);
    lab.serve("10.77.0.2:82", "back").unwrap();
    let blocked = lab
        .client(&["--to", "10.77.0.2:82", "--count", "1", "--http"])
        .unwrap();
    check(
        &lab,
        blocked[0].errno == Some(libc::ECONNREFUSED),
        &format!("while the lost trial holds the only slot, connects are rejected: {blocked:?}"),
    );
    // After the lease, a new trial goes through and closes the breaker.
    let mut served = None;
    while admitted.elapsed() < Duration::from_secs(4) {
        let a = lab
            .client(&["--to", "10.77.0.2:82", "--count", "1", "--http"])
            .unwrap();
        if a[0].body.as_deref() == Some("back") {
            served = Some(admitted.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let still_holding = holder.try_wait().unwrap().is_none();
    let _ = holder.kill();
    let _ = holder.wait();
    check(
        &lab,
        still_holding && served.is_some_and(|t| t <= Duration::from_millis(2000)),
        &format!(
            "served within the 1 s lease (+1 s) while the lost trial's socket is still open: {served:?}"
        ),
    );
}

#[test]
fn a_trial_that_never_reaches_the_network_gives_its_slot_back_at_close() {
    let Some(mut lab) = lab("releasetrial") else {
        return;
    };
    // A 20 s lease: only the socket's release can free the slot in time.
    lab.start_daemon(&format!(
        "{DEFAULT_POLICY}trial_connect_timeout = \"10s\"\n"
    ))
    .unwrap();
    let trip = lab
        .client(&["--to", "10.77.0.2:82", "--count", "2"])
        .unwrap();
    check(&lab, outcomes(&trip) == ["refused", "refused"], "tripped");
    unreachable(&lab, true);
    std::thread::sleep(Duration::from_millis(1100));
    let lost = lab
        .client(&["--to", "10.77.0.2:82", "--count", "1"])
        .unwrap();
    check(
        &lab,
        lost[0].outcome == "unreachable",
        &format!("the trial failed before any SYN: {lost:?}"),
    );
    unreachable(&lab, false);
    lab.serve("10.77.0.2:82", "back").unwrap();
    let next = lab
        .client(&["--to", "10.77.0.2:82", "--count", "1", "--http"])
        .unwrap();
    check(
        &lab,
        next[0].body.as_deref() == Some("back"),
        &format!("the next connect is a trial at once, and is served: {next:?}"),
    );
    check(
        &lab,
        lab.metric(
            "breaker_connects_abandoned_total",
            &[("upstream", "default")],
        )
        .unwrap()
            == 1.0,
        "the lost trial counted as abandoned",
    );
}

#[test]
fn a_trial_answered_after_a_lost_syn_closes_the_breaker() {
    let Some(mut lab) = lab("latetrial") else {
        return;
    };
    lab.start_daemon(&format!("{DEFAULT_POLICY}trial_connect_timeout = \"1s\"\n"))
        .unwrap();
    let trip = lab
        .client(&["--to", "10.77.0.2:82", "--count", "2"])
        .unwrap();
    check(&lab, outcomes(&trip) == ["refused", "refused"], "tripped");
    lab.serve("10.77.0.2:82", "back").unwrap();
    lab.blackhole(UPSTREAM_V4).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    // The trial's first SYN vanishes; its retransmission (at a third of the 1 s
    // budget) is answered.
    let trial = lab
        .client_command(&[
            "--to",
            "10.77.0.2:82",
            "--count",
            "1",
            "--http",
            "--timeout-ms",
            "3000",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    lab.restore(UPSTREAM_V4).unwrap();
    let out = trial.wait_with_output().unwrap();
    let attempts =
        breaker_lab::client::parse_attempts(&String::from_utf8_lossy(&out.stdout)).unwrap();
    check(
        &lab,
        attempts.len() == 1 && attempts[0].body.as_deref() == Some("back"),
        &format!("the trial is served within its budget: {attempts:?}"),
    );
    let d = [("upstream", "default")];
    let closed = lab
        .wait_metric(
            "breaker_transitions_total",
            &[
                ("upstream", "default"),
                ("from", "half_open"),
                ("to", "closed"),
            ],
            1.0,
            Duration::from_secs(2),
        )
        .unwrap();
    check(
        &lab,
        closed == 1.0
            && lab
                .metric(
                    "breaker_connect_failures_total",
                    &[("upstream", "default"), ("reason", "timeout")],
                )
                .unwrap()
                == 0.0,
        "the late answer closed the breaker; the lost SYN was no failure",
    );
    let after = lab
        .client(&["--to", "10.77.0.2:82", "--count", "3", "--http"])
        .unwrap();
    check(
        &lab,
        after.iter().all(|a| a.body.as_deref() == Some("back"))
            && lab.metric("breaker_connects_rejected_total", &d).unwrap() == 0.0,
        &format!("served from then on: {after:?}"),
    );
}

#[test]
fn healthy_destinations_never_evict_a_tripped_one() {
    let Some(mut lab) = lab("evict") else {
        return;
    };
    let ports = [8081, 8082, 8083, 8084];
    for port in ports {
        lab.serve(&format!("10.77.0.2:{port}"), "healthy").unwrap();
    }
    lab.start_daemon(
        r#"
[default_policy]
failure_threshold = 1
open_duration = "60s"
max_destinations = 2
"#,
    )
    .unwrap();
    let trip = lab
        .client(&["--to", "10.77.0.2:82", "--count", "1"])
        .unwrap();
    check(&lab, trip[0].outcome == "refused", "tripped");
    for port in ports {
        let ok = lab
            .client(&[
                "--to",
                &format!("10.77.0.2:{port}"),
                "--count",
                "3",
                "--http",
            ])
            .unwrap();
        check(
            &lab,
            ok.iter().all(|a| a.body.as_deref() == Some("healthy")),
            &format!("healthy destination served: {ok:?}"),
        );
    }
    let d = [("upstream", "default")];
    let again = lab
        .client(&["--to", "10.77.0.2:82", "--count", "1"])
        .unwrap();
    check(
        &lab,
        again[0].errno == Some(libc::ECONNREFUSED)
            && lab.metric("breaker_connects_rejected_total", &d).unwrap() == 1.0
            && lab.metric("breaker_connect_failures_total", &d).unwrap() == 1.0,
        &format!("the tripped destination is still rejected in the kernel: {again:?}"),
    );
    check(
        &lab,
        lab.metric("breaker_default_policy_destinations", &[("state", "open")])
            .unwrap()
            == 1.0,
        "one destination open",
    );
}

#[test]
fn a_connect_redirected_to_the_fallback_never_counts_for_another_breaker() {
    let Some(mut lab) = lab("redirect") else {
        return;
    };
    // Nothing listens on the fallback, which the default policy would guard if it
    // were the destination of a connect.
    lab.start_daemon(
        r#"
[[upstream]]
name = "a"
endpoints = ["10.77.0.2:81"]
fallback = "10.77.0.3:9000"
failure_threshold = 1
open_duration = "60s"

[default_policy]
failure_threshold = 1
open_duration = "60s"
"#,
    )
    .unwrap();
    let attempts = lab
        .client(&["--to", "10.77.0.2:81", "--count", "4"])
        .unwrap();
    check(
        &lab,
        attempts.iter().all(|a| a.outcome == "refused"),
        &format!("{:?}", outcomes(&attempts)),
    );
    check(
        &lab,
        lab.metric("breaker_connects_redirected_total", &[("upstream", "a")])
            .unwrap()
            == 3.0,
        "three redirected",
    );
    let d = [("upstream", "default")];
    check(
        &lab,
        lab.metric("breaker_connect_attempts_total", &d).unwrap() == 0.0
            && lab.metric("breaker_connect_failures_total", &d).unwrap() == 0.0,
        "the redirected connects' failures went to no breaker: not to the default policy's breaker of the fallback",
    );
    // The fallback's own destination was never tripped: a direct connect to it is
    // not rejected in the kernel.
    let direct = lab
        .client(&["--to", "10.77.0.3:9000", "--count", "1"])
        .unwrap();
    check(
        &lab,
        direct[0].outcome == "refused"
            && lab.metric("breaker_connects_rejected_total", &d).unwrap() == 0.0,
        &format!("{direct:?}"),
    );
}

#[test]
fn an_abandoning_client_cannot_open_a_breaker() {
    let Some(mut lab) = lab("abandon") else {
        return;
    };
    lab.start_daemon(
        r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:8080"]
failure_threshold = 2
open_duration = "60s"
"#,
    )
    .unwrap();
    lab.blackhole(UPSTREAM_V4).unwrap();
    // Gives up long before the first SYN RTO: no answer from the network yet.
    // Five close the socket; five cancel the connect with shutdown() first, which
    // the kernel reports as the connecting socket going to CLOSE.
    let impatient = |extra: &[&str]| {
        let mut args = vec![
            "--to",
            "10.77.0.2:8080",
            "--count",
            "5",
            "--timeout-ms",
            "150",
        ];
        args.extend_from_slice(extra);
        lab.client(&args).unwrap()
    };
    let mut attempts = impatient(&[]);
    attempts.extend(impatient(&["--cancel-with-shutdown"]));
    check(
        &lab,
        attempts.len() == 10 && attempts.iter().all(|a| a.outcome == "timeout"),
        &format!("{:?}", outcomes(&attempts)),
    );
    let up = [("upstream", "api")];
    std::thread::sleep(Duration::from_millis(200));
    check(
        &lab,
        lab.metric("breaker_connects_abandoned_total", &up).unwrap() == 10.0
            && lab.metric("breaker_connect_failures_total", &up).unwrap() == 0.0
            && lab
                .metric("breaker_state", &[("upstream", "api"), ("state", "closed")])
                .unwrap()
                == 1.0,
        "abandoned connects are counted as such, and the breaker stays closed",
    );
    // A patient client sees the network's answer (the SYN timeout): that counts.
    trip_dark(&lab, "10.77.0.2:8080", 2);
    check(
        &lab,
        lab.metric("breaker_state", &[("upstream", "api"), ("state", "open")])
            .unwrap()
            == 1.0,
        "two real timeouts open it",
    );
}
