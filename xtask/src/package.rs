//! `cargo xtask package`: the Debian package, built by cargo-deb from the release
//! binary, with the completions and man pages that binary generates; and the test
//! `cargo xtask test` runs on it: install with dpkg, check every file, run the
//! installed `breaker check-config` on the shipped config, purge, and check that
//! nothing is left.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context};

use crate::{cargo, tally::Tally, workspace_root};

/// The package's name, as `dpkg` knows it.
const PACKAGE: &str = "breaker";

/// Files the package must install (dpkg may list more).
const EXPECTED: &[&str] = &[
    "/usr/bin/breaker",
    "/etc/breaker/breaker.toml",
    "/lib/systemd/system/breaker.service",
    "/usr/share/breaker/prometheus/breaker-rules.yml",
    "/usr/share/breaker/grafana/breaker-dashboard.json",
    "/usr/share/bash-completion/completions/breaker",
    "/usr/share/zsh/vendor-completions/_breaker",
    "/usr/share/fish/vendor_completions.d/breaker.fish",
    "/usr/share/man/man1/breaker.1.gz",
    "/usr/share/man/man1/breaker-run.1.gz",
    "/usr/share/man/man1/breaker-status.1.gz",
];

/// cargo-deb, installed with `cargo install` when missing.
fn cargo_deb() -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args(["deb", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        eprintln!("package: installing cargo-deb");
        cargo(&["install", "cargo-deb", "--locked"])?;
    }
    Ok(())
}

/// Builds target/debian/breaker_VERSION_ARCH.deb and returns its path.
pub fn build() -> anyhow::Result<PathBuf> {
    cargo_deb()?;
    cargo(crate::RELEASE_BUILD)?;
    let root = workspace_root();
    let breaker = root.join("target/release/breaker");
    let generated = root.join("target/package");
    let _ = std::fs::remove_dir_all(&generated);
    let completions = generated.join("completions");
    std::fs::create_dir_all(&completions)?;
    for (shell, file) in [
        ("bash", "breaker.bash"),
        ("zsh", "_breaker"),
        ("fish", "breaker.fish"),
    ] {
        let out = Command::new(&breaker)
            .args(["completions", shell])
            .output()
            .context("running breaker completions")?;
        if !out.status.success() {
            bail!("breaker completions {shell} failed ({})", out.status);
        }
        std::fs::write(completions.join(file), out.stdout)?;
    }
    let status = Command::new(&breaker)
        .arg("man")
        .arg(generated.join("man"))
        .status()
        .context("running breaker man")?;
    if !status.success() {
        bail!("breaker man failed ({status})");
    }
    let out_dir = root.join("target/debian");
    std::fs::create_dir_all(&out_dir)?;
    let out = Command::new("cargo")
        .args(["deb", "-p", "breaker-userspace", "--no-build", "-o"])
        .arg(&out_dir)
        .current_dir(&root)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo deb")?;
    if !out.status.success() {
        bail!("cargo deb failed ({})", out.status);
    }
    let deb = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| root.join(l.trim()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb") && p.exists())
        .context("cargo deb named no .deb it made")?;
    eprintln!("package: {}", deb.display());
    Ok(deb)
}

/// The package test, as one more test of the suite: passed, failed, or skipped
/// (not root, outside CI; under `CI=true` a missing root fails).
pub fn test() -> Tally {
    let name = "package: install, check-config, purge";
    if !crate::setup::is_root() {
        let why = "needs root (dpkg -i)";
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            eprintln!("{name}: FAILED: {why}, and under CI=true it must run");
            return Tally {
                failed: 1,
                ..Tally::default()
            };
        }
        eprintln!("SKIPPED {name}: {why}");
        return Tally {
            skipped: 1,
            ..Tally::default()
        };
    }
    match build().and_then(|deb| install_check_purge(&deb)) {
        Ok(()) => {
            eprintln!("{name} ... ok");
            Tally {
                passed: 1,
                ..Tally::default()
            }
        }
        Err(e) => {
            eprintln!("{name} ... FAILED: {e:#}");
            // Never leave the package installed on the machine.
            let _ = dpkg(&["--purge", PACKAGE]);
            Tally {
                failed: 1,
                ..Tally::default()
            }
        }
    }
}

fn dpkg(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("dpkg")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .context("running dpkg")?;
    if !out.status.success() {
        bail!(
            "dpkg {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn install_check_purge(deb: &Path) -> anyhow::Result<()> {
    // A package a crashed run left behind.
    let _ = dpkg(&["--purge", PACKAGE]);
    let deb = deb.to_str().context("a UTF-8 path")?;
    dpkg(&["--install", deb])?;
    let listed = dpkg(&["--listfiles", PACKAGE])?;
    let files: Vec<&str> = listed.lines().filter(|l| Path::new(l).is_file()).collect();
    for want in EXPECTED {
        if !files.contains(want) {
            bail!("the package does not install {want}; it lists:\n{listed}");
        }
    }
    let out = Command::new("/usr/bin/breaker")
        .args(["check-config", "/etc/breaker/breaker.toml"])
        .output()
        .context("running the installed breaker")?;
    if !out.status.success() {
        bail!(
            "the installed breaker check-config refuses the shipped config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let conffiles = dpkg(&["--status", PACKAGE])?;
    if !conffiles.contains("/etc/breaker/breaker.toml") {
        bail!("/etc/breaker/breaker.toml is not a conffile:\n{conffiles}");
    }
    // Installing starts nothing: no daemon made pins.
    if Path::new("/sys/fs/bpf/breaker").exists() {
        bail!("/sys/fs/bpf/breaker exists after the install: something started");
    }
    dpkg(&["--purge", PACKAGE])?;
    let left: Vec<&&str> = files.iter().filter(|f| Path::new(f).exists()).collect();
    if !left.is_empty() {
        bail!("the purge left {left:?}");
    }
    if Path::new("/etc/breaker").exists() {
        bail!("the purge left /etc/breaker");
    }
    if dpkg(&["--status", PACKAGE]).is_ok() {
        bail!("dpkg still knows {PACKAGE} after the purge");
    }
    Ok(())
}
