//! What ships beside the binary, checked by the tools that will read it:
//! Prometheus' alert rules with `promtool check rules` and their unit tests with
//! `promtool test rules`; the systemd unit with `systemd-analyze verify` and
//! `security`. The files are compiled in. None of this depends on the kernel, so
//! the kernel matrix leaves these tests to the host.
use std::path::Path;

use breaker_lab::{
    privileges,
    testing::{self, Scratch},
};

const RULES: &str = include_str!("../../deploy/prometheus/breaker-rules.yml");
const RULE_TESTS: &str = include_str!("../../deploy/prometheus/breaker-rules.test.yml");
const UNIT: &str = include_str!("../../deploy/systemd/breaker.service");
/// The exposure `systemd-analyze security` may give the unit at most (0 best, 10
/// worst; "OK" up to 4.9). Measured 2.8 with systemd 252.
const MAX_EXPOSURE: f64 = 3.0;

/// `promtool ARGS` in `dir`: its exit status and everything it printed.
fn promtool(promtool: &Path, dir: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_alert_rules_are_valid_and_pass_their_unit_tests() {
    let Some(tool) = privileges::needs_tool("promtool rules", testing::promtool()) else {
        return;
    };
    let dir = Scratch::new("deploy-the_alert_rules_are_valid_and_pass_their_unit_tests");
    std::fs::write(dir.path().join("breaker-rules.yml"), RULES).unwrap();
    std::fs::write(dir.path().join("breaker-rules.test.yml"), RULE_TESTS).unwrap();
    let (ok, said) = promtool(&tool, dir.path(), &["check", "rules", "breaker-rules.yml"]);
    assert!(ok && said.contains("SUCCESS: 8 rules found"), "{said}");
    let (ok, said) = promtool(
        &tool,
        dir.path(),
        &["test", "rules", "breaker-rules.test.yml"],
    );
    assert!(ok && said.contains("SUCCESS"), "{said}");
    // Every alert of the rules has a unit test.
    for line in RULES.lines() {
        if let Some(alert) = line.trim().strip_prefix("- alert: ") {
            assert!(
                RULE_TESTS.contains(&format!("alertname: {alert}\n")),
                "alert {alert} has no unit test"
            );
        }
    }
}

/// A rule file with a mistake is refused: the check above could fail.
#[test]
fn promtool_refuses_a_broken_rule() {
    let Some(tool) = privileges::needs_tool("promtool rules", testing::promtool()) else {
        return;
    };
    let dir = Scratch::new("deploy-promtool_refuses_a_broken_rule");
    let broken = RULES.replacen(
        "expr: breaker_state{state=\"open\"} == 1",
        "expr: breaker_state{state=\"open\" == 1",
        1,
    );
    assert_ne!(broken, RULES);
    std::fs::write(dir.path().join("breaker-rules.yml"), broken).unwrap();
    let (ok, said) = promtool(&tool, dir.path(), &["check", "rules", "breaker-rules.yml"]);
    assert!(!ok, "{said}");
}

/// The unit with its `/usr/bin/breaker` pointing at the built binary (verify
/// checks that each command exists), written as `breaker.service` in `dir`.
fn unit_in(dir: &Path, text: &str) -> std::path::PathBuf {
    let breaker = breaker_lab::lab::find_breaker_bin().expect("the breaker binary");
    let path = dir.join("breaker.service");
    let text = text.replace("/usr/bin/breaker", breaker.to_str().expect("a UTF-8 path"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let Some(analyze) = privileges::needs_tool("systemd unit", testing::on_path("systemd-analyze"))
    else {
        return;
    };
    let dir = Scratch::new("deploy-the_systemd_unit_verifies_and_is_hardened");
    let unit = unit_in(dir.path(), UNIT);
    let out = std::process::Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "verify: {said}"
    );
    let out = std::process::Command::new(&analyze)
        .args(["security", "--offline=true"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for breaker.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} > {MAX_EXPOSURE}:\n{report}"
    );
    for (setting, why) in [
        ("ExecReload=", "systemctl reload re-reads the config"),
        ("Restart=on-failure", "a crash restarts it"),
    ] {
        assert!(UNIT.contains(setting), "{setting}: {why}");
    }
}

/// The unit's commands, as the binary parses them: ExecStartPre checks a config
/// (a valid one passes), and ExecStart's arguments are the daemon's (it gets as
/// far as reading the config file, which is not there).
#[test]
fn the_units_commands_are_the_binarys() {
    let breaker = breaker_lab::lab::find_breaker_bin().expect("the breaker binary");
    let command = |key: &str| -> Vec<String> {
        let line = UNIT
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("the unit has no {key}"));
        let mut words: Vec<String> = line.split_whitespace().map(String::from).collect();
        assert_eq!(words[0], "/usr/bin/breaker", "{line}");
        words.remove(0);
        words
    };
    let dir = Scratch::new("deploy-the_units_commands_are_the_binarys");
    let config = dir.path().join("breaker.toml");
    std::fs::write(
        &config,
        "[[upstream]]\nname = \"api\"\nendpoints = [\"10.0.0.1:80\"]\n",
    )
    .unwrap();
    let run = |args: Vec<String>| {
        let args: Vec<String> = args
            .into_iter()
            .map(|a| {
                if a == "/etc/breaker/breaker.toml" {
                    config.display().to_string()
                } else {
                    a
                }
            })
            .collect();
        std::process::Command::new(&breaker)
            .args(&args)
            .output()
            .unwrap()
    };
    let pre = run(command("ExecStartPre="));
    assert!(pre.status.success(), "ExecStartPre: {pre:?}");
    std::fs::remove_file(&config).unwrap();
    let start = run(command("ExecStart="));
    let stderr = String::from_utf8_lossy(&start.stderr);
    assert!(
        stderr.contains(&format!("cannot read config {}", config.display())),
        "ExecStart's arguments: {stderr}"
    );
}

/// verify does fail: a unit whose command does not exist is refused.
#[test]
fn systemd_analyze_refuses_a_broken_unit() {
    let Some(analyze) = privileges::needs_tool("systemd unit", testing::on_path("systemd-analyze"))
    else {
        return;
    };
    let dir = Scratch::new("deploy-systemd_analyze_refuses_a_broken_unit");
    let unit = unit_in(
        dir.path(),
        &UNIT.replace(
            "ExecStart=/usr/bin/breaker",
            "ExecStart=/nonexistent/breaker",
        ),
    );
    let out = std::process::Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
}
