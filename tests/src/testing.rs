//! What every privileged integration test does first and last: get a lab (or skip),
//! and fail with the daemon's log attached, which is where the why usually is.
use std::{
    path::Path,
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::{client::Attempt, lab::Lab, privileges};

/// A lab for test `tag`, or `None` when the test must skip (see [`privileges`]).
pub fn lab(tag: &str, lab_bin: &str) -> Option<Lab> {
    if !privileges::should_run(tag) {
        return None;
    }
    Some(Lab::new(tag, Path::new(lab_bin)).expect("building the lab"))
}

/// Fails the test with the daemon's log attached.
#[track_caller]
pub fn check(lab: &Lab, ok: bool, what: &str) {
    assert!(ok, "{what}\n--- daemon log ---\n{}", lab.daemon_log());
}

/// The outcome of each attempt, in order.
pub fn outcomes(attempts: &[Attempt]) -> Vec<&str> {
    attempts.iter().map(|a| a.outcome.as_str()).collect()
}

/// A wait for something to happen, stretched by `BREAKER_TEST_PATIENCE` (a whole
/// number; the kernel matrix's emulated guests set it, the host leaves it at 1).
/// Only waits: a bound the test asserts on (a latency, a "within 1 s") stays as is.
pub fn patience(wait: Duration) -> Duration {
    static FACTOR: OnceLock<u32> = OnceLock::new();
    let factor = *FACTOR.get_or_init(|| {
        std::env::var("BREAKER_TEST_PATIENCE")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&f| f >= 1)
            .unwrap_or(1)
    });
    wait * factor
}

/// Waits until `f` holds, for at most [`patience`]`(within)`.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + patience(within);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// promtool: `$PROMTOOL`, else where `cargo xtask setup` unpacks it
/// (target/tools/bin), else on PATH (the kernel matrix's guests).
pub fn promtool() -> Result<std::path::PathBuf, String> {
    tool("PROMTOOL", "bin/promtool", "promtool")
}

/// The Prometheus server: `$PROMETHEUS`, else where `cargo xtask setup` unpacks it
/// (target/tools/bin), else on PATH.
pub fn prometheus() -> Result<std::path::PathBuf, String> {
    tool("PROMETHEUS", "bin/prometheus", "prometheus")
}

/// kubernetes-validate: `$KUBERNETES_VALIDATE`, else the venv `cargo xtask setup`
/// makes (target/tools/venv), else on PATH.
pub fn kubernetes_validate() -> Result<std::path::PathBuf, String> {
    tool(
        "KUBERNETES_VALIDATE",
        "venv/bin/kubernetes-validate",
        "kubernetes-validate",
    )
}

/// A test tool: the path in `$env`, else `tools_path` under target/tools (where
/// `cargo xtask setup` puts it), else `program` on PATH.
fn tool(env: &str, tools_path: &str, program: &str) -> Result<std::path::PathBuf, String> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(p.into());
    }
    let unpacked = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/tools")
        .join(tools_path);
    if unpacked.exists() {
        return Ok(unpacked);
    }
    on_path(program).map_err(|_| {
        format!("needs {program} (cargo xtask setup puts it in target/tools/{tools_path})")
    })
}

/// `program` as found on PATH, or why not.
pub fn on_path(program: &str) -> Result<std::path::PathBuf, String> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("needs {program} on PATH"))
}

/// A scratch folder of a test's own under the system's temp folder, removed on
/// drop.
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    /// `breaker-TAG-PID`, emptied first.
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("breaker-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the scratch folder");
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` as `name` in the folder and returns its path.
    pub fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("writing a scratch file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
