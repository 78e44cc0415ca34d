//! The control socket and what an operator does through it: overrides that hold
//! through reloads and restarts, dry run, status, and bad requests refused with
//! one clear line.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    time::Duration,
};

use breaker_lab::{
    lab::{Lab, BLACKHOLE_V4, UPSTREAM_V4},
    testing::{check, outcomes},
};
use nix::sys::signal::Signal;

fn lab(tag: &str) -> Option<Lab> {
    breaker_lab::testing::lab(tag, env!("CARGO_BIN_EXE_breaker-lab"))
}

/// Runs a CLI verb that must succeed; returns its stdout.
fn ok(lab: &Lab, args: &[&str]) -> String {
    let out = lab.cli(args).unwrap();
    assert!(
        out.status.success(),
        "breaker {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.daemon_log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `status NAME --json`'s state and mode.
fn state_and_mode(lab: &Lab, name: &str) -> (String, String) {
    let json: serde_json::Value =
        serde_json::from_str(&ok(lab, &["status", name, "--json"])).unwrap();
    let up = &json["upstreams"][0];
    (
        up["state"].as_str().unwrap_or_default().to_string(),
        up["mode"].as_str().unwrap_or_default().to_string(),
    )
}

const API: &str = r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:8080"]
failure_threshold = 2
open_duration = "1h"
"#;

#[test]
fn overrides_hold_through_a_reload_and_a_restart_until_reset() {
    let Some(mut lab) = lab("modes") else {
        return;
    };
    lab.serve("10.77.0.2:8080", "api").unwrap();
    lab.start_daemon(API).unwrap();
    let healthy = |lab: &Lab| {
        lab.client(&["--to", "10.77.0.2:8080", "--count", "2", "--http"])
            .unwrap()
    };
    check(
        &lab,
        healthy(&lab)
            .iter()
            .all(|a| a.body.as_deref() == Some("api")),
        "healthy at first",
    );

    // Forced open: a healthy upstream is held back, and nothing probes it.
    let said = ok(&lab, &["force-open", "api"]);
    check(&lab, said.contains("force_open"), &said);
    let held = |lab: &Lab, when: &str| {
        let a = healthy(lab);
        check(
            lab,
            a.iter().all(|a| a.outcome == "refused"),
            &format!("{when}: forced open rejects: {a:?}"),
        );
    };
    held(&lab, "forced");
    check(
        &lab,
        lab.metric(
            "breaker_mode",
            &[("upstream", "api"), ("mode", "force_open")],
        )
        .unwrap()
            == 1.0,
        "breaker_mode shows it",
    );
    // It holds through a reload and a restart.
    let said = ok(&lab, &["reload"]);
    check(&lab, said.contains("reloaded"), &said);
    held(&lab, "after the reload");
    lab.signal_daemon(Signal::SIGTERM).unwrap();
    lab.start_daemon(API).unwrap();
    held(&lab, "after the restart");
    check(
        &lab,
        state_and_mode(&lab, "api").1 == "force_open",
        "status shows the override after the restart",
    );

    // Reset: automatic again, and healthy.
    ok(&lab, &["reset", "api"]);
    check(
        &lab,
        state_and_mode(&lab, "api") == ("closed".into(), "auto".into()),
        "reset to auto and closed",
    );
    check(
        &lab,
        healthy(&lab)
            .iter()
            .all(|a| a.body.as_deref() == Some("api")),
        "reset lets connects through",
    );

    // Forced closed: a dead upstream is never tripped, and its failures counted.
    lab.blackhole(UPSTREAM_V4).unwrap();
    ok(&lab, &["force-close", "api"]);
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
        outcomes(&dark) == ["timeout", "timeout", "timeout"],
        &format!("forced closed lets every connect go: {:?}", outcomes(&dark)),
    );
    check(
        &lab,
        state_and_mode(&lab, "api") == ("closed".into(), "force_closed".into()),
        "never tripped",
    );
    check(
        &lab,
        lab.metric(
            "breaker_connect_failures_total",
            &[("upstream", "api"), ("reason", "timeout")],
        )
        .unwrap()
            == 3.0,
        "its failures are still counted",
    );

    // Disabled: not even counted.
    ok(&lab, &["disable", "api"]);
    let attempts = |lab: &Lab| {
        lab.metric("breaker_connect_attempts_total", &[("upstream", "api")])
            .unwrap()
    };
    let before = attempts(&lab);
    lab.client(&[
        "--to",
        "10.77.0.2:8080",
        "--count",
        "2",
        "--timeout-ms",
        "200",
    ])
    .unwrap();
    check(&lab, attempts(&lab) == before, "disabled counts nothing");

    // Reset: the state machine decides again, and trips on the dead upstream.
    ok(&lab, &["reset", "api"]);
    let tripped = lab
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
        outcomes(&tripped) == ["timeout", "timeout", "refused"],
        &format!("automatic again: {:?}", outcomes(&tripped)),
    );
    let detail = ok(&lab, &["status", "api"]);
    check(
        &lab,
        detail.contains("closed -> open") && detail.contains("endpoints: 10.77.0.2:8080"),
        &format!("status NAME shows endpoints and transitions:\n{detail}"),
    );
}

#[test]
fn dry_run_reports_and_counts_but_rejects_nothing() {
    let Some(mut lab) = lab("dryrun") else {
        return;
    };
    lab.start_daemon(&format!(
        "[[upstream]]\nname = \"dark\"\nendpoints = [\"{BLACKHOLE_V4}:80\"]\nfailure_threshold = 1\nopen_duration = \"1h\"\nmode = \"dry_run\"\n"
    ))
    .unwrap();
    let dark = lab
        .client(&[
            "--to",
            &format!("{BLACKHOLE_V4}:80"),
            "--count",
            "3",
            "--timeout-ms",
            "1500",
        ])
        .unwrap();
    check(
        &lab,
        outcomes(&dark) == ["timeout", "timeout", "timeout"],
        &format!("nothing is rejected: {:?}", outcomes(&dark)),
    );
    check(
        &lab,
        lab.metric("breaker_state", &[("upstream", "dark"), ("state", "open")])
            .unwrap()
            == 1.0
            && lab
                .metric(
                    "breaker_connects_would_reject_total",
                    &[("upstream", "dark")],
                )
                .unwrap()
                == 2.0
            && lab.daemon_log().contains("to=\"open\""),
        "the breaker tripped, said so, and counted the two it would have rejected",
    );
    let table = ok(&lab, &["status"]);
    check(&lab, table.contains("dry_run"), &table);
}

#[test]
fn bad_requests_get_one_clear_line_and_change_nothing() {
    let Some(mut lab) = lab("ctlerr") else {
        return;
    };
    lab.start_daemon(API).unwrap();
    let refused = |lab: &Lab, args: &[&str], uid: Option<u32>, says: &str| {
        let out = lab.cli_as(args, uid).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        check(
            lab,
            !out.status.success() && stderr.lines().count() == 1 && stderr.contains(says),
            &format!("breaker {args:?}: {stderr}"),
        );
    };
    refused(
        &lab,
        &["force-open", "nope"],
        None,
        "no upstream named \"nope\" (configured: api)",
    );
    refused(&lab, &["status"], Some(65534), "root only");
    // The daemon checks the caller itself, whatever the socket's mode says.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(lab.control_socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    refused(
        &lab,
        &["force-open", "api"],
        Some(65534),
        "permission denied: the control socket answers root only (uid 65534)",
    );
    std::fs::set_permissions(lab.control_socket(), std::fs::Permissions::from_mode(0o600)).unwrap();
    // A malformed request, straight to the socket.
    let mut raw = UnixStream::connect(lab.control_socket()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"{\"verb\": \"explode\"}\n").unwrap();
    let mut answer = String::new();
    BufReader::new(raw).read_line(&mut answer).unwrap();
    check(
        &lab,
        answer.contains("\"ok\":false") && answer.contains("malformed request"),
        &answer,
    );
    // Nothing changed.
    check(
        &lab,
        state_and_mode(&lab, "api") == ("closed".into(), "auto".into()),
        "untouched",
    );
    // With no daemon, the CLI says so.
    lab.signal_daemon(Signal::SIGTERM).unwrap();
    refused(&lab, &["status"], None, "no breaker daemon is running");
}

#[test]
fn events_follow_streams_each_transition_as_it_happens() {
    let Some(mut lab) = lab("events") else {
        return;
    };
    lab.start_daemon(&format!(
        "[[upstream]]\nname = \"dark\"\nendpoints = [\"{BLACKHOLE_V4}:80\"]\nfailure_threshold = 1\nopen_duration = \"1h\"\n"
    ))
    .unwrap();
    let mut follower = lab.cli_spawn(&["events", "--follow", "--json"]).unwrap();
    let stdout = follower.stdout.take().unwrap();
    // Lines arrive on a thread of their own, so the test can time out.
    let (lines, arrived) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    // The follower is connected before the transition happens.
    std::thread::sleep(Duration::from_millis(300));
    lab.client(&[
        "--to",
        &format!("{BLACKHOLE_V4}:80"),
        "--count",
        "1",
        "--timeout-ms",
        "1500",
    ])
    .unwrap();
    let line = arrived.recv_timeout(Duration::from_secs(5));
    let _ = follower.kill();
    let _ = follower.wait();
    let event: serde_json::Value = match &line {
        Ok(line) => serde_json::from_str(line).unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    };
    check(
        &lab,
        event["upstream"] == "dark"
            && event["from"] == "closed"
            && event["to"] == "open"
            && event["cause"] == "timeout",
        &format!("the trip arrives as it happens: {line:?}"),
    );
    let recent = ok(&lab, &["events"]);
    check(
        &lab,
        recent.contains("dark  closed -> open  (timeout)"),
        &format!("and is in the recent events: {recent}"),
    );
}

#[test]
fn status_lists_tripped_default_policy_destinations() {
    let Some(mut lab) = lab("ctldefault") else {
        return;
    };
    lab.start_daemon("[default_policy]\nfailure_threshold = 1\nopen_duration = \"1h\"\n")
        .unwrap();
    // Nothing listens on port 81: each refused connect trips its destination.
    lab.client(&["--to", "10.77.0.2:81", "--count", "2"])
        .unwrap();
    lab.client(&["--to", "10.77.0.3:81", "--count", "1"])
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&ok(&lab, &["status", "--json"])).unwrap();
    let d = &json["default_policy"];
    let listed: Vec<&str> = d["tripped"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["destination"].as_str()).collect())
        .unwrap_or_default();
    check(
        &lab,
        d["open"] == 2 && listed.len() == 2 && listed[0] == "10.77.0.3:81",
        &format!("both tripped destinations, the newest first: {d}"),
    );
}
