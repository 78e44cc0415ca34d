//! Reading a guest's console: libtest's result lines and init.sh's `breaker-vm: `
//! lines, into the verdict for one kernel.
use crate::tally::Tally;

pub const MARK: &str = "breaker-vm: ";

/// What the guest said.
#[derive(Default, Debug)]
pub struct Console {
    /// `uname -r`, once init has run.
    pub release: Option<String>,
    tally: Tally,
    /// The test binary running, and the tests it has failed so far.
    current: Option<(String, u64)>,
    /// Test binaries that exited non-zero without a failed test (a crash, a panic
    /// outside a test): each counts as one failure.
    pub crashed: Vec<String>,
    skipped: Option<u64>,
    refused_status: Option<i32>,
    refused_stderr: Vec<String>,
    pub notes: Vec<String>,
    pub done: bool,
    /// The guest kernel's first oops or panic line, if it had one.
    pub oops: Option<String>,
}

impl Console {
    pub fn line(&mut self, line: &str) {
        if self.oops.is_none() && is_oops(line) {
            self.oops = Some(line.trim().to_string());
        }
        if let Some((_, failed)) = self.tally.add_result_line(line) {
            if let Some((_, f)) = self.current.as_mut() {
                *f += failed;
            }
            return;
        }
        let Some(at) = line.find(MARK) else {
            return;
        };
        let rest = &line[at + MARK.len()..];
        let (word, arg) = rest.split_once(' ').unwrap_or((rest, ""));
        match word {
            "kernel" => self.release = Some(arg.to_string()),
            "run" => self.current = Some((arg.to_string(), 0)),
            "exit" => {
                let (bin, status) = arg.rsplit_once(' ').unwrap_or((arg, ""));
                let failed = match self.current.take() {
                    Some((b, f)) if b == bin => f,
                    _ => 0,
                };
                if status != "0" && failed == 0 {
                    self.crashed.push(format!("{bin} exited with {status}"));
                }
            }
            "skipped" => self.skipped = arg.trim().parse().ok(),
            "refused-status" => self.refused_status = arg.trim().parse().ok(),
            "refused-stderr" => self.refused_stderr.push(arg.to_string()),
            "done" => self.done = true,
            _ => self.notes.push(rest.to_string()),
        }
    }

    /// The suite's counts; a crashed binary counts as a failed test.
    pub fn suite(&self) -> Tally {
        let mut t = self.tally.with_skips(self.skipped.unwrap_or(0));
        t.failed += self.crashed.len() as u64;
        t
    }

    /// `Ok` when the daemon refused this kernel as it must: exit status 1 and exactly
    /// one line on stderr, breaker-userspace's requirements error for this release.
    pub fn refusal(&self) -> Result<(), String> {
        let release = self.release.as_deref().ok_or("the guest never ran init")?;
        let want = refusal_line(release);
        match (self.refused_status, self.refused_stderr.as_slice()) {
            (Some(1), [line]) if *line == want => Ok(()),
            (status, lines) => Err(format!(
                "expected exit status 1 and the line {want:?}; got status {status:?} and stderr {lines:?}"
            )),
        }
    }
}

/// A kernel line that says the kernel itself broke: an oops (`Oops:`, or the trap's
/// name and code as in `int3: 0000 [#1] PREEMPT SMP`), a BUG or a panic.
fn is_oops(line: &str) -> bool {
    let text = match line.strip_prefix('[') {
        // The kernel's timestamp, when the console has one.
        Some(rest) => rest.split_once("] ").map_or(line, |(_, t)| t),
        None => line,
    };
    text.starts_with("Oops:")
        || text.starts_with("BUG: ")
        || text.starts_with("kernel BUG at ")
        || text.starts_with("Kernel panic - not syncing")
        // A trap's line: "int3: 0000 [#1] ...", "general protection fault, ...: 0000 [#1] ...".
        || text.split_once(": ").is_some_and(|(_, rest)| {
            rest.split_once(" [#").is_some_and(|(code, _)| {
                let code = code.rsplit(' ').next().unwrap_or(code);
                !code.is_empty() && code.chars().all(|c| c.is_ascii_hexdigit())
            })
        })
}

/// The one oops the matrix boots a kernel again for: the spurious int3 of a static
/// key patched under multi-threaded TCG (see init.sh). Any other oops fails.
pub fn is_emulator_int3(oops: &str) -> bool {
    oops.contains("int3: 0000 [#")
}

/// What `breaker run` prints on 5.10: requirements.rs's `KernelVersionError::Missing`
/// for the first feature 5.10 lacks (BPF atomics), as main.rs prints errors.
fn refusal_line(release: &str) -> String {
    format!(
        "error: kernel {release} lacks BPF atomics (compare-and-swap on a map value), which came in Linux 5.12: breaker cannot run on it"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(lines: &[&str]) -> Console {
        let mut c = Console::default();
        for l in lines {
            c.line(l);
        }
        c
    }

    #[test]
    fn a_guest_kernel_oops_is_noticed_and_test_output_is_not() {
        for oops in [
            "[  212.081532] int3: 0000 [#1] PREEMPT SMP NOPTI",
            "[    3.1] Oops: general protection fault, probably for non-canonical address",
            "BUG: kernel NULL pointer dereference, address: 0000000000000008",
            "[   9.9] Kernel panic - not syncing: Attempted to kill init!",
            "[   5.1] general protection fault, probably for non-canonical address 0xdead: 0000 [#1] PREEMPT SMP NOPTI",
            "[   5.1] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI",
            "[   5.1] kernel BUG at mm/slub.c:100!",
        ] {
            assert_eq!(console(&[oops]).oops.as_deref(), Some(oops), "{oops}");
        }
        for quiet in [
            "test a_bug_is_not_an_oops ... ok",
            "error: kernel 5.10.0-46-cloud-amd64 lacks BPF atomics",
            "breaker-vm: run /t/a",
            "thread 'x' panicked at tests/tests/a.rs:1:1: [#1]",
        ] {
            assert_eq!(console(&[quiet]).oops, None, "{quiet}");
        }
        assert!(is_emulator_int3(
            "[  212.08] int3: 0000 [#1] PREEMPT SMP NOPTI"
        ));
        assert!(!is_emulator_int3(
            "[   5.1] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI"
        ));
    }

    #[test]
    fn counts_results_skips_and_crashes() {
        let c = console(&[
            "breaker-vm: kernel 6.1.0-56-cloud-amd64",
            "breaker-vm: run /t/a",
            "test result: ok. 5 passed; 0 failed; 0 ignored",
            "breaker-vm: exit /t/a 0",
            "breaker-vm: run /t/b",
            "test result: FAILED. 2 passed; 1 failed; 0 ignored",
            "breaker-vm: exit /t/b 101",
            "breaker-vm: run /t/c",
            "breaker-vm: exit /t/c 139",
            "breaker-vm: skipped 1",
            "breaker-vm: done",
        ]);
        assert_eq!(c.release.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert!(c.done);
        assert_eq!(c.crashed, ["/t/c exited with 139"]);
        assert_eq!(c.suite().to_string(), "6 passed, 2 failed, 1 skipped");
    }

    #[test]
    fn a_refusal_must_be_the_one_line_and_status_1() {
        let release = "5.10.0-46-cloud-amd64";
        let line = refusal_line(release);
        let ok = console(&[
            &format!("breaker-vm: kernel {release}"),
            "breaker-vm: refused-status 1",
            &format!("breaker-vm: refused-stderr {line}"),
        ]);
        assert_eq!(ok.refusal(), Ok(()));
        let verifier = console(&[
            &format!("breaker-vm: kernel {release}"),
            "breaker-vm: refused-status 1",
            "breaker-vm: refused-stderr error: BPF_STX uses reserved fields",
        ]);
        assert!(verifier.refusal().is_err());
        let status2 = console(&[
            &format!("breaker-vm: kernel {release}"),
            "breaker-vm: refused-status 2",
            &format!("breaker-vm: refused-stderr {line}"),
        ]);
        assert!(status2.refusal().is_err());
    }
}
