//! Privileged tests need root and BPF. Outside CI they skip with a reason; under
//! `CI=true` a missing privilege is a failure, never a silent skip.
//!
//! A skipped test still reports "ok" to libtest, so each skip is also appended to the
//! file named by [`SKIP_LOG_ENV`]: `cargo xtask test` counts those lines as skipped.
use std::io::Write;

/// Names the file each skip appends one line to (test name and reason).
pub const SKIP_LOG_ENV: &str = "BREAKER_SKIP_LOG";

/// `Ok(())` when the lab can run; otherwise the reason it cannot.
pub fn check() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (network namespaces, cgroups, BPF)".into());
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists()
        && !std::path::Path::new("/sys/fs/bpf").exists()
    {
        return Err(
            "this kernel shows no BPF support (/sys/kernel/btf/vmlinux, /sys/fs/bpf)".into(),
        );
    }
    Ok(())
}

/// Whether to run a privileged test: panics under CI when it cannot, prints why and
/// returns false elsewhere.
pub fn should_run(test: &str) -> bool {
    run_or_skip(test, check())
}

/// As [`should_run`], for a test that also needs a tool: `found` is its path, or
/// why it is missing.
pub fn should_run_with<T>(test: &str, found: Result<T, String>) -> Option<T> {
    needs_tool(test, check().and(found))
}

/// For a test that needs no privileges, only a tool: `found` is its path, or why
/// it is missing (a skip outside CI, a failure under `CI=true`).
pub fn needs_tool<T>(test: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(tool) => Some(tool),
        Err(why) => {
            run_or_skip(test, Err(why));
            None
        }
    }
}

fn run_or_skip(test: &str, check: Result<(), String>) -> bool {
    match check {
        Ok(()) => true,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("{test}: {why}; under CI=true privileged tests must run, not skip")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            if let Some(log) = std::env::var_os(SKIP_LOG_ENV) {
                // libtest names each test's thread after the test; `test` is only a tag.
                let current = std::thread::current();
                let name = current.name().filter(|n| *n != "main").unwrap_or(test);
                if let Err(e) = append_line(std::path::Path::new(&log), &format!("{name}: {why}")) {
                    eprintln!("cannot record the skip in {}: {e}", log.to_string_lossy());
                }
            }
            false
        }
    }
}

/// One line, appended in a single write so that tests skipping at once do not interleave.
fn append_line(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(format!("{}\n", line.replace('\n', " ")).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_lines_are_appended_one_per_call() {
        let path = std::env::temp_dir().join(format!("breaker-skip-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        append_line(&path, "a: needs root").unwrap();
        append_line(&path, "b: two\nlines").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(text, "a: needs root\nb: two lines\n");
    }
}
