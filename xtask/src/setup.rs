//! Making a fresh machine ready, idempotently. Each step checks before it acts; a
//! second run does nothing and says so.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// Say what each step found (cargo xtask setup).
    Report,
    /// Only speak when something is done (before build, demo, test).
    Quiet,
}

/// How to tell a Debian package is there: a program on PATH or a file.
#[derive(Clone, Copy)]
pub enum Probe {
    Program(&'static str),
    File(&'static str),
}

/// Debian packages the lab and the tests use.
pub const TEST_PACKAGES: &[(Probe, &str)] = &[
    (Probe::Program("ip"), "iproute2"),
    // The uninstall test asks the kernel, through bpftool, what is attached.
    (Probe::Program("bpftool"), "bpftool"),
    // deploy.rs checks the systemd unit with systemd-analyze.
    (Probe::Program("systemd-analyze"), "systemd"),
    // top.rs runs `breaker top` in a real terminal, a tmux pane.
    (Probe::Program("tmux"), "tmux"),
];

/// What the benchmarks add: the proxy they compare against, and a font for the plots.
pub const BENCH_PACKAGES: &[(Probe, &str)] = &[
    (Probe::Program("haproxy"), "haproxy"),
    // Scenario 8's throughput through the packet path.
    (Probe::Program("iperf3"), "iperf3"),
    (
        Probe::File("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
        "fonts-dejavu-core",
    ),
];

/// A set-up step: `Some(what it did)`, or `None` when there was nothing to do.
type Step = fn() -> anyhow::Result<Option<String>>;

pub fn run(verbosity: Verbosity) -> anyhow::Result<()> {
    run_with(verbosity, TEST_PACKAGES)
}

/// What building needs, and no more.
const BUILD_STEPS: [(&str, Step); 2] = [
    ("rust-src for the nightly toolchain", nightly_rust_src),
    ("bpf-linker built against the nightly's LLVM", bpf_linker),
];

/// What the tests add to the build's needs.
const TEST_STEPS: [(&str, Step); 3] = [
    ("bpffs at /sys/fs/bpf", bpffs),
    (
        "promtool and prometheus from Debian's prometheus package",
        prometheus,
    ),
    (
        "kubernetes-validate in a Python venv under target/tools",
        kubernetes_validate,
    ),
];

/// Only what building the workspace and the package needs (the image build,
/// which can neither mount bpffs nor wants the test tools).
pub fn run_build_only(verbosity: Verbosity) -> anyhow::Result<()> {
    if run_steps(verbosity, &BUILD_STEPS)? == 0 && verbosity == Verbosity::Report {
        eprintln!("setup: nothing to do, this machine can build");
    }
    Ok(())
}

/// Runs each step; returns how many did something.
fn run_steps(verbosity: Verbosity, steps: &[(&str, Step)]) -> anyhow::Result<usize> {
    let mut did = 0;
    for (what, step) in steps {
        match step().with_context(|| format!("setup: {what}"))? {
            Some(done) => {
                did += 1;
                eprintln!("setup: {what}: {done}");
            }
            None if verbosity == Verbosity::Report => eprintln!("setup: {what}: already in place"),
            None => {}
        }
    }
    Ok(did)
}

pub fn run_with(verbosity: Verbosity, packages: &[(Probe, &'static str)]) -> anyhow::Result<()> {
    let mut did = run_steps(verbosity, &BUILD_STEPS)?;
    did += run_steps(verbosity, &TEST_STEPS)?;
    match debian_packages(packages).context("setup: Debian packages")? {
        Some(done) => {
            did += 1;
            eprintln!("setup: Debian packages: {done}");
        }
        None if verbosity == Verbosity::Report => {
            eprintln!("setup: Debian packages: already in place")
        }
        None => {}
    }
    if verbosity == Verbosity::Report && did == 0 {
        eprintln!("setup: nothing to do, this machine is ready");
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn must(program: &str, args: &[&str], envs: &[(&str, &Path)]) -> anyhow::Result<()> {
    eprintln!("setup: + {program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let status = cmd.status().with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn nightly_rust_src() -> anyhow::Result<Option<String>> {
    if output("rustup", &["run", "nightly", "rustc", "--version"]).is_none() {
        must(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
            &[],
        )?;
    }
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if installed.lines().any(|l| l.trim().starts_with("rust-src")) {
        return Ok(None);
    }
    must(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
        &[],
    )?;
    Ok(Some("installed".into()))
}

/// Where the LLVM symlinks for bpf-linker live; its binary keeps an rpath to here.
fn llvm_prefix() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".local/share/breaker/llvm")
}

fn bpf_linker() -> anyhow::Result<Option<String>> {
    if output("bpf-linker", &["--version"]).is_some() {
        return Ok(None);
    }
    // bpf-linker links against an LLVM; the one shipped in the nightly toolchain is the
    // only one here, and it must match the LLVM rustc emits bitcode for.
    let rustc = output("rustup", &["which", "--toolchain", "nightly", "rustc"])
        .context("finding the nightly rustc")?;
    let lib_dir = Path::new(rustc.trim())
        .parent()
        .and_then(Path::parent)
        .context("nightly toolchain layout")?
        .join("lib");
    let names: Vec<String> = std::fs::read_dir(&lib_dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // The versioned soname (libLLVM.so.22.1-rust-...) is what llvm-sys links against.
    let llvm = names
        .iter()
        .find(|n| n.starts_with("libLLVM.so."))
        .or_else(|| {
            names
                .iter()
                .find(|n| n.starts_with("libLLVM-") && n.ends_with(".so"))
        })
        .cloned()
        .with_context(|| format!("no libLLVM in {}", lib_dir.display()))?;
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .trim_start_matches("libLLVM-")
        .split(['.', '-'])
        .next()
        .unwrap_or_default()
        .to_string();
    if major.parse::<u32>().is_err() {
        bail!("cannot tell the LLVM version from {llvm}");
    }
    let prefix = llvm_prefix();
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for name in ["libLLVM.so".to_string(), llvm.clone()] {
        let link = lib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib_dir.join(&llvm), &link)?;
    }
    let feature = format!("llvm-{major}");
    must(
        "cargo",
        &[
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
            &feature,
        ],
        &[("LLVM_PREFIX", &prefix)],
    )?;
    Ok(Some(format!(
        "built against LLVM {major} ({})",
        lib_dir.join(llvm).display()
    )))
}

pub fn is_root() -> bool {
    output("id", &["-u"]).is_some_and(|u| u.trim() == "0")
}

fn bpffs() -> anyhow::Result<Option<String>> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts.lines().any(|l| {
        l.split_whitespace().nth(2) == Some("bpf")
            && l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
    }) {
        return Ok(None);
    }
    if !is_root() {
        return Ok(Some("not mounted, and mounting needs root: skipped".into()));
    }
    std::fs::create_dir_all("/sys/fs/bpf").ok();
    must("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"], &[])?;
    Ok(Some("mounted".into()))
}

/// Where setup puts promtool, which the metrics test runs (`promtool check metrics`).
pub fn promtool_path() -> PathBuf {
    crate::workspace_root().join("target/tools/bin/promtool")
}

/// Where setup puts the Prometheus server, which the dashboard test starts.
pub fn prometheus_path() -> PathBuf {
    crate::workspace_root().join("target/tools/bin/prometheus")
}

/// Where setup puts kubernetes-validate, which the manifests' test runs.
pub fn kubernetes_validate_path() -> PathBuf {
    crate::workspace_root().join("target/tools/venv/bin/kubernetes-validate")
}

/// The kubernetes-validate release the manifests are checked with (it ships the
/// schemas of every Kubernetes version the test names).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// promtool and the Prometheus server, unpacked from Debian's `prometheus`
/// package into target/tools/ rather than installed: installing it would also
/// start a Prometheus server on the machine, for good.
fn prometheus() -> anyhow::Result<Option<String>> {
    let dest = promtool_path();
    let server = prometheus_path();
    if dest.exists() && server.exists() {
        return Ok(None);
    }
    let work = crate::workspace_root().join("target/tools/download");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let download = || {
        Command::new("apt-get")
            .args(["download", "-q", "prometheus"])
            .current_dir(&work)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    // A fresh machine's package lists may not be there yet.
    if !download() {
        must("apt-get", &["update", "-q"], &[])?;
        if !download() {
            bail!("apt-get download prometheus failed");
        }
    }
    let deb = std::fs::read_dir(&work)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let unpacked = work.join("x");
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&unpacked)
        .status()
        .context("running dpkg-deb")?;
    if !status.success() {
        bail!("dpkg-deb -x {} failed ({status})", deb.display());
    }
    std::fs::create_dir_all(dest.parent().context("promtool's folder")?)?;
    std::fs::copy(unpacked.join("usr/bin/promtool"), &dest)
        .context("the prometheus package holds no usr/bin/promtool")?;
    std::fs::copy(unpacked.join("usr/bin/prometheus"), &server)
        .context("the prometheus package holds no usr/bin/prometheus")?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(Some(format!(
        "unpacked into {}",
        dest.parent().unwrap_or(&dest).display()
    )))
}

/// kubernetes-validate from PyPI, in a venv of its own under target/tools (the
/// system's Python stays untouched).
fn kubernetes_validate() -> anyhow::Result<Option<String>> {
    let tool = kubernetes_validate_path();
    if output(tool.to_str().context("a UTF-8 path")?, &["--version"]).is_some() {
        return Ok(None);
    }
    let venv = tool
        .parent()
        .and_then(Path::parent)
        .context("the venv's folder")?;
    let _ = std::fs::remove_dir_all(venv);
    let make_venv = || {
        Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(venv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    // Debian's python3 makes venvs only with python3-venv installed.
    if !make_venv() {
        let _ = std::fs::remove_dir_all(venv);
        must("apt-get", &["update", "-q"], &[])?;
        must(
            "apt-get",
            &["install", "-y", "-q", "python3-venv"],
            &[("DEBIAN_FRONTEND", Path::new("noninteractive"))],
        )?;
        if !make_venv() {
            bail!("python3 -m venv {} failed", venv.display());
        }
    }
    let pip = venv.join("bin/pip");
    must(
        pip.to_str().context("a UTF-8 path")?,
        &["install", "-q", KUBERNETES_VALIDATE],
        &[],
    )?;
    Ok(Some(format!("{KUBERNETES_VALIDATE} in {}", venv.display())))
}

fn debian_packages(packages: &[(Probe, &'static str)]) -> anyhow::Result<Option<String>> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(probe, _)| match probe {
            Probe::Program(program) => {
                output("sh", &["-c", &format!("command -v {program}")]).is_none()
            }
            Probe::File(path) => !Path::new(path).exists(),
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(None);
    }
    if !is_root() {
        bail!("missing Debian packages {missing:?}, and installing them needs root");
    }
    must("apt-get", &["update", "-q"], &[])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    // iperf3 asks debconf whether to start a daemon: never wait on a question.
    must(
        "apt-get",
        &args,
        &[("DEBIAN_FRONTEND", Path::new("noninteractive"))],
    )?;
    Ok(Some(format!("installed {}", missing.join(" "))))
}
