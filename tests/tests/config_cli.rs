//! The `breaker` CLI refuses bad configs with exit status 2, before anything is
//! loaded. None of this needs root: the configs are refused before the kernel is
//! touched. Needs the binary built (`cargo build -p breaker-userspace`).
use std::{
    path::Path,
    process::{Command, Output},
};

use breaker_lab::{lab::find_breaker_bin, testing::Scratch};

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
    let scratch = Scratch::new("config-cli-bad");
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
        (
            "[daemon]\nlog_format = \"xml\"\n[[upstream]]\nname = \"api\"\nendpoints = [\"10.77.0.2:81\"]\n",
            "log_format",
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
    let scratch = Scratch::new("config-cli-cgroup");
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
    let scratch = Scratch::new("config-cli-good");
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

const API: &str = "[[upstream]]\nname = \"api\"\nendpoints = [\"10.77.0.2:81\"]\n";

/// A cgroup v1 directory of this host, if it mounts any.
fn cgroup_v1_dir() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup").then(|| dir.to_string())
    })
}

/// Issue 7's hostile configs: each refused by both commands with exit status 2,
/// and one line naming the field at fault.
#[test]
fn hostile_configs_are_refused_naming_the_field() {
    let scratch = Scratch::new("config-cli-hostile");
    // A directory that looks like a cgroup but is not one.
    let fake = scratch.path().join("fake-cgroup");
    std::fs::create_dir_all(&fake).expect("creating the fake cgroup");
    std::fs::write(fake.join("cgroup.procs"), "").expect("writing cgroup.procs");
    let api_with = |extra: &str| format!("{API}{extra}\n");
    let mut cases: Vec<(String, String)> = vec![
        // Item 9: max_destinations has a maximum.
        (
            "[default_policy]\nmax_destinations = 2000000000\n".into(),
            "default_policy.max_destinations".into(),
        ),
        // Item 10: a fallback inside another upstream's endpoints, v4-mapped.
        (
            format!("{API}fallback = \"[::ffff:10.77.0.3]:9000\"\n[[upstream]]\nname = \"b\"\nendpoints = [\"10.77.0.0/24:9000\"]\nprobe = {{ address = \"10.77.0.4:9000\" }}\n"),
            "upstream[0] (\"api\").fallback[0]".into(),
        ),
        // A fallback that is its own endpoint, v4-mapped.
        (
            api_with("fallback = \"[::ffff:10.77.0.2]:81\""),
            "upstream[0] (\"api\").fallback[0]".into(),
        ),
        (
            "[[upstream]]\nname = \"api\"\nendpoints = [\"::1:80\"]\n".into(),
            "upstream[0] (\"api\").endpoints[0]".into(),
        ),
        (
            "[[upstream]]\nname = \"api\"\nendpoints = [\"0.0.0.0/0\"]\nprobe = { address = \"10.77.0.2:81\" }\n".into(),
            "upstream[0] (\"api\").endpoints[0]".into(),
        ),
        (
            "[[upstream]]\nname = \"api\"\nendpoints = [\"[::/0]:443\"]\nprobe = { address = \"10.77.0.2:81\" }\n".into(),
            "upstream[0] (\"api\").endpoints[0]".into(),
        ),
        (
            "[[upstream]]\nname = \"api\"\nendpoints = [\"127.0.0.1:8080\"]\n".into(),
            "upstream[0] (\"api\").endpoints[0]".into(),
        ),
        (
            "[[upstream]]\nname = \"api\"\nendpoints = [\"[::ffff:127.0.0.1]:8080\"]\n".into(),
            "upstream[0] (\"api\").endpoints[0]".into(),
        ),
        (api_with("probe_interval = \"2h\""), "upstream[0] (\"api\").probe_interval".into()),
        (api_with("probe_timeout = \"5m\""), "upstream[0] (\"api\").probe_timeout".into()),
        (api_with("open_duration = \"1000000h\""), "upstream[0] (\"api\").open_duration".into()),
        (
            format!("[daemon]\nmetrics_listen = \"127.0.0.1:0\"\n{API}"),
            "daemon.metrics_listen".into(),
        ),
        (format!("cgroup = \"{}\"\n{API}", fake.display()), "cgroup".into()),
        (format!("cgroup = \"../../../../../../../..{}\"\n{API}", fake.display()), "cgroup".into()),
        // Item 11: a wrong type, an unknown key, a bad duration: the field and the line.
        (api_with("failure_threshold = \"3\""), "line 4, column 21, upstream[0].failure_threshold".into()),
        (api_with("failure_treshold = 3"), "line 4".into()),
        (api_with("open_duration = \"soon\""), "line 4, column 17, upstream[0].open_duration".into()),
        (
            "[default_policy]\nmax_destinations = \"many\"\n".into(),
            "line 2, column 20, default_policy.max_destinations".into(),
        ),
    ];
    if let Some(v1) = cgroup_v1_dir() {
        cases.push((format!("cgroup = \"{v1}\"\n{API}"), "cgroup".into()));
    }
    for (body, field) in &cases {
        let path = scratch.write("hostile.toml", body);
        for args in [&["run", "--config"][..], &["check-config"][..]] {
            let out = breaker(args, &path);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?} on {body:?}: {err}");
            let line = err
                .lines()
                .find(|l| l.starts_with("error: "))
                .unwrap_or_else(|| panic!("{args:?} on {body:?}: no error line: {err}"));
            assert!(
                line.contains(field.as_str()),
                "{args:?} on {body:?}: the error names {field}: {err}"
            );
            assert!(!err.contains("attached"), "nothing was attached: {err}");
        }
    }
}

#[test]
fn an_endless_config_file_fails_fast() {
    let started = std::time::Instant::now();
    for args in [&["run", "--config"][..], &["check-config"][..]] {
        let out = breaker(args, Path::new("/dev/zero"));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("/dev/zero") && err.contains("4194304"),
            "{err}"
        );
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn check_config_shows_the_cgroup_and_the_kernel_memory_and_warns_on_open_metrics() {
    let scratch = Scratch::new("config-cli-explain");
    let path = scratch.write(
        "breaker.toml",
        &format!("[daemon]\nmetrics_listen = \"0.0.0.0:9464\"\n{API}[default_policy]\nmax_destinations = 4194304\n"),
    );
    let out = breaker(&["check-config"], &path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = stderr(&out);
    assert!(out.status.success(), "{stdout}{err}");
    assert!(
        stdout.contains("cgroup:    /"),
        "the resolved cgroup: {stdout}"
    );
    let memory = stdout
        .lines()
        .find(|l| l.starts_with("kernel memory: about "))
        .unwrap_or_else(|| panic!("no kernel memory line: {stdout}"));
    let mib: f64 = memory["kernel memory: about ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{memory}"));
    // About 384 MiB for the LRU map, and as much again at most for tripped ones.
    assert!((760.0..800.0).contains(&mib), "4 M destinations: {memory}");
    assert!(
        err.starts_with("warning: ") && err.contains("daemon.metrics_listen"),
        "{err}"
    );
}

/// Without privileges, `run` names the capabilities it needs, not an errno. Needs
/// root (to drop it) and setpriv; skips without them.
#[test]
fn run_without_privileges_names_the_capabilities() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let setpriv = Path::new("/usr/bin/setpriv");
    if !root || !setpriv.exists() {
        eprintln!("skipped: needs root and /usr/bin/setpriv to run breaker unprivileged");
        return;
    }
    let scratch = Scratch::new("config-cli-eperm");
    let path = scratch.write(
        "breaker.toml",
        &format!("[daemon]\nmetrics_listen = \"127.0.0.1:19465\"\n{API}"),
    );
    // The unprivileged user must be able to read the config.
    for (p, mode) in [(scratch.path(), 0o755), (path.as_path(), 0o644)] {
        let _ = std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode));
    }
    let bin = find_breaker_bin().expect("the breaker binary");
    let out = Command::new(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&bin)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("running breaker through setpriv");
    let err = stderr(&out);
    if err.contains("Permission denied") && !err.contains("CAP_BPF") {
        eprintln!("skipped: the unprivileged user cannot reach the binary or config: {err}");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("CAP_BPF") && err.contains("CAP_NET_ADMIN") && err.lines().count() == 1,
        "{err}"
    );
}

/// `--log-format` takes text or json; anything else is one clear line and exit 2
/// (clap's usage error), before anything runs.
#[test]
fn log_format_is_text_or_json() {
    let scratch = Scratch::new("config-cli-logformat");
    let path = scratch.write(
        "breaker.toml",
        "[daemon]\nlog_format = \"json\"\n[[upstream]]\nname = \"api\"\nendpoints = [\"10.77.0.2:81\"]\n",
    );
    let out = breaker(&["--log-format", "json", "check-config"], &path);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = breaker(&["--log-format", "xml", "check-config"], &path);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid value 'xml' for '--log-format"),
        "{}",
        stderr(&out)
    );
}

/// Shell completions name every verb; man pages come one per visible subcommand.
#[test]
fn completions_and_man_pages_cover_every_verb() {
    let bin = find_breaker_bin().expect("the breaker binary");
    let verbs = [
        "run",
        "check-config",
        "status",
        "top",
        "force-open",
        "force-close",
        "disable",
        "reset",
        "reload",
        "events",
        "uninstall",
    ];
    for (shell, marker) in [
        ("bash", "complete -F _breaker"),
        ("zsh", "#compdef breaker"),
        ("fish", "complete -c breaker"),
    ] {
        let out = Command::new(&bin)
            .args(["completions", shell])
            .output()
            .unwrap();
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && script.contains(marker),
            "{shell}: {script}"
        );
        for verb in verbs {
            assert!(script.contains(verb), "{shell} completes {verb}");
        }
    }
    let out = Command::new(&bin)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );

    let scratch = Scratch::new("config-cli-man");
    let dir = scratch.path().join("man1");
    let out = Command::new(&bin).arg("man").arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    let mut want: Vec<String> = verbs
        .iter()
        .chain(&["completions"])
        .map(|v| format!("breaker-{v}.1"))
        .chain(["breaker.1".to_string()])
        .collect();
    want.sort();
    assert_eq!(pages, want);
    let status = std::fs::read_to_string(dir.join("breaker-status.1")).unwrap();
    assert!(
        status.contains(".TH breaker-status 1")
            && status.contains(".SH NAME")
            && status.contains(env!("CARGO_PKG_VERSION")),
        "{status}"
    );
}
