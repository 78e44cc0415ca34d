//! `breaker top` in a real terminal: a tmux pane of fixed size, read with
//! `capture-pane`, driven with `send-keys`. The view itself is tested frame by
//! frame in `breaker::top`; here, that the real binary draws a real daemon's
//! breakers, follows a trip, quits on `q` with status 0, and refuses one clear
//! line when no daemon runs. Needs the binary built (`cargo build -p
//! breaker-userspace`).
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use breaker_lab::{
    lab::{find_breaker_bin, Lab},
    privileges,
    testing::{check, eventually, on_path},
};

/// A tmux server of the test's own (its socket in `dir`, so the operator's
/// sessions are never touched) with one detached session; killed on drop,
/// whatever happens, and its socket removed.
struct TmuxSession {
    tmux: PathBuf,
    socket: PathBuf,
    name: String,
}

impl TmuxSession {
    /// Runs `command` (a shell line) in a `width`x`height` pane.
    fn start(
        tmux: &Path,
        dir: &Path,
        tag: &str,
        (width, height): (u16, u16),
        command: &str,
    ) -> TmuxSession {
        let session = TmuxSession {
            tmux: tmux.to_path_buf(),
            socket: dir.join("tmux.sock"),
            name: format!("breaker-{tag}-{}", std::process::id()),
        };
        let out = session
            .tmux(&["new-session", "-d", "-s", &session.name])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .arg(command)
            .output()
            .expect("running tmux");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        session
    }

    fn tmux(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.tmux);
        command
            .arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .args(args);
        command
    }

    /// The pane's text, or empty once the session is gone.
    fn capture(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", &self.name])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
    }

    fn send_keys(&self, keys: &str) {
        let sent = self
            .tmux(&["send-keys", "-t", &self.name, keys])
            .status()
            .expect("running tmux send-keys");
        assert!(sent.success(), "tmux send-keys {keys}");
    }
}

impl Drop for TmuxSession {
    fn drop(&mut self) {
        for args in [
            &["kill-session", "-t", &self.name][..],
            &["kill-server"][..],
        ] {
            let _ = self
                .tmux(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // The server leaves its socket behind when its last session has ended.
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The pane's row of upstream `name`, if it shows one.
fn row<'a>(pane: &'a str, name: &str) -> Option<&'a str> {
    pane.lines()
        .find(|l| l.split_whitespace().any(|w| w == name))
}

#[test]
fn top_shows_the_upstreams_follows_a_trip_and_quits_on_q() {
    let tag = "top";
    let Some(tmux) = privileges::should_run_with(tag, on_path("tmux")) else {
        return;
    };
    let mut lab =
        Lab::new(tag, Path::new(env!("CARGO_BIN_EXE_breaker-lab"))).expect("building the lab");
    // Nothing listens on port 81: each connect is refused, two trip the breaker.
    lab.start_daemon(
        "[[upstream]]\nname = \"api\"\nendpoints = [\"10.77.0.2:81\"]\nfailure_threshold = 2\nopen_duration = \"1h\"\n",
    )
    .unwrap();
    // With its output not a terminal (a pipe here), it says so in one line and
    // exits non-zero, writing no escape sequence.
    let piped = lab.cli(&["top"]).unwrap();
    let said = String::from_utf8_lossy(&piped.stderr);
    check(
        &lab,
        !piped.status.success()
            && piped.stdout.is_empty()
            && said.trim() == "error: breaker top needs a terminal, and its output is not one (for scripts: breaker status --json)",
        &format!("top with its output piped: {piped:?}"),
    );
    let exit_file = lab.work_dir().join("top.exit");
    let command = format!(
        "{} top --interval 200ms --socket {}; echo $? > {}",
        find_breaker_bin().unwrap().display(),
        lab.control_socket().display(),
        exit_file.display()
    );
    let session = TmuxSession::start(&tmux, lab.work_dir(), tag, (160, 40), &command);

    let shows = |what: &dyn Fn(&str) -> bool| {
        eventually(Duration::from_secs(10), || what(&session.capture()))
    };
    check(
        &lab,
        shows(&|pane| {
            row(pane, "api").is_some_and(|r| r.contains("closed"))
                && pane.contains("health: healthy")
        }),
        &format!(
            "the upstream's row, closed, and a healthy host:\n{}",
            session.capture()
        ),
    );

    lab.client(&["--to", "10.77.0.2:81", "--count", "3"])
        .unwrap();
    check(
        &lab,
        shows(&|pane| {
            row(pane, "api").is_some_and(|r| r.split_whitespace().any(|w| w == "open"))
                && pane.contains("health: critical")
        }),
        &format!("the trip shows: open, critical:\n{}", session.capture()),
    );

    // The daemon's /status says the same word: one function computes both.
    let said = lab.http_get("/status").unwrap_or_default();
    check(&lab, said.contains("\"status\":\"critical\""), &said);

    session.send_keys("q");
    check(
        &lab,
        eventually(Duration::from_secs(10), || {
            std::fs::read_to_string(&exit_file).is_ok_and(|s| !s.trim().is_empty())
        }),
        &format!("top quits on q:\n{}", session.capture()),
    );
    let status = std::fs::read_to_string(&exit_file).unwrap_or_default();
    check(
        &lab,
        status.trim() == "0",
        &format!("exit status {status:?}"),
    );
}

#[test]
fn top_with_no_daemon_says_so_in_one_line_and_exits_non_zero() {
    let out = Command::new(find_breaker_bin().expect("the breaker binary"))
        .args(["top", "--socket", "/nonexistent"])
        .stdin(Stdio::null())
        .output()
        .expect("running breaker top");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status {}", out.status);
    assert_eq!(
        stderr.trim_end().lines().collect::<Vec<_>>(),
        ["error: no breaker daemon is running (nothing answers at /nonexistent)"],
        "one line naming the missing daemon"
    );
    // Nothing drawn, no escape sequence: the terminal was not touched.
    assert!(
        out.stdout.is_empty(),
        "stdout: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}
