//! `cargo xtask`: make a machine ready, build, run the demo, run every test.
mod setup;

use std::process::Command;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (idempotent): rust-src for nightly,
    /// bpf-linker against the nightly's LLVM, bpffs, Debian packages.
    Setup,
    /// Build the whole workspace, kernel programs included.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// The self-contained demo: a breaker tripping and recovering in a lab (root).
    Demo,
    /// Everything: fmt check, clippy, unit tests, privileged integration tests.
    Test,
}

/// Runs `cargo ARGS` in the workspace root, failing on a non-zero exit.
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

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run(setup::Verbosity::Report),
        Cmd::Build { release } => {
            setup::run(setup::Verbosity::Quiet)?;
            let mut args = vec!["build", "--workspace"];
            if release {
                args.push("--release");
            }
            cargo(&args)
        }
        Cmd::Demo => {
            setup::run(setup::Verbosity::Quiet)?;
            cargo(&[
                "build",
                "--release",
                "-p",
                "breaker-userspace",
                "-p",
                "breaker-tests",
            ])?;
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
        Cmd::Test => {
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
            // The integration tests start the daemon binary: build it first.
            cargo(&["build", "-p", "breaker-userspace", "-p", "breaker-tests"])?;
            cargo(&["test", "--workspace"])
        }
    }
}
