//! The `breaker` CLI refuses bad configs with exit status 2, before anything is
//! loaded. None of this needs root: the configs are refused before the kernel is
//! touched. Needs the binary built (`cargo build -p breaker-userspace`).
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use breaker_lab::lab::find_breaker_bin;

/// A scratch folder for config files, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("breaker-config-cli-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the scratch folder");
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("writing a config");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn breaker(args: &[&str], config: &Path) -> Output {
    let bin = find_breaker_bin().expect("the breaker binary");
    Command::new(&bin)
        .args(args)
        .arg(config)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_configs_are_refused_with_exit_status_2() {
    let scratch = Scratch::new("bad");
    let cases = [
        (
            "[[upstream]]\nname = \"api\"\nendpoints = [\"10.77.0.2:81\"]\nfailure_threshold = 0\n",
            "failure_threshold",
        ),
        (
            "[[upstream]]\nname = \"api\"\nendpoints = [\"10.77.0.2:81\"]\nfailure_treshold = 3\n",
            "failure_treshold",
        ),
        (
            "[[upstream]]\nname = \"api\"\nendpoints = [\"10.77.0.300:81\"]\n",
            "endpoints[0]",
        ),
        // The same endpoint twice, once written v4-mapped.
        (
            "[[upstream]]\nname = \"api\"\nendpoints = [\"10.77.0.2:81\"]\n[[upstream]]\nname = \"mapped\"\nendpoints = [\"[::ffff:10.77.0.2]:81\"]\n",
            "upstream[1] (\"mapped\").endpoints[0]",
        ),
        // The default policy has no probe: without trials it could never recover.
        (
            "[default_policy]\nhalf_open_max_connections = 0\n",
            "default_policy.half_open_max_connections",
        ),
    ];
    for (body, field) in cases {
        let path = scratch.write("breaker.toml", body);
        let out = breaker(&["run", "--config"], &path);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "exit status for {body:?}: {err}"
        );
        assert!(
            err.contains(field) && err.contains("breaker.toml"),
            "stderr names the file and {field}: {err}"
        );
        assert!(!err.contains("attached"), "nothing was attached: {err}");
        let out = breaker(&["check-config"], &path);
        assert_eq!(out.status.code(), Some(2), "check-config for {body:?}");
        assert!(stderr(&out).contains(field), "{}", stderr(&out));
    }
}

#[test]
fn a_missing_cgroup_is_a_config_error() {
    let scratch = Scratch::new("cgroup");
    // Found before anything loads, so it reads the same with or without root.
    let path = scratch.write(
        "missing-cgroup.toml",
        "cgroup = \"/nonexistent/cgroup\"\n[[upstream]]\nname = \"api\"\nendpoints = [\"10.77.0.2:81\"]\n",
    );
    let out = breaker(&["run", "--config"], &path);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent/cgroup"), "{err}");
    assert!(!err.contains("attached"), "nothing was attached: {err}");
}

#[test]
fn a_good_config_is_accepted_and_explained() {
    let scratch = Scratch::new("good");
    let path = scratch.write(
        "breaker.toml",
        "[[upstream]]\nname = \"api\"\nendpoints = [\"10.77.0.2:81\", \"[::ffff:10.77.1.0/120]:*\"]\n",
    );
    let out = breaker(&["check-config"], &path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("upstream api") && stdout.contains("config OK"),
        "{stdout}{}",
        stderr(&out)
    );
    assert!(
        stdout.contains("10.77.1.0/24:*"),
        "the v4-mapped endpoint is shown as IPv4: {stdout}"
    );
}
