//! Operating breaker: protection outlives the daemon (pinned maps and links), a new
//! daemon adopts what the last one left, breakers recover with no daemon at all,
//! and one pin folder has one daemon.
use std::time::Duration;

use breaker_lab::{
    lab::{Lab, BLACKHOLE_V4, UPSTREAM_V4},
    testing::{check, eventually, outcomes},
};
use nix::sys::signal::Signal;

fn lab(tag: &str) -> Option<Lab> {
    breaker_lab::testing::lab(tag, env!("CARGO_BIN_EXE_breaker-lab"))
}

fn metric(lab: &Lab, name: &str, labels: &[(&str, &str)]) -> f64 {
    lab.metric(name, labels).unwrap()
}

const API: &str = r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:8080"]
failure_threshold = 2
open_duration = "4s"
probe_interval = "200ms"
probe_timeout = "300ms"
"#;

#[test]
fn sigkill_while_open_keeps_rejecting_and_a_new_daemon_adopts_the_state() {
    let Some(mut lab) = lab("adopt") else {
        return;
    };
    lab.serve("10.77.0.2:8080", "api").unwrap();
    lab.start_daemon(API).unwrap();
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
        &format!("tripped: {:?}", outcomes(&dark)),
    );
    let labels = [("upstream", "api")];
    let rejected_before = metric(&lab, "breaker_connects_rejected_total", &labels);
    let attempts_before = metric(&lab, "breaker_connect_attempts_total", &labels);

    // The daemon dies. The kernel goes on rejecting: 64 clients, none of them
    // reaching the dead upstream (they would hang in the blackhole).
    lab.signal_daemon(Signal::SIGKILL).unwrap();
    let gap = lab
        .client(&[
            "--to",
            "10.77.0.2:8080",
            "--count",
            "2",
            "--concurrency",
            "64",
            "--timeout-ms",
            "1500",
        ])
        .unwrap();
    check(
        &lab,
        gap.len() == 128
            && gap
                .iter()
                .all(|a| a.errno == Some(libc::ECONNREFUSED) && a.latency_us < 100_000.0),
        &format!(
            "every connect in the gap fails fast: {:?}",
            gap.iter()
                .filter(|a| a.errno != Some(libc::ECONNREFUSED))
                .collect::<Vec<_>>()
        ),
    );

    // A new daemon adopts the pins: still OPEN, and the counters went on counting.
    lab.start_daemon(API).unwrap();
    check(
        &lab,
        lab.daemon_log()
            .contains("resumed the pinned links and maps"),
        "the new daemon (same binary, same config) says it resumed the pins",
    );
    // Still tripped: OPEN, or HALF_OPEN if open_duration ran out meanwhile (a
    // slow machine), never CLOSED as a fresh breaker would be.
    check(
        &lab,
        metric(
            &lab,
            "breaker_state",
            &[("upstream", "api"), ("state", "closed")],
        ) == 0.0,
        "still tripped after the restart",
    );
    let rejected = metric(&lab, "breaker_connects_rejected_total", &labels);
    let attempts = metric(&lab, "breaker_connect_attempts_total", &labels);
    check(
        &lab,
        rejected == rejected_before + 128.0 && attempts == attempts_before + 128.0,
        &format!("counters carry on: rejected {rejected_before} -> {rejected}, attempts {attempts_before} -> {attempts}"),
    );
    // Probing resumes: the upstream comes back and the breaker closes.
    lab.restore(UPSTREAM_V4).unwrap();
    let closed = eventually(Duration::from_secs(10), || {
        metric(
            &lab,
            "breaker_state",
            &[("upstream", "api"), ("state", "closed")],
        ) == 1.0
    });
    check(&lab, closed, "probes close the breaker after the restart");
    let healthy = lab
        .client(&["--to", "10.77.0.2:8080", "--count", "3", "--http"])
        .unwrap();
    check(
        &lab,
        healthy.iter().all(|a| a.body.as_deref() == Some("api")),
        &format!("healthy again: {healthy:?}"),
    );
}

#[test]
fn with_no_daemon_application_trials_close_a_recovered_breaker() {
    let Some(mut lab) = lab("nodaemon") else {
        return;
    };
    // Probe-driven (half_open_max_connections 0): with a daemon, applications wait
    // for probes (here of a port that stays closed, so they keep failing). Without
    // a daemon, applications must not be held back for good.
    lab.start_daemon(
        r#"
[[upstream]]
name = "api"
endpoints = ["10.77.0.2:81"]
failure_threshold = 1
open_duration = "500ms"
probe_interval = "200ms"
probe = { address = "10.77.0.2:82" }
"#,
    )
    .unwrap();
    let trip = lab
        .client(&["--to", "10.77.0.2:81", "--count", "1"])
        .unwrap();
    check(&lab, outcomes(&trip) == ["refused"], "tripped");
    lab.serve("10.77.0.2:81", "back").unwrap();
    // With the daemon alive, past open_duration, HALF_OPEN waits for its probes.
    std::thread::sleep(Duration::from_millis(800));
    let waiting = lab
        .client(&["--to", "10.77.0.2:81", "--count", "2", "--http"])
        .unwrap();
    check(
        &lab,
        waiting.iter().all(|a| a.outcome == "refused"),
        &format!("probe-driven while the daemon runs: {waiting:?}"),
    );

    lab.signal_daemon(Signal::SIGKILL).unwrap();
    // Once its heartbeat is stale (3 s), the kernel lets a trial through; its
    // success closes the breaker, and everything passes.
    let recovered = eventually(Duration::from_secs(8), || {
        lab.client(&["--to", "10.77.0.2:81", "--count", "1", "--http"])
            .is_ok_and(|a| a[0].body.as_deref() == Some("back"))
    });
    check(
        &lab,
        recovered,
        "an application trial goes through with no daemon",
    );
    let after = lab
        .client(&["--to", "10.77.0.2:81", "--count", "5", "--http"])
        .unwrap();
    check(
        &lab,
        after.iter().all(|a| a.body.as_deref() == Some("back")),
        &format!("closed by the trial: {after:?}"),
    );
}

#[test]
fn a_second_daemon_on_the_same_pins_is_refused_naming_the_first() {
    let Some(mut lab) = lab("second") else {
        return;
    };
    let dark = format!(
        "[[upstream]]\nname = \"dark\"\nendpoints = [\"{BLACKHOLE_V4}:80\"]\nfailure_threshold = 1\nopen_duration = \"1h\"\n"
    );
    lab.start_daemon(&dark).unwrap();
    let first = lab.daemon_pid().expect("running");
    let config = lab.write_config(&dark).unwrap();
    let config = config.display().to_string();
    let out = lab
        .breaker_output(&["run", "--config", &config], Duration::from_secs(10))
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    check(
        &lab,
        !out.status.success()
            && error_lines.len() == 1
            && error_lines[0].contains(&format!("another breaker daemon (pid {first}")),
        &format!("one line naming the running daemon: {stderr}"),
    );
    // The first daemon is untouched.
    let exited = lab.daemon_exit().unwrap();
    check(&lab, exited.is_none(), "the first daemon runs on");
    lab.client(&[
        "--to",
        &format!("{BLACKHOLE_V4}:80"),
        "--count",
        "1",
        "--timeout-ms",
        "1500",
    ])
    .unwrap();
    let held = lab
        .client(&["--to", &format!("{BLACKHOLE_V4}:80"), "--count", "2"])
        .unwrap();
    check(
        &lab,
        outcomes(&held) == ["refused", "refused"],
        &format!("and enforces: {held:?}"),
    );
}

#[test]
fn pins_of_another_abi_are_refused_with_the_command_to_run() {
    use aya::maps::{Array, Map, MapData};
    use breaker_common::abi::{map_names, PinMetadata};
    let Some(mut lab) = lab("abi") else {
        return;
    };
    lab.start_daemon(API).unwrap();
    lab.signal_daemon(Signal::SIGKILL).unwrap();
    // What an older or newer binary would have left.
    let path = lab.pins.join("maps").join(map_names::PIN_METADATA);
    let mut meta: Array<MapData, PinMetadata> =
        Array::try_from(Map::Array(MapData::from_pin(&path).unwrap())).unwrap();
    let mut old = meta.get(&0, 0).unwrap();
    old.abi_version = 999;
    meta.set(0, old, 0).unwrap();

    let config = lab.write_config(API).unwrap().display().to_string();
    let out = lab
        .breaker_output(&["run", "--config", &config], Duration::from_secs(10))
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(
        &lab,
        !out.status.success()
            && stderr.contains("ABI 999")
            && stderr.contains("breaker uninstall --pin-path"),
        &format!("refused, naming the command to run: {stderr}"),
    );
    check(
        &lab,
        lab.pins.join("links").join("brk_connect4").exists(),
        "the old pins are left as they were",
    );
}

fn dark(name: &str) -> String {
    format!(
        "[[upstream]]\nname = {name:?}\nendpoints = [\"{BLACKHOLE_V4}:80\"]\nfailure_threshold = 1\nopen_duration = \"1h\"\n"
    )
}

/// Sends SIGHUP and waits until the log shows the reload's `n`th outcome.
fn reload(lab: &Lab, n: usize) -> String {
    let pid = nix::unistd::Pid::from_raw(lab.daemon_pid().expect("daemon running") as i32);
    nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
    let outcomes =
        |log: &str| log.matches("config reloaded").count() + log.matches("reload failed").count();
    let done = eventually(Duration::from_secs(10), || outcomes(&lab.daemon_log()) >= n);
    assert!(done, "reload {n} did not finish:\n{}", lab.daemon_log());
    lab.daemon_log()
}

/// Upstream names in the pinned UPSTREAM_NAMES map.
fn pinned_names(lab: &Lab) -> Vec<String> {
    use aya::maps::{Array, Map, MapData};
    use breaker_common::abi::{map_names, UpstreamName};
    let path = lab.pins.join("maps").join(map_names::UPSTREAM_NAMES);
    let names: Array<MapData, UpstreamName> =
        Array::try_from(Map::Array(MapData::from_pin(&path).unwrap())).unwrap();
    names
        .iter()
        .filter_map(Result::ok)
        .filter(|n| n.len > 0)
        .map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned())
        .collect()
}

#[test]
fn reload_keeps_state_adds_and_removes_upstreams_and_refuses_a_bad_config() {
    let Some(mut lab) = lab("reload") else {
        return;
    };
    lab.serve("10.77.0.2:8080", "old").unwrap();
    lab.serve("10.77.0.3:8080", "new").unwrap();
    let old = "[[upstream]]\nname = \"old\"\nendpoints = [\"10.77.0.2:8080\"]\n";
    let new = "[[upstream]]\nname = \"new\"\nendpoints = [\"10.77.0.3:8080\"]\n";
    lab.start_daemon(&format!("{}{old}", dark("dark"))).unwrap();
    let dark_addr = format!("{BLACKHOLE_V4}:80");
    lab.client(&["--to", &dark_addr, "--count", "1", "--timeout-ms", "1500"])
        .unwrap();
    lab.client(&["--to", "10.77.0.2:8080", "--count", "2", "--http"])
        .unwrap();
    // The blackhole answers nothing: ECONNREFUSED comes only from the hook,
    // and under half the first SYN's 1 s timeout no SYN can have waited on it
    // (an emulated guest's first connect after a reload once took 104 ms).
    let fast_fail = |lab: &Lab, when: &str| {
        let a = lab
            .client(&["--to", &dark_addr, "--count", "3", "--timeout-ms", "1500"])
            .unwrap();
        check(
            lab,
            a.iter()
                .all(|a| a.errno == Some(libc::ECONNREFUSED) && a.latency_us < 500_000.0),
            &format!("{when}: the tripped upstream still fails fast: {a:?}"),
        );
    };
    fast_fail(&lab, "before the reload");

    // "old" goes, "new" comes, "dark" stays as it is.
    lab.write_config(&format!("{}{new}", dark("dark"))).unwrap();
    let log = reload(&lab, 1);
    check(
        &lab,
        log.contains("config reloaded"),
        "the reload took effect",
    );
    fast_fail(&lab, "after the reload");
    let text = lab.metrics_text().unwrap();
    check(
        &lab,
        !text.contains("upstream=\"old\"")
            && text.contains("breaker_connect_attempts_total{upstream=\"new\"} 0")
            && text.contains("breaker_config_reloads_total{result=\"success\"} 1"),
        &format!("metrics follow the config:\n{text}"),
    );
    let mut names = pinned_names(&lab);
    names.sort();
    check(
        &lab,
        names == ["dark", "new"],
        &format!("nothing of \"old\" is left in the maps: {names:?}"),
    );
    let to_new = lab
        .client(&["--to", "10.77.0.3:8080", "--count", "2", "--http"])
        .unwrap();
    check(
        &lab,
        to_new.iter().all(|a| a.body.as_deref() == Some("new")),
        &format!("the added upstream is watched and passes: {to_new:?}"),
    );
    check(
        &lab,
        metric(
            &lab,
            "breaker_connect_attempts_total",
            &[("upstream", "new")],
        ) == 2.0,
        "the added upstream counts its connects",
    );

    // A config with a mistake changes nothing, and says what is wrong.
    lab.write_config(&format!(
        "{}{new}[[upstream]]\nname = \"bad\"\nendpoints = [\"10.77.0.4:80\"]\nfailure_threshold = 0\n",
        dark("dark")
    ))
    .unwrap();
    let log = reload(&lab, 2);
    check(
        &lab,
        log.contains("reload failed") && log.contains("failure_threshold"),
        "a bad config is refused, naming the field",
    );
    // So does one that changes what only a restart can.
    lab.write_config(&format!(
        "[daemon]\nmetrics_listen = \"127.0.0.1:9465\"\n{}{new}",
        dark("dark")
    ))
    .unwrap();
    let log = reload(&lab, 3);
    check(
        &lab,
        log.contains("daemon.metrics_listen changed"),
        "a restart-only change is refused",
    );
    check(
        &lab,
        metric(
            &lab,
            "breaker_config_reloads_total",
            &[("result", "failure")],
        ) == 2.0,
        "failed reloads are counted",
    );
    let exited = lab.daemon_exit().unwrap();
    check(&lab, exited.is_none(), "the daemon runs on");
    fast_fail(&lab, "after the failed reloads");
    let mut names = pinned_names(&lab);
    names.sort();
    check(&lab, names == ["dark", "new"], &format!("{names:?}"));
}

#[test]
fn reload_under_load_lets_no_connect_through_to_an_open_upstream() {
    let Some(mut lab) = lab("reloadload") else {
        return;
    };
    lab.start_daemon(&dark("dark")).unwrap();
    let dark_addr = format!("{BLACKHOLE_V4}:80");
    lab.client(&["--to", &dark_addr, "--count", "1", "--timeout-ms", "1500"])
        .unwrap();
    // 64 clients connect to the OPEN upstream without a pause while the config is
    // reloaded over and over (an unrelated upstream comes and goes).
    let load = lab
        .client_command(&[
            "--to",
            &dark_addr,
            "--count",
            "250",
            "--concurrency",
            "64",
            "--interval-ms",
            "40",
            "--timeout-ms",
            "1500",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Each reload loads and verifies the programs (about a second here): the
    // load lasts about 10 s, so every reload lands within it.
    for n in 1..=3 {
        let other = if n % 2 == 1 {
            "[[upstream]]\nname = \"other\"\nendpoints = [\"10.77.0.3:8080\"]\n"
        } else {
            ""
        };
        lab.write_config(&format!("{}{other}", dark("dark")))
            .unwrap();
        let log = reload(&lab, n);
        assert!(
            log.matches("config reloaded").count() == n,
            "reload {n}:\n{log}"
        );
    }
    let mut load = load;
    check(
        &lab,
        load.try_wait().unwrap().is_none(),
        "the clients were still connecting when the last reload finished",
    );
    let out = load.wait_with_output().unwrap();
    let attempts =
        breaker_lab::client::parse_attempts(&String::from_utf8_lossy(&out.stdout)).unwrap();
    // A connect let through to the blackhole waits at least its first SYN RTO
    // (1 s) for anything; one failed fast but stalled behind 64 busy clients
    // (under emulation, 100-250 ms have been seen) is still failed fast.
    let through: Vec<_> = attempts
        .iter()
        .filter(|a| a.errno != Some(libc::ECONNREFUSED) || a.latency_us >= 500_000.0)
        .collect();
    check(
        &lab,
        attempts.len() == 64 * 250 && through.is_empty(),
        &format!(
            "{} attempts, {} not failed fast: {:?}",
            attempts.len(),
            through.len(),
            through.iter().take(5).collect::<Vec<_>>()
        ),
    );
}

#[test]
fn pins_removed_by_hand_are_noticed_and_protection_restored() {
    let Some(mut lab) = lab("unpinned") else {
        return;
    };
    lab.start_daemon(&dark("dark")).unwrap();
    let dark_addr = format!("{BLACKHOLE_V4}:80");
    lab.client(&["--to", &dark_addr, "--count", "1", "--timeout-ms", "1500"])
        .unwrap();
    // A careless operator removes the links: the programs detach with them.
    for entry in std::fs::read_dir(lab.pins.join("links")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let restored = eventually(Duration::from_secs(5), || {
        lab.client(&["--to", &dark_addr, "--count", "1", "--timeout-ms", "300"])
            .is_ok_and(|a| a[0].errno == Some(libc::ECONNREFUSED))
    });
    check(
        &lab,
        restored && lab.daemon_log().contains("the pinned links are gone"),
        "the daemon notices, says so, and enforces again with the state it had",
    );
    check(
        &lab,
        lab.pins.join("links").join("brk_connect4").exists(),
        "pinned again",
    );
}

/// A restart with the same binary and config resumes the pinned links as they are
/// (no program loaded, so no verifier time), and only then: a config that changed
/// or a config map's pin replaced by hand means loading anew. A resumed daemon that
/// must attach again (link pins removed) loads its programs then.
#[test]
fn a_restart_resumes_the_pinned_programs_only_when_it_can_vouch_for_them() {
    let Some(mut lab) = lab("resume") else {
        return;
    };
    let config = dark("dark");
    let dark_addr = format!("{BLACKHOLE_V4}:80");
    let refused = |lab: &Lab| {
        lab.client(&["--to", &dark_addr, "--count", "1", "--timeout-ms", "300"])
            .is_ok_and(|a| a[0].errno == Some(libc::ECONNREFUSED))
    };
    lab.start_daemon(&config).unwrap();
    let first = lab.attached_programs().unwrap();
    assert_eq!(first.len(), 4, "{first:?}");

    lab.signal_daemon(Signal::SIGKILL).unwrap();
    lab.start_daemon(&config).unwrap();
    check(
        &lab,
        lab.daemon_log()
            .contains("resumed the pinned links and maps"),
        "same binary, same config: resumed",
    );
    check(
        &lab,
        lab.attached_programs().unwrap() == first,
        "the very programs stay attached",
    );
    // The resumed daemon's breaker works: one blackholed connect trips it.
    let tripped = lab
        .client(&["--to", &dark_addr, "--count", "2", "--timeout-ms", "1500"])
        .unwrap();
    check(
        &lab,
        outcomes(&tripped) == ["timeout", "refused"],
        &format!("trips after a resume: {:?}", outcomes(&tripped)),
    );

    // A config map's pin replaced by hand, by a map of the same name and shape,
    // while no daemon runs: the programs do not use it.
    lab.signal_daemon(Signal::SIGKILL).unwrap();
    let policies = lab.pins.join("maps").join("POLICIES");
    std::fs::remove_file(&policies).unwrap();
    let made = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&policies)
        .args(["type", "array", "key", "4", "value", "64", "entries", "64"])
        .args(["name", "POLICIES"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    lab.start_daemon(&config).unwrap();
    check(
        &lab,
        lab.daemon_log().contains(
            "loading the programs anew: the attached programs use a map POLICIES that is not the pinned one",
        ),
        "a replaced config map pin: loaded anew",
    );
    let second = lab.attached_programs().unwrap();
    check(
        &lab,
        second.len() == 4 && second.iter().zip(&first).all(|(a, b)| a.0 != b.0),
        &format!("new programs: {first:?} then {second:?}"),
    );
    check(&lab, refused(&lab), "still OPEN after loading anew");

    // A changed config.
    lab.signal_daemon(Signal::SIGKILL).unwrap();
    let changed =
        format!("{config}\n[[upstream]]\nname = \"other\"\nendpoints = [\"10.77.0.2:81\"]\n");
    lab.start_daemon(&changed).unwrap();
    check(
        &lab,
        lab.daemon_log()
            .contains("loading the programs anew: the config changed"),
        "a changed config: loaded anew",
    );
    let third = lab.attached_programs().unwrap();
    check(
        &lab,
        third.len() == 4 && third.iter().zip(&second).all(|(a, b)| a.0 != b.0),
        &format!("new programs: {second:?} then {third:?}"),
    );

    // Resumed, then its link pins go: it loads programs and attaches again.
    lab.signal_daemon(Signal::SIGKILL).unwrap();
    lab.start_daemon(&changed).unwrap();
    check(
        &lab,
        lab.attached_programs().unwrap() == third,
        "resumed the changed config's programs",
    );
    for entry in std::fs::read_dir(lab.pins.join("links")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let restored = eventually(Duration::from_secs(5), || refused(&lab));
    let fourth = lab.attached_programs().unwrap();
    check(
        &lab,
        restored
            && lab.daemon_log().contains("attached again")
            && fourth.len() == 4
            && fourth.iter().zip(&third).all(|(a, b)| a.0 != b.0),
        &format!("attached again with programs of its own: {third:?} then {fourth:?}"),
    );
}

/// `bpftool link detach` keeps the pin but detaches the program: a restart does
/// not resume such a link, and a running daemon notices it and attaches again.
#[test]
fn a_link_detached_by_hand_is_never_taken_for_protection() {
    let Some(mut lab) = lab("detached") else {
        return;
    };
    let config = dark("dark");
    let dark_addr = format!("{BLACKHOLE_V4}:80");
    let refused = |lab: &Lab| {
        lab.client(&["--to", &dark_addr, "--count", "1", "--timeout-ms", "300"])
            .is_ok_and(|a| a[0].errno == Some(libc::ECONNREFUSED))
    };
    let detach = |lab: &Lab| {
        let out = std::process::Command::new("bpftool")
            .args(["link", "detach", "pinned"])
            .arg(lab.pins.join("links").join("brk_connect4"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    lab.start_daemon(&config).unwrap();
    lab.client(&["--to", &dark_addr, "--count", "1", "--timeout-ms", "1500"])
        .unwrap();
    check(&lab, refused(&lab), "tripped");

    lab.signal_daemon(Signal::SIGKILL).unwrap();
    detach(&lab);
    lab.start_daemon(&config).unwrap();
    check(
        &lab,
        lab.daemon_log()
            .contains("loading the programs anew: link brk_connect4 is detached"),
        "a restart does not resume a detached link",
    );
    check(
        &lab,
        refused(&lab),
        "enforcing again after the restart, state kept",
    );

    // While the daemon runs.
    detach(&lab);
    let restored = eventually(Duration::from_secs(5), || refused(&lab));
    check(
        &lab,
        restored && lab.daemon_log().contains("gone or detached"),
        "the running daemon notices and attaches again",
    );
}

/// A connect to a removed upstream that was in flight at the reload ends after
/// its id was cleared: it must count for nobody (no policy at that id), and the
/// next upstream given that id must start CLOSED, not held shut.
#[test]
fn an_upstream_given_a_freed_id_starts_closed() {
    let Some(mut lab) = lab("freedid") else {
        return;
    };
    lab.serve("10.77.0.3:8080", "fresh").unwrap();
    let keep = "[[upstream]]\nname = \"keep\"\nendpoints = [\"10.77.0.9:9\"]\n";
    // Never trips on its own (threshold far above what the test sends).
    let gone = format!(
        "[[upstream]]\nname = \"gone\"\nendpoints = [\"{BLACKHOLE_V4}:80\"]\nfailure_threshold = 255\n"
    );
    let fresh = "[[upstream]]\nname = \"fresh\"\nendpoints = [\"10.77.0.3:8080\"]\nopen_duration = \"1h\"\n";
    lab.start_daemon(&format!("{keep}{gone}")).unwrap();
    // Connects to "gone" in flight all the time (each fails at its first SYN RTO,
    // about 1 s after its SYN): three staggered clients.
    let mut loads = Vec::new();
    for _ in 0..3 {
        loads.push(
            lab.client_command(&[
                "--to",
                &format!("{BLACKHOLE_V4}:80"),
                "--count",
                "6",
                "--concurrency",
                "4",
                "--interval-ms",
                "100",
                "--timeout-ms",
                "1500",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(530));
    }
    // "gone" leaves while its connects are in flight.
    lab.write_config(keep).unwrap();
    let log = reload(&lab, 1);
    assert!(log.contains("config reloaded"), "{log}");
    // Let every connect in flight at the reload end on its own.
    for mut l in loads {
        let _ = l.wait();
    }
    // "fresh" comes, and takes the lowest free id: the one "gone" had.
    lab.write_config(&format!("{keep}{fresh}")).unwrap();
    let log = reload(&lab, 2);
    assert!(log.contains("config reloaded"), "{log}");
    let state = |s: &str| {
        lab.metric("breaker_state", &[("upstream", "fresh"), ("state", s)])
            .unwrap()
    };
    let to_fresh = lab
        .client(&["--to", "10.77.0.3:8080", "--count", "2", "--http"])
        .unwrap();
    check(
        &lab,
        state("closed") == 1.0 && to_fresh.iter().all(|a| a.body.as_deref() == Some("fresh")),
        &format!(
            "a newly added, healthy upstream starts CLOSED (open={}): {to_fresh:?}",
            state("open")
        ),
    );
}

/// 63 upstreams: renaming one needs an id the old name does not hold yet; the
/// maps have room to spare for it, by a reload and by a restart alike.
#[test]
fn renaming_an_upstream_at_the_pinned_maps_capacity_is_applied() {
    let Some(mut lab) = lab("idsfull") else {
        return;
    };
    let config = |renamed: &str| {
        (0..63)
            .map(|i| {
                let name = if i == 0 {
                    renamed.to_string()
                } else {
                    format!("u{i}")
                };
                format!(
                    "[[upstream]]\nname = {name:?}\nendpoints = [\"10.77.1.{}:80\"]\n",
                    i + 1
                )
            })
            .collect::<String>()
    };
    lab.start_daemon(&config("u0")).unwrap();
    lab.write_config(&config("renamed")).unwrap();
    let log = reload(&lab, 1);
    check(
        &lab,
        log.contains("config reloaded"),
        "a reload applies the rename",
    );
    // And a restart applies the next one.
    lab.signal_daemon(Signal::SIGTERM).unwrap();
    lab.start_daemon(&config("renamed-again")).unwrap();
    let mut names = pinned_names(&lab);
    names.sort();
    check(
        &lab,
        names.len() == 63 && names.contains(&"renamed-again".to_string()),
        &format!("63 upstreams, the newest name among them: {names:?}"),
    );
}

/// Every metric the daemon exports passes `promtool check metrics` (Prometheus'
/// naming and format rules): with upstreams, the default policy, an alert that
/// fails, a trip and a reload, so that each family has series.
#[test]
fn the_metrics_pass_promtool_check_metrics() {
    let Some(promtool) =
        breaker_lab::privileges::should_run_with("promtool", breaker_lab::testing::promtool())
    else {
        return;
    };
    let Some(mut lab) = lab("promtool") else {
        return;
    };
    let config = format!(
        "{}[[upstream]]\nname = \"api\"\nendpoints = [\"{UPSTREAM_V4}:8080\"]\n[default_policy]\nfailure_threshold = 1\n[[alert]]\nurl = \"http://127.0.0.1:9/\"\ntimeout = \"200ms\"\n",
        dark("dark")
    );
    lab.start_daemon(&config).unwrap();
    let dark_addr = format!("{BLACKHOLE_V4}:80");
    lab.client(&["--to", &dark_addr, "--count", "2", "--timeout-ms", "1500"])
        .unwrap();
    // A destination of the default policy, refused by nobody listening.
    lab.client(&["--to", "10.77.0.2:9", "--count", "2", "--timeout-ms", "500"])
        .unwrap();
    reload(&lab, 1);
    let text = lab.metrics_text().unwrap();
    for family in [
        "breaker_build_info",
        "breaker_mode",
        "breaker_connects_would_reject_total",
        "breaker_config_reloads_total",
        "breaker_map_entries",
        "breaker_map_capacity",
        "breaker_transitions_total",
    ] {
        assert!(text.contains(family), "{family} is exported:\n{text}");
    }
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\n--- metrics ---\n{text}"
    );
}

/// `daemon.log_format = "json"`: every line the daemon logs is one JSON object
/// with a level and a message; a reload cannot switch the format (restart-only).
#[test]
fn json_logs_are_one_object_per_line() {
    let Some(mut lab) = lab("jsonlog") else {
        return;
    };
    let config = format!("[daemon]\nlog_format = \"json\"\n{}", dark("dark"));
    lab.start_daemon(&config).unwrap();
    let dark_addr = format!("{BLACKHOLE_V4}:80");
    lab.client(&["--to", &dark_addr, "--count", "1", "--timeout-ms", "1500"])
        .unwrap();
    lab.write_config(&dark("dark")).unwrap();
    let log = reload(&lab, 1);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    check(
        &lab,
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["message"].is_string()),
        "each line has a level and a message",
    );
    let said = |what: &str| {
        lines
            .iter()
            .any(|l| l["message"].as_str().is_some_and(|m| m.contains(what)))
    };
    check(&lab, said("breaker attached"), "the start is logged");
    check(
        &lab,
        said("daemon.log_format changed; a reload cannot apply that"),
        "switching the format needs a restart",
    );
}
