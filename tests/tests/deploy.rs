//! What ships beside the binary, checked by the tools that will read it:
//! Prometheus' alert rules with `promtool check rules` and their unit tests with
//! `promtool test rules`. The files are compiled in, so the test runs wherever the
//! binary does (the kernel matrix's guests too).
use std::path::Path;

use breaker_lab::{privileges, testing};

const RULES: &str = include_str!("../../deploy/prometheus/breaker-rules.yml");
const RULE_TESTS: &str = include_str!("../../deploy/prometheus/breaker-rules.test.yml");

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

/// A folder of this test's own, emptied first.
fn scratch() -> Scratch {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("test").replace("::", "-");
    let path = std::env::temp_dir().join(format!("breaker-deploy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).expect("making a scratch folder");
    Scratch(path)
}

/// Removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_alert_rules_are_valid_and_pass_their_unit_tests() {
    let Some(tool) = privileges::needs_tool("promtool rules", testing::promtool()) else {
        return;
    };
    let dir = scratch();
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
    let dir = scratch();
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
