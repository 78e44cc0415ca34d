//! `cargo xtask test --kernels`: the privileged integration tests on other kernels,
//! each booted in qemu with an initramfs that holds the test binaries, and one table
//! of the results.
//!
//! - [`kernels`]: the list, and fetching Debian's packages without installing them;
//! - [`initramfs`] (written by [`cpio`]): what the guest holds; `init.sh` runs in it;
//! - [`qemu`]: booting, the accelerator, the timeout;
//! - [`report`]: reading the guest's console into a verdict.
mod cpio;
mod initramfs;
mod kernels;
mod qemu;
mod report;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::tally::Tally;
use kernels::{Kernel, Role, KERNELS};
use qemu::{Accel, Ended};

/// Debian packages the matrix needs on the host.
pub const PACKAGES: &[(crate::setup::Probe, &str)] = {
    use crate::setup::Probe::{File, Program};
    &[
        (Program("qemu-system-x86_64"), "qemu-system-x86"),
        // The guest's init shell; static, so it needs no libraries in the guest.
        (File("/bin/busybox"), "busybox-static"),
        // Debian compresses the 6.x kernels' modules.
        (Program("xz"), "xz-utils"),
        (
            File("/usr/share/keyrings/debian-archive-keyring.gpg"),
            "debian-archive-keyring",
        ),
        // objcopy, to strip debug info from the binaries the guest holds.
        (Program("objcopy"), "binutils"),
    ]
};

/// Names `--kernel` takes.
pub fn kernel_names() -> Vec<&'static str> {
    KERNELS.iter().map(|k| k.name).collect()
}

/// How long init may take to print its first line: a stock kernel under TCG is there
/// in 10-20 s; one that hangs under a paravirtual KVM never is.
const CAME_UP_WITHIN: Duration = Duration::from_secs(120);

/// One kernel's line of the table.
struct Row {
    name: &'static str,
    release: String,
    accel: Option<Accel>,
    tally: Tally,
    /// Why the kernel failed, or what it did when it passed.
    verdict: Result<String, String>,
    took: Duration,
}

/// Runs the matrix on `names` (all kernels when empty); each guest is killed after `timeout`.
pub fn test(names: &[String], timeout: Duration) -> anyhow::Result<()> {
    let selected: Vec<&Kernel> = if names.is_empty() {
        KERNELS.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                KERNELS.iter().find(|k| k.name == n).with_context(|| {
                    format!("no kernel {n:?} in the matrix; it has {:?}", kernel_names())
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let root = crate::workspace_root().join("target/vm");
    std::fs::create_dir_all(root.join("logs"))?;
    let bins = build_binaries()?;
    let (mut accel, why) = qemu::pick_accel();
    eprintln!("vm: {why}");

    let mut rows = Vec::new();
    for kernel in selected {
        let start = Instant::now();
        let row = match run_kernel(kernel, &bins, &root, &mut accel, timeout) {
            Ok(row) => row,
            Err(e) => Row {
                name: kernel.name,
                release: String::new(),
                accel: None,
                tally: Tally {
                    failed: 1,
                    ..Tally::default()
                },
                verdict: Err(format!("{e:#}")),
                took: start.elapsed(),
            },
        };
        match &row.verdict {
            Ok(what) => eprintln!("vm: {}: {what}", row.name),
            Err(why) => eprintln!("vm: {}: FAILED: {why}", row.name),
        }
        // A plain count line per kernel, as the host suite closes with its own.
        println!("{}: {}", row.name, row.tally);
        rows.push(row);
    }
    print_table(&rows);
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.verdict.is_err())
        .map(|r| r.name)
        .collect();
    if !failed.is_empty() {
        bail!("kernels failed: {}", failed.join(", "));
    }
    Ok(())
}

fn run_kernel(
    kernel: &Kernel,
    bins: &initramfs::Binaries,
    root: &Path,
    accel: &mut Accel,
    timeout: Duration,
) -> anyhow::Result<Row> {
    let image =
        kernels::fetch(kernel, root).with_context(|| format!("fetching kernel {}", kernel.name))?;
    eprintln!(
        "vm: {}: {} ({})",
        kernel.name,
        image.release,
        image.package.replace('=', " ")
    );
    let initrd = root.join(format!("initramfs-{}.cpio", kernel.name));
    initramfs::build(bins, &image, &root.join("stripped"), &initrd)
        .context("building the initramfs")?;
    let mode = match kernel.role {
        Role::Suite => "suite",
        Role::Refused => "refused",
    };
    // quiet: only warnings and worse from the kernel among the tests' lines; panic=-1
    // with -no-reboot makes a kernel panic end qemu at once.
    let cmdline = format!("console=ttyS0 quiet panic=-1 breaker.mode={mode}");
    let log_path = root.join("logs").join(format!("{}.log", kernel.name));
    let mut log = std::io::BufWriter::new(
        std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?,
    );
    let start = Instant::now();
    // A guest kernel that dies of the emulator's spurious int3 is given one more
    // boot: under multi-threaded TCG the kernel's live patching of its own code can
    // fault (see init.sh). Any other oops fails the kernel. The verdict names the
    // oops either way.
    let mut oopsed_before: Option<String> = None;
    let (console, ended) = loop {
        let mut console = report::Console::default();
        eprintln!(
            "vm: {}: booting ({accel}, killed after {} s); console in {}",
            kernel.name,
            timeout.as_secs(),
            log_path.display()
        );
        let ended = qemu::boot(
            &qemu::Boot {
                vmlinuz: &image.vmlinuz,
                initrd: &initrd,
                cmdline: &cmdline,
                accel: *accel,
                timeout,
                came_up: (report::MARK, CAME_UP_WITHIN),
            },
            |line| {
                println!("[{}] {line}", kernel.name);
                let _ = writeln!(log, "{line}");
                console.line(line);
            },
        )?;
        // A KVM that cannot run a stock kernel (a paravirtual one) hangs it early, or
        // qemu gives up on the CPU model: emulate from then on.
        if *accel == Accel::Kvm && console.release.is_none() {
            eprintln!("vm: {}: no init under KVM; emulating (TCG)", kernel.name);
            *accel = Accel::Tcg;
            continue;
        }
        let emulator_fault = *accel == Accel::Tcg
            && console
                .oops
                .as_deref()
                .is_some_and(report::is_emulator_int3);
        if let (None, Some(oops), true) = (&oopsed_before, &console.oops, emulator_fault) {
            eprintln!(
                "vm: {}: the guest kernel oopsed ({oops}); booting it once more",
                kernel.name
            );
            oopsed_before = Some(oops.clone());
            continue;
        }
        break (console, ended);
    };
    log.flush()?;
    let took = start.elapsed();
    let release = console.release.clone().unwrap_or_default();
    let ended_badly = match ended {
        Ended::Exited { .. } if console.done => None,
        Ended::Exited { qemu_stderr } => Some(format!(
            "the guest stopped before its suite ended (kernel panic?){}",
            if qemu_stderr.trim().is_empty() {
                String::new()
            } else {
                format!("; qemu: {}", qemu_stderr.trim())
            }
        )),
        Ended::TimedOut => Some(format!("killed after {} s", timeout.as_secs())),
        Ended::NoStart => Some("the guest never reached init".into()),
    };
    let (tally, verdict) = match kernel.role {
        Role::Suite => {
            let mut tally = console.suite();
            // A guest that hung or died is one failure more, whatever ran before.
            tally.failed += ended_badly.is_some() as u64;
            let verdict = if let Some(why) = ended_badly {
                Err(why)
            } else if tally.failed > 0 || tally.skipped > 0 {
                Err(match console.crashed.as_slice() {
                    [] => "tests failed".to_string(),
                    crashed => format!("tests failed; {}", crashed.join("; ")),
                })
            } else if tally.passed == 0 {
                Err("no test ran".into())
            } else {
                Ok("passed".into())
            };
            (tally, verdict)
        }
        Role::Refused => {
            let verdict = match (ended_badly, console.refusal()) {
                (Some(why), _) => Err(why),
                (None, Err(why)) => Err(why),
                (None, Ok(())) => Ok("refused with the clear error, as it must".into()),
            };
            let tally = Tally {
                passed: verdict.is_ok() as u64,
                failed: verdict.is_err() as u64,
                skipped: 0,
            };
            (tally, verdict)
        }
    };
    let verdict = verdict.map_err(|why| {
        let why = match &console.oops {
            Some(oops) => format!("{why}; the guest kernel oopsed: {oops}"),
            None => why,
        };
        if console.notes.is_empty() {
            why
        } else {
            format!("{why}; guest: {}", console.notes.join("; "))
        }
    });
    let verdict = match oopsed_before {
        Some(oops) => verdict.map(|what| {
            format!("{what}, on a second boot: the first one's kernel oopsed ({oops})")
        }),
        None => verdict,
    };
    if release.is_empty() || release == image.release {
        Ok(Row {
            name: kernel.name,
            release,
            accel: Some(*accel),
            tally,
            verdict,
            took,
        })
    } else {
        bail!(
            "the guest ran {release}, not the {} it was given",
            image.release
        )
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<7} {:<28} {:<6} {:<34} {:>8}  result",
        "kernel", "release", "accel", "tests", "time"
    );
    let mut total = Tally::default();
    for r in rows {
        println!(
            "{:<7} {:<28} {:<6} {:<34} {:>7}s  {}",
            r.name,
            r.release,
            r.accel.map(|a| a.to_string()).unwrap_or_default(),
            r.tally.to_string(),
            r.took.as_secs(),
            if r.verdict.is_ok() { "ok" } else { "FAILED" }
        );
        total.passed += r.tally.passed;
        total.failed += r.tally.failed;
        total.skipped += r.tally.skipped;
    }
    println!("kernels: {total}");
}

/// Test files the host suite runs and the guests do not, being the same on
/// every kernel: `deploy` checks files with host tools (promtool,
/// systemd-analyze) and `top` drives a terminal in tmux, neither of which the
/// guests have; `config_cli` refuses configs before the kernel is touched,
/// `alerts` posts webhooks, and `hardening_daemon` attacks the daemon's metrics
/// port and sends it signals, whose kernel side (the pinned programs enforcing
/// while the daemon is down or busy) `operations` and `recovery` check on
/// every kernel. Together about 85 s of each guest's time under emulation.
const HOST_ONLY: &[&str] = &["deploy", "top", "config_cli", "alerts", "hardening_daemon"];

/// Builds `breaker`, `breaker-lab` and the breaker-tests test binaries (the ones
/// with the lab) and returns their paths, as cargo reports them. Built by the same
/// commands as the host suite's (features are unified over what one command
/// builds), so that after it nothing is built again.
fn build_binaries() -> anyhow::Result<initramfs::Binaries> {
    let root = crate::workspace_root();
    let in_package =
        |e: &Executable, package: &str| e.manifest == root.join(package).join("Cargo.toml");
    let bins = cargo_executables(&["build", "-p", "breaker-userspace", "-p", "breaker-tests"])?;
    let find = |package: &str, name: &str| {
        bins.iter()
            .find(|e| in_package(e, package) && e.name == name && !e.test)
            .map(|e| e.path.clone())
            .with_context(|| format!("cargo built no {name} binary"))
    };
    let breaker = find("breaker-userspace", "breaker")?;
    let lab = find("tests", "breaker-lab")?;
    let built = cargo_executables(&["test", "--workspace", "--all-targets", "--no-run"])?;
    let mut tests: Vec<PathBuf> = built
        .iter()
        .filter(|e| e.test && in_package(e, "tests"))
        .filter(|e| !HOST_ONLY.contains(&e.name.as_str()))
        // BREAKER_VM_TESTS=packet_path,services: only these test files, for a
        // quick look at one kernel (CI runs them all).
        .filter(|e| {
            std::env::var("BREAKER_VM_TESTS")
                .map_or(true, |only| only.split(',').any(|n| n.trim() == e.name))
        })
        .map(|e| e.path.clone())
        .collect();
    if tests.is_empty() {
        bail!("cargo built no test binary for breaker-tests");
    }
    // Cargo reports them in the order they finish; the guest runs them in a fixed one.
    tests.sort();
    Ok(initramfs::Binaries {
        breaker,
        lab,
        tests,
    })
}

struct Executable {
    name: String,
    /// Its package's Cargo.toml.
    manifest: PathBuf,
    test: bool,
    path: PathBuf,
}

/// `cargo ARGS --message-format=json-render-diagnostics`: the executables it built.
fn cargo_executables(args: &[&str]) -> anyhow::Result<Vec<Executable>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("+ cargo {}", args.join(" "));
    let out = Command::new(cargo)
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(crate::workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!("cargo {} failed ({})", args.join(" "), out.status);
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(path) = msg["executable"].as_str() else {
            continue;
        };
        found.push(Executable {
            name: msg["target"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            manifest: PathBuf::from(msg["manifest_path"].as_str().unwrap_or_default()),
            test: msg["profile"]["test"].as_bool().unwrap_or(false),
            path: PathBuf::from(path),
        });
    }
    Ok(found)
}
