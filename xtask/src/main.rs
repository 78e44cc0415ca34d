//! `cargo xtask`: make a machine ready, build, run the demo, run every test.
mod package;
mod setup;
mod tally;
mod vm;

use std::process::Command;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tally::Tally;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (idempotent): rust-src for nightly,
    /// bpf-linker against the nightly's LLVM, bpffs, Debian packages, test tools.
    Setup {
        /// Only what building needs (rust-src, bpf-linker): for the image build.
        #[arg(long)]
        build_only: bool,
    },
    /// Build the whole workspace, kernel programs included.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// The self-contained demo: a breaker tripping and recovering in a lab (root).
    Demo,
    /// Everything: fmt check, clippy, unit tests, privileged integration tests.
    /// With --kernels or --kernel, instead: the privileged integration tests in qemu
    /// on other kernels (root; see the README's "Supported kernels").
    Test {
        /// Every kernel of the matrix: 6.1, 6.12 (the suite) and 5.10 (refused).
        #[arg(long, conflicts_with = "kernel")]
        kernels: bool,
        /// Only this kernel of the matrix (repeatable).
        #[arg(long, value_name = "NAME")]
        kernel: Vec<String>,
        /// Seconds a guest may run, boot to power-off, before it is killed and failed
        /// (the suite takes 6 to 7 minutes under emulation on 2 cores).
        #[arg(long, value_name = "SECONDS", default_value_t = 1200)]
        timeout: u64,
    },
    /// The Debian package (cargo-deb, installed if missing): target/debian/*.deb.
    Package {
        /// Then install it, check it and purge it, as `cargo xtask test` does (root).
        #[arg(long)]
        test: bool,
    },
    /// The benchmarks: BENCHMARKS.md and bench-plots/ at the workspace root (root).
    Bench {
        /// Each scenario briefly, written under target/bench-quick: keeps the harness
        /// working, proves nothing about speed.
        #[arg(long)]
        quick: bool,
        /// Only these scenarios: healthy, failfast, outage, scale, proxy, operations, packet.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

/// Runs `cargo ARGS` in the workspace root, failing on a non-zero exit.
/// The release build of the demo, the bench and the package: one command, so
/// that features are unified alike and none of them builds the others' again
/// (the package built `breaker` alone, which rebuilt it, kernel programs too).
pub const RELEASE_BUILD: &[&str] = &[
    "build",
    "--release",
    "-p",
    "breaker-userspace",
    "-p",
    "breaker-tests",
];

pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("+ cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Clippy on the kernel programs as the kernel gets them (bpfel, nightly): the host
/// build of breaker-ebpf is an empty stub, so the workspace clippy cannot see them.
fn clippy_kernel_programs() -> anyhow::Result<()> {
    let args = [
        "+nightly",
        "clippy",
        "-p",
        "breaker-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Zbuild-std=core",
        "--release",
        "--target-dir",
        "target/bpf-clippy",
        "--",
        "-D",
        "warnings",
    ];
    eprintln!("+ cargo {}", args.join(" "));
    // The outer cargo's CARGO/RUSTC would pin the stable toolchain; rustup picks nightly.
    let status = Command::new("cargo")
        .args(args)
        .env(
            "RUSTFLAGS",
            format!("--cfg bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        )
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .current_dir(workspace_root())
        .status()
        .context("running clippy on the kernel programs")?;
    if !status.success() {
        bail!("clippy on the kernel programs failed ({status})");
    }
    Ok(())
}

/// Where the privileged tests record their skips (see `breaker_lab::privileges`).
const SKIP_LOG_ENV: &str = "BREAKER_SKIP_LOG";

/// Runs `cargo test ARGS`, passing its output through, and adds up its result lines.
/// Privileged tests that skipped are counted from `skip_log` (see [`Tally::with_skips`]).
fn cargo_test(args: &[&str], skip_log: &std::path::Path) -> anyhow::Result<Tally> {
    use std::io::{BufRead, BufReader};
    match std::fs::remove_file(skip_log) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("clearing {}", skip_log.display()))
        }
        _ => {}
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("+ cargo {}", args.join(" "));
    let mut child = Command::new(cargo)
        .args(args)
        .env(SKIP_LOG_ENV, skip_log)
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let mut tally = Tally::default();
    for line in BufReader::new(child.stdout.take().context("cargo test stdout")?).lines() {
        let line = line?;
        println!("{line}");
        tally.add_result_line(&line);
    }
    let status = child.wait()?;
    if !status.success() && tally.failed == 0 {
        bail!("cargo test failed ({status})");
    }
    let skipped = match std::fs::read_to_string(skip_log) {
        Ok(text) => text.lines().filter(|l| !l.trim().is_empty()).count() as u64,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("reading {}", skip_log.display())),
    };
    Ok(tally.with_skips(skipped))
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Setup { build_only: true } => setup::run_build_only(setup::Verbosity::Report),
        Cmd::Setup { build_only: false } => {
            // Everything but the benchmarks' extras: the tests, on this kernel and in qemu.
            let packages: Vec<_> = setup::TEST_PACKAGES
                .iter()
                .chain(vm::PACKAGES)
                .copied()
                .collect();
            setup::run_with(setup::Verbosity::Report, &packages)
        }
        Cmd::Build { release } => {
            setup::run_build_only(setup::Verbosity::Quiet)?;
            let mut args = vec!["build", "--workspace"];
            if release {
                args.push("--release");
            }
            cargo(&args)
        }
        Cmd::Demo => {
            setup::run(setup::Verbosity::Quiet)?;
            cargo(RELEASE_BUILD)?;
            let lab = workspace_root().join("target/release/breaker-lab");
            let status = Command::new(&lab)
                .arg("demo")
                .status()
                .with_context(|| format!("running {}", lab.display()))?;
            if !status.success() {
                bail!("the demo failed ({status})");
            }
            Ok(())
        }
        Cmd::Package { test: false } => {
            setup::run_build_only(setup::Verbosity::Quiet)?;
            package::build()?;
            Ok(())
        }
        Cmd::Package { test: true } => {
            let tally = package::test();
            println!("{tally}");
            if tally.failed > 0 {
                bail!("the package test failed");
            }
            Ok(())
        }
        Cmd::Bench { quick, only } => {
            let packages: Vec<_> = setup::TEST_PACKAGES
                .iter()
                .chain(setup::BENCH_PACKAGES)
                .copied()
                .collect();
            setup::run_with(setup::Verbosity::Quiet, &packages)?;
            cargo(RELEASE_BUILD)?;
            let root = workspace_root();
            let out = if quick {
                root.join("target/bench-quick")
            } else {
                root.clone()
            };
            let mut cmd = Command::new(root.join("target/release/breaker-lab"));
            cmd.arg("bench").arg("--out").arg(&out);
            if quick {
                cmd.arg("--quick");
            }
            if !only.is_empty() {
                cmd.arg("--only").arg(only.join(","));
            }
            let status = cmd.status().context("running the benchmarks")?;
            if !status.success() {
                bail!("the benchmarks failed ({status})");
            }
            Ok(())
        }
        Cmd::Test {
            kernels,
            kernel,
            timeout,
        } if kernels || !kernel.is_empty() => {
            let packages: Vec<_> = setup::TEST_PACKAGES
                .iter()
                .chain(vm::PACKAGES)
                .copied()
                .collect();
            setup::run_with(setup::Verbosity::Quiet, &packages)?;
            vm::test(&kernel, std::time::Duration::from_secs(timeout))
        }
        Cmd::Test { .. } => {
            setup::run(setup::Verbosity::Quiet)?;
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])?;
            clippy_kernel_programs()?;
            // The integration tests start the daemon binary: build it first.
            cargo(&["build", "-p", "breaker-userspace", "-p", "breaker-tests"])?;
            let skip_log = workspace_root().join("target/test-skips.log");
            let tally = cargo_test(
                &["test", "--workspace", "--all-targets", "--no-fail-fast"],
                &skip_log,
            )?;
            // The Debian package: built, installed, checked and purged.
            let package = package::test();
            let tally = Tally {
                passed: tally.passed + package.passed,
                failed: tally.failed + package.failed,
                skipped: tally.skipped + package.skipped,
            };
            // One closing line for the whole suite, whichever test binary ran last.
            println!("{tally}");
            if tally.failed > 0 {
                bail!("{} tests failed", tally.failed);
            }
            Ok(())
        }
    }
}
