//! Trip policies beside the consecutive count, on a real kernel: the failure-rate
//! window (`failure_rate_threshold`, `minimum_connects`, `window`), kept by
//! sock_ops per upstream, and `count` (which failures open a breaker). They need root; outside CI they skip with a reason,
//! under CI=true they fail.
use breaker_lab::{
    lab::{Lab, UPSTREAM_V4},
    testing::check,
};

fn lab(tag: &str) -> Option<Lab> {
    breaker_lab::testing::lab(tag, env!("CARGO_BIN_EXE_breaker-lab"))
}

/// One connect to `port` of the upstream namespace: its outcome.
fn connect(lab: &Lab, port: u16) -> String {
    let to = format!("{UPSTREAM_V4}:{port}");
    let attempts = lab
        .client(&["--to", &to, "--count", "1", "--timeout-ms", "2000"])
        .unwrap();
    attempts[0].outcome.clone()
}

/// Two upstreams, each of a live endpoint and a refused one, driven the same way:
/// a connect to the live one, then one to the refused one, again and again, so no
/// two failures are ever consecutive. `rate` (50 % of at least 10) opens at its
/// 10th connect; `streak` (3 consecutive failures, no rate) never does.
const TWO_HALF_FAILING: &str = r#"
[[upstream]]
name = "rate"
endpoints = ["10.77.0.2:8080", "10.77.0.2:8081"]
failure_threshold = 100
failure_rate_threshold = 50
minimum_connects = 10
window = "1m"
open_duration = "1h"

[[upstream]]
name = "streak"
endpoints = ["10.77.0.2:8082", "10.77.0.2:8083"]
failure_threshold = 3
open_duration = "1h"
"#;

#[test]
fn a_half_failing_upstream_trips_on_its_failure_rate_not_on_consecutive_failures() {
    let Some(mut lab) = lab("rate") else {
        return;
    };
    lab.serve(&format!("{UPSTREAM_V4}:8080"), "rate-live")
        .unwrap();
    lab.serve(&format!("{UPSTREAM_V4}:8082"), "streak-live")
        .unwrap();
    lab.start_daemon(TWO_HALF_FAILING).unwrap();

    let mut rate = Vec::new();
    let mut streak = Vec::new();
    for _ in 0..8 {
        rate.push(connect(&lab, 8080));
        rate.push(connect(&lab, 8081));
        streak.push(connect(&lab, 8082));
        streak.push(connect(&lab, 8083));
    }
    // Ten connects (5 failed: 50 % of the minimum) trip `rate` at the 10th; from
    // then on its live endpoint is refused too, failed fast by the breaker.
    let expected: Vec<&str> = (0..16)
        .map(|i| match i {
            0..=9 if i % 2 == 0 => "ok",
            _ => "refused",
        })
        .collect();
    check(
        &lab,
        rate == expected,
        &format!("rate's outcomes: {rate:?}"),
    );
    let rejected = lab
        .metric("breaker_connects_rejected_total", &[("upstream", "rate")])
        .unwrap();
    check(
        &lab,
        rejected == 6.0,
        &format!("the 6 connects after the trip were failed fast, not {rejected}"),
    );
    let open = lab
        .wait_metric(
            "breaker_state",
            &[("upstream", "rate"), ("state", "open")],
            1.0,
            std::time::Duration::from_secs(5),
        )
        .unwrap();
    check(&lab, open == 1.0, "rate is open");
    let events = lab.cli(&["events"]).unwrap();
    let events = String::from_utf8_lossy(&events.stdout);
    check(
        &lab,
        events
            .lines()
            .any(|l| l.contains("rate") && l.contains("closed -> open  (failure_rate)")),
        &format!("the trip is the failure rate's:\n{events}"),
    );

    // `status NAME` and check-config's explanation show the rate policy.
    let status = lab.cli(&["status", "rate"]).unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    check(
        &lab,
        status.contains("failure_threshold 100, failure_rate_threshold 50 % of at least 10 in "),
        &format!("status shows the rate policy:\n{status}"),
    );

    // The same pattern never fails twice in a row: consecutive counting alone
    // leaves `streak` closed, its live endpoint reachable.
    check(
        &lab,
        streak.iter().step_by(2).all(|o| o == "ok")
            && streak.iter().skip(1).step_by(2).all(|o| o == "refused"),
        &format!("streak's outcomes: {streak:?}"),
    );
    let closed = lab
        .metric(
            "breaker_state",
            &[("upstream", "streak"), ("state", "closed")],
        )
        .unwrap();
    check(&lab, closed == 1.0, "streak is still closed");
}

/// A reset starts an empty window: after it, failures do not trip again on the
/// failures counted before the trip (10 in a window of 1 min with a minimum of 10
/// would). Nor do outcomes of connects failed fast while open ever enter it.
#[test]
fn a_reset_breaker_counts_in_an_empty_window() {
    let Some(mut lab) = lab("ratereset") else {
        return;
    };
    lab.serve(&format!("{UPSTREAM_V4}:8080"), "rate-live")
        .unwrap();
    lab.start_daemon(TWO_HALF_FAILING).unwrap();
    for _ in 0..5 {
        connect(&lab, 8080);
        connect(&lab, 8081);
    }
    let open = lab
        .metric("breaker_state", &[("upstream", "rate"), ("state", "open")])
        .unwrap();
    check(&lab, open == 1.0, "rate tripped at its 10th connect");
    // Rejected while open: none of these may count once closed.
    for _ in 0..5 {
        connect(&lab, 8081);
    }
    let reset = lab.cli(&["reset", "rate"]).unwrap();
    check(&lab, reset.status.success(), &format!("reset: {reset:?}"));
    // Nine more connects, every one failing: 9 of 9 is 100 %, but under the
    // minimum of 10; with the old window (or the rejected ones) counted, it would
    // have tripped at the first.
    let after: Vec<String> = (0..9).map(|_| connect(&lab, 8081)).collect();
    let closed = lab
        .metric(
            "breaker_state",
            &[("upstream", "rate"), ("state", "closed")],
        )
        .unwrap();
    check(
        &lab,
        closed == 1.0,
        &format!("still closed after 9 failures in a fresh window: {after:?}"),
    );
    // The 10th trips it.
    connect(&lab, 8081);
    let open = lab
        .metric("breaker_state", &[("upstream", "rate"), ("state", "open")])
        .unwrap();
    check(
        &lab,
        open == 1.0,
        "the 10th failure of the fresh window trips it",
    );
}

/// A breaker the consecutive count tripped, and a probe closed again, counts in an
/// empty window too: the failures before the trip (3, of a minimum of 4, all
/// failed) would trip it at the first failure after.
#[test]
fn a_recovered_breaker_counts_in_an_empty_window() {
    let Some(mut lab) = lab("raterecover") else {
        return;
    };
    lab.start_daemon(
        r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:8090", "10.77.0.2:8092"]
failure_threshold = 3
failure_rate_threshold = 50
minimum_connects = 4
window = "1m"
open_duration = "300ms"
probe_interval = "100ms"
"#,
    )
    .unwrap();
    for _ in 0..3 {
        connect(&lab, 8090);
    }
    let open = lab
        .metric("breaker_state", &[("upstream", "api"), ("state", "open")])
        .unwrap();
    check(&lab, open == 1.0, "three refused connects trip api");
    lab.serve(&format!("{UPSTREAM_V4}:8090"), "api").unwrap();
    let closed = lab
        .wait_metric(
            "breaker_state",
            &[("upstream", "api"), ("state", "closed")],
            1.0,
            std::time::Duration::from_secs(10),
        )
        .unwrap();
    check(&lab, closed == 1.0, "the probe closes api once it listens");
    // A failure through the upstream's other endpoint, which nothing serves: 1
    // connect in the new closed period, under the minimum.
    let outcome = connect(&lab, 8092);
    check(&lab, outcome == "refused", &format!("refused: {outcome}"));
    let closed = lab
        .metric("breaker_state", &[("upstream", "api"), ("state", "closed")])
        .unwrap();
    check(
        &lab,
        closed == 1.0,
        "one failure after the recovery leaves api closed",
    );
}

/// The window is as long as configured: 5 failures, then 5 more 3 s later, in a
/// window of 2 s that needs 10, never trip (buckets of the wrong width, say
/// milliseconds taken for ticks, would hold all ten).
#[test]
fn failures_further_apart_than_the_window_never_add_up() {
    let Some(mut lab) = lab("ratewindow") else {
        return;
    };
    lab.start_daemon(
        r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:8091"]
failure_threshold = 100
failure_rate_threshold = 50
minimum_connects = 10
window = "2s"
open_duration = "1h"
"#,
    )
    .unwrap();
    let to = format!("{UPSTREAM_V4}:8091");
    let five = || {
        lab.client(&["--to", &to, "--count", "5", "--timeout-ms", "2000"])
            .unwrap()
    };
    five();
    std::thread::sleep(std::time::Duration::from_secs(3));
    five();
    let closed = lab
        .metric("breaker_state", &[("upstream", "api"), ("state", "closed")])
        .unwrap();
    check(
        &lab,
        closed == 1.0,
        "10 failures 3 s apart in a 2 s window: closed",
    );
    // Ten within the window do (five more join the last five).
    five();
    let open = lab
        .metric("breaker_state", &[("upstream", "api"), ("state", "open")])
        .unwrap();
    check(&lab, open == 1.0, "10 failures within 2 s: open");
}

/// `count` leaves refused connects out of the breaker's reckoning, not out of the
/// metrics: an upstream counting only timeouts stays closed through refusals,
/// the same refusals trip one that counts them, and a rate policy leaves them
/// out too.
#[test]
fn count_leaves_a_failure_out_of_the_breaker_but_not_out_of_the_metrics() {
    let Some(mut lab) = lab("count") else {
        return;
    };
    lab.start_daemon(
        r#"
[[upstream]]
name = "timeouts"
endpoints = ["10.77.0.2:8093"]
count = ["timeout", "unreachable"]
failure_threshold = 2
failure_rate_threshold = 50
minimum_connects = 2
window = "1m"
open_duration = "1h"

[[upstream]]
name = "all"
endpoints = ["10.77.0.2:8094"]
failure_threshold = 2
open_duration = "1h"
"#,
    )
    .unwrap();
    let to = |port: u16| format!("{UPSTREAM_V4}:{port}");
    let left_out = lab
        .client(&["--to", &to(8093), "--count", "5", "--timeout-ms", "2000"])
        .unwrap();
    let counted = lab
        .client(&["--to", &to(8094), "--count", "5", "--timeout-ms", "2000"])
        .unwrap();
    let state = |up: &str, s: &str| {
        lab.metric("breaker_state", &[("upstream", up), ("state", s)])
            .unwrap()
    };
    check(
        &lab,
        state("timeouts", "closed") == 1.0,
        &format!("5 refusals, not counted: closed ({left_out:?})"),
    );
    check(
        &lab,
        state("all", "open") == 1.0,
        &format!("2 refusals, counted: open ({counted:?})"),
    );
    let refused = lab
        .metric(
            "breaker_connect_failures_total",
            &[("upstream", "timeouts"), ("reason", "refused")],
        )
        .unwrap();
    check(
        &lab,
        refused == 5.0,
        &format!("still in the metrics: {refused}"),
    );
}

/// A HALF_OPEN trial that fails in a way `count` leaves out gives its slot back:
/// the next trial is admitted, not failed fast, and the breaker stays half-open
/// (it neither reopens nor holds its one slot for a trial that will never count).
#[test]
fn an_uncounted_trial_failure_gives_its_slot_back() {
    let Some(mut lab) = lab("counttrial") else {
        return;
    };
    lab.start_daemon(
        r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:8095"]
count = ["timeout"]
failure_threshold = 1
half_open_max_connections = 1
connect_timeout = "200ms"
open_duration = "300ms"
probe_interval = "1h"
"#,
    )
    .unwrap();
    let to = format!("{UPSTREAM_V4}:8095");
    // A blackhole: one timeout trips it.
    lab.blackhole(UPSTREAM_V4).unwrap();
    lab.client(&["--to", &to, "--count", "1", "--timeout-ms", "1000"])
        .unwrap();
    lab.restore(UPSTREAM_V4).unwrap();
    let trips = lab
        .metric(
            "breaker_transitions_total",
            &[("upstream", "api"), ("from", "closed"), ("to", "open")],
        )
        .unwrap();
    check(&lab, trips == 1.0, &format!("a timeout trips api: {trips}"));
    std::thread::sleep(std::time::Duration::from_millis(400));
    // Now refused (nothing listens): each trial fails in a way not counted.
    let rejected = |lab: &Lab| {
        lab.metric("breaker_connects_rejected_total", &[("upstream", "api")])
            .unwrap()
    };
    let before = rejected(&lab);
    let trials = lab
        .client(&["--to", &to, "--count", "3", "--timeout-ms", "2000"])
        .unwrap();
    let after = rejected(&lab);
    check(
        &lab,
        after == before,
        &format!("each trial admitted in turn, none failed fast ({before} -> {after}): {trials:?}"),
    );
    let refused = lab
        .metric(
            "breaker_connect_failures_total",
            &[("upstream", "api"), ("reason", "refused")],
        )
        .unwrap();
    check(
        &lab,
        refused == 3.0,
        &format!("3 refused trials counted in metrics: {refused}"),
    );
    let half = lab
        .metric(
            "breaker_state",
            &[("upstream", "api"), ("state", "half_open")],
        )
        .unwrap();
    check(&lab, half == 1.0, "api stays half-open");
}

/// A flapping upstream whose recovery is its trials' (its one probe, at a port
/// nothing answers, is still waiting for its answer when the test ends, so no
/// failed probe adds to the reopens): open 200 ms, doubling at each reopen up to
/// 800 ms.
const FLAPPING: &str = r#"
[[upstream]]
name = "flap"
endpoints = ["10.77.0.2:8090"]
failure_threshold = 1
half_open_max_connections = 1
trial_connect_timeout = "100ms"
connect_timeout = "200ms"
open_duration = "200ms"
max_open_duration = "800ms"
probe_interval = "1h"
probe_timeout = "1m"

[upstream.probe]
address = "10.77.0.2:8099"
"#;

/// `status flap --json`: its state and its reopens since it last closed.
fn flap_status(lab: &Lab) -> (String, u64) {
    let out = lab.cli(&["status", "flap", "--json"]).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let up = &json["upstreams"][0];
    (
        up["state"].as_str().unwrap_or_default().to_string(),
        up["reopens"].as_u64().unwrap_or(u64::MAX),
    )
}

/// Each failed trial reopens the breaker for twice as long, up to the maximum, so
/// a dead upstream sees fewer and fewer trials; a full close starts over.
#[test]
fn each_reopen_doubles_the_open_time_until_the_breaker_closes() {
    let Some(mut lab) = lab("backoff") else {
        return;
    };
    lab.serve(&format!("{UPSTREAM_V4}:8090"), "flap").unwrap();
    lab.start_daemon(FLAPPING).unwrap();
    lab.blackhole(UPSTREAM_V4).unwrap();

    // A client that tries every 10 ms: the first connect times out and trips the
    // breaker; from then on each trial it is let through times out and reopens.
    let to = format!("{UPSTREAM_V4}:8090");
    let started = std::time::Instant::now();
    lab.client(&[
        "--to",
        &to,
        "--count",
        "250",
        "--interval-ms",
        "10",
        "--timeout-ms",
        "300",
    ])
    .unwrap();
    let took = started.elapsed().as_secs_f64();
    let failures = lab
        .metric("breaker_connect_failures_total", &[("upstream", "flap")])
        .unwrap();
    let (_, reopens) = flap_status(&lab);
    // Open phases of 0.2, 0.4, then 0.8 s (each trial's 0.1 s on top): a fixed
    // 0.2 s would let a trial through every 0.3 s.
    let growing = 3.0 + (took / 0.9).ceil();
    let fixed = (took / 0.3).floor();
    check(
        &lab,
        failures >= 3.0 && failures <= growing && growing < fixed,
        &format!(
            "{failures} connects failed in {took:.2} s: at least the trip and two trials, at most {growing} (a fixed open time: {fixed})"
        ),
    );
    check(
        &lab,
        reopens == (failures as u64 - 1).min(15),
        &format!("each failed trial reopened (up to 15): {reopens} reopens, {failures} failures"),
    );

    // The upstream comes back: the next trial closes the breaker, which forgets
    // its reopens; the next trip opens for open_duration again.
    lab.restore(UPSTREAM_V4).unwrap();
    let mut closed = false;
    for _ in 0..40 {
        let got = lab
            .client(&["--to", &to, "--count", "1", "--timeout-ms", "1000"])
            .unwrap();
        if got[0].outcome == "ok" {
            closed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    check(
        &lab,
        closed,
        "a trial reached the upstream once it came back",
    );
    let (state, reopens) = flap_status(&lab);
    check(
        &lab,
        state == "closed" && reopens == 0,
        &format!("closed, no reopens: {state}, {reopens}"),
    );
    lab.blackhole(UPSTREAM_V4).unwrap();
    // Its connect_timeout (200 ms) decides the failure, well before the client
    // gives up.
    lab.client(&["--to", &to, "--count", "1", "--timeout-ms", "1000"])
        .unwrap();
    let (state, reopens) = flap_status(&lab);
    check(
        &lab,
        state != "closed" && reopens == 0,
        &format!("tripped again, a first open: {state}, {reopens} reopens"),
    );
}

/// Three upstreams behind one slow answerer (a TUN device in the client namespace:
/// this kernel has no netem to delay a real upstream's SYN-ACKs), each connect
/// answered after 250 ms except those to `rated`'s port 80, answered at once.
/// Slow means 100 ms or more for all three:
/// - `counted` counts slow connects as failures: 3 in a row open it;
/// - `rated` opens when 50 % of at least 6 connects in its window are slow, with
///   never a failure: fast, slow, fast, slow, ... opens at the 6th;
/// - `measured` only measures: slow connects are counted in the metrics and move
///   nothing, although one failure would open it.
const SLOW_UPSTREAMS: &str = r#"
[[upstream]]
name = "counted"
endpoints = ["10.77.7.1:80"]
failure_threshold = 3
slow_connect_threshold = "100ms"
count = ["refused", "timeout", "unreachable", "slow"]
open_duration = "1h"

[[upstream]]
name = "rated"
endpoints = ["10.77.7.2:80", "10.77.7.2:81"]
failure_threshold = 3
slow_connect_threshold = "100ms"
slow_rate_threshold = 50
minimum_connects = 6
window = "1m"
open_duration = "1h"

[[upstream]]
name = "measured"
endpoints = ["10.77.7.3:80"]
failure_threshold = 1
slow_connect_threshold = "100ms"
open_duration = "1h"
"#;

#[test]
fn slow_connects_open_a_breaker_that_counts_them_or_rates_them_and_no_other() {
    let Some(mut lab) = lab("slow") else {
        return;
    };
    let slow = std::time::Duration::from_millis(250);
    breaker_lab::slow_upstream::start(&lab.client, "brkslow", "10.77.7.0/24", move |to, port| {
        if to.octets()[3] == 2 && port == 80 {
            std::time::Duration::ZERO
        } else {
            slow
        }
    })
    .unwrap();
    lab.start_daemon(SLOW_UPSTREAMS).unwrap();
    let connect_to = |to: &str| {
        let attempts = lab
            .client(&["--to", to, "--count", "1", "--timeout-ms", "2000"])
            .unwrap();
        (attempts[0].outcome.clone(), attempts[0].latency_us)
    };

    // counted: three slow successes, then the breaker is open: failed fast.
    let counted: Vec<_> = (0..4).map(|_| connect_to("10.77.7.1:80")).collect();
    check(
        &lab,
        counted[..3]
            .iter()
            .all(|(o, us)| o == "ok" && *us >= 200_000.0)
            && counted[3].0 == "refused"
            && counted[3].1 < 100_000.0,
        &format!("counted: 3 slow successes, then failed fast: {counted:?}"),
    );

    // rated: fast, slow, ... the 6th connect (3 slow of 6) opens it.
    let rated: Vec<_> = (0..7)
        .map(|i| {
            connect_to(if i % 2 == 0 {
                "10.77.7.2:80"
            } else {
                "10.77.7.2:81"
            })
        })
        .collect();
    let outcomes: Vec<&str> = rated.iter().map(|(o, _)| o.as_str()).collect();
    check(
        &lab,
        outcomes == ["ok", "ok", "ok", "ok", "ok", "ok", "refused"]
            && rated[0].1 < 100_000.0
            && rated[1].1 >= 200_000.0,
        &format!("rated: 6 successes, then failed fast: {rated:?}"),
    );

    // measured: slow, and nothing else.
    let measured: Vec<_> = (0..3).map(|_| connect_to("10.77.7.3:80")).collect();
    check(
        &lab,
        measured.iter().all(|(o, _)| o == "ok"),
        &format!("measured: every connect went: {measured:?}"),
    );

    for (upstream, slow, successes, state) in [
        ("counted", 3.0, 3.0, "open"),
        ("rated", 3.0, 6.0, "open"),
        ("measured", 3.0, 3.0, "closed"),
    ] {
        let got = lab
            .wait_metric(
                "breaker_connects_slow_total",
                &[("upstream", upstream)],
                slow,
                std::time::Duration::from_secs(5),
            )
            .unwrap();
        check(
            &lab,
            got == slow,
            &format!("{upstream}: {got} slow connects, not {slow}"),
        );
        let ok = lab
            .metric("breaker_connect_successes_total", &[("upstream", upstream)])
            .unwrap();
        check(
            &lab,
            ok == successes,
            &format!("{upstream}: {ok} successes, not {successes}"),
        );
        let in_state = lab
            .metric("breaker_state", &[("upstream", upstream), ("state", state)])
            .unwrap();
        check(&lab, in_state == 1.0, &format!("{upstream} is {state}"));
    }
    let events = lab.cli(&["events"]).unwrap();
    let events = String::from_utf8_lossy(&events.stdout);
    for (upstream, cause) in [("counted", "(slow)"), ("rated", "(slow_rate)")] {
        check(
            &lab,
            events
                .lines()
                .any(|l| l.contains(upstream) && l.contains(&format!("closed -> open  {cause}"))),
            &format!("{upstream}'s trip names {cause}:\n{events}"),
        );
    }
    let status = lab.cli(&["status", "counted"]).unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    check(
        &lab,
        status.contains("slow:      a connect answered after 100ms or more, counted as a failure"),
        &format!("status shows what slow is:\n{status}"),
    );
}

/// Two probe-driven upstreams whose probes time out, one with growth
/// (`max_open_duration`), one without: each failed probe doubles the growing one's
/// probe interval (0.2, 0.4, 0.8, then 1.6 s), while the other probes every
/// 100 ms; a probe that passes closes it and forgets the failed attempts.
const PROBED: &str = r#"
[[upstream]]
name = "growing"
endpoints = ["10.77.0.2:8095"]
failure_threshold = 1
connect_timeout = "200ms"
open_duration = "100ms"
max_open_duration = "1600ms"
probe_interval = "100ms"
probe_timeout = "50ms"

[[upstream]]
name = "steady"
endpoints = ["10.77.0.2:8096"]
failure_threshold = 1
connect_timeout = "200ms"
open_duration = "100ms"
probe_interval = "100ms"
probe_timeout = "50ms"
"#;

#[test]
fn each_failed_probe_doubles_the_probe_interval_where_growth_is_set() {
    let Some(mut lab) = lab("probegrow") else {
        return;
    };
    lab.serve(&format!("{UPSTREAM_V4}:8095"), "growing")
        .unwrap();
    lab.start_daemon(PROBED).unwrap();
    lab.blackhole(UPSTREAM_V4).unwrap();
    // From before the trips: the bounds follow the time actually taken.
    let started = std::time::Instant::now();
    for port in [8095, 8096] {
        connect(&lab, port);
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    let failed = |up: &str| {
        lab.metric(
            "breaker_probes_total",
            &[("upstream", up), ("result", "failure")],
        )
        .unwrap()
    };
    let (growing, steady) = (failed("growing"), failed("steady"));
    let took = started.elapsed().as_secs_f64();
    // Growing: a probe 0.1 s after its trip, then waits of 0.2, 0.4, 0.8 and
    // 1.6 s from then on (each probe's own 50 ms on top): at most this many fit.
    let (mut at, mut most) = (0.1, 0.0);
    for wait in [0.2, 0.4, 0.8].into_iter().chain(std::iter::repeat(1.6)) {
        if at > took {
            break;
        }
        most += 1.0;
        at += wait;
    }
    // Steady: one every 0.1 s or so (fewer on a loaded machine, never as few).
    check(
        &lab,
        (3.0..=most).contains(&growing) && steady >= 2.0 * most,
        &format!("in {took:.1} s, {growing} failed probes with growth (at most {most}), {steady} without"),
    );
    let out = lab.cli(&["status", "growing", "--json"]).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let up = &json["upstreams"][0];
    let reopens = up["reopens"].as_u64().unwrap_or(u64::MAX);
    let next = up["next_probe_ms"].as_u64().unwrap_or(0);
    // The status is read a moment after the metric: a probe may have ended since,
    // or its result be on its way into the word.
    check(
        &lab,
        (growing - 1.0..=growing + 1.0).contains(&(reopens as f64))
            && next == (100u64 << reopens).min(1_600),
        &format!(
            "its failed probes are its failed attempts ({reopens}), the next probe waits {next} ms"
        ),
    );

    // Back: the next probe (within the grown 1.6 s) closes it, which forgets them.
    lab.restore(UPSTREAM_V4).unwrap();
    let closed = lab
        .wait_metric(
            "breaker_state",
            &[("upstream", "growing"), ("state", "closed")],
            1.0,
            breaker_lab::testing::patience(std::time::Duration::from_secs(5)),
        )
        .unwrap();
    check(
        &lab,
        closed == 1.0,
        "a probe closed it once the upstream was back",
    );
    let out = lab.cli(&["status", "growing", "--json"]).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    check(
        &lab,
        json["upstreams"][0]["reopens"].as_u64() == Some(0),
        &format!("closed, no failed attempts left: {json}"),
    );
}
