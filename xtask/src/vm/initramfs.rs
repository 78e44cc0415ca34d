//! The guest's initramfs: busybox for the init script, `ip`, `setpriv`, `bpftool`
//! and `promtool` from the host, the test binaries, `breaker` and `breaker-lab`
//! with the shared libraries they load (as `ldd` finds them), and the kernel's lab
//! modules.
//!
//! Our binaries keep their host paths inside the guest: the tests find `breaker-lab`
//! by the absolute path cargo compiled into them, and `breaker` next to themselves.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use super::{cpio::Archive, kernels::Image};

const INIT: &str = include_str!("init.sh");

/// What `breaker.mode=refused` runs: a valid config, so only the kernel is refused.
const REFUSED_CONFIG: &str = "[[upstream]]\nname = \"api\"\nendpoints = [\"10.77.0.2:81\"]\n";

/// Busybox applets init.sh uses; `ip` is iproute2's, which the lab needs in full.
const APPLETS: &[&str] = &[
    "sh", "mount", "mkdir", "cat", "grep", "insmod", "uname", "poweroff", "reboot", "sleep",
    "chmod", "seq",
];

/// Host programs the lab runs, and where they go in the guest. config_cli looks for
/// setpriv at this very path.
const HOST_PROGRAMS: &[(&str, &str)] = &[
    ("ip", "/usr/bin/ip"),
    ("setpriv", "/usr/bin/setpriv"),
    // The uninstall test asks the kernel what is attached.
    ("bpftool", "/usr/sbin/bpftool"),
];

/// Our binaries, as cargo built them.
pub struct Binaries {
    pub breaker: PathBuf,
    pub lab: PathBuf,
    pub tests: Vec<PathBuf>,
}

/// Writes the initramfs for `image` to `out`; debug info is stripped from copies
/// kept under `scratch` (it is most of a debug binary's size, and the guest holds
/// the whole archive in memory).
pub fn build(bins: &Binaries, image: &Image, scratch: &Path, out: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut a = Archive::new(std::io::BufWriter::new(file));
    for dir in [
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/run",
        "/root",
        "/etc",
        "/usr/sbin",
        "/sbin",
    ] {
        a.dir(dir)?;
    }
    // The kernel opens it for init's stdin, stdout and stderr before anything is mounted.
    a.char_device("/dev/console", 0o600, (5, 1))?;
    a.symlink("/var/run", "../run")?;
    a.file("/init", 0o755, INIT.as_bytes())?;
    a.file(
        "/etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    )?;
    a.file("/etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;

    let busybox = which("busybox")?;
    a.copy("/bin/busybox", 0o755, &busybox)?;
    for applet in APPLETS {
        a.symlink(&format!("/bin/{applet}"), "busybox")?;
    }
    let mut libs = BTreeSet::new();
    libs.extend(shared_libraries(&busybox)?);
    for (program, guest_path) in HOST_PROGRAMS {
        let host_path = which(program)?;
        a.copy(guest_path, 0o755, &host_path)?;
        libs.extend(shared_libraries(&host_path)?);
    }
    // The metrics test's promtool, where setup unpacked it (found on PATH in the guest).
    let promtool = crate::setup::promtool_path();
    a.copy("/usr/bin/promtool", 0o755, &promtool)
        .with_context(|| format!("{} (cargo xtask setup unpacks it)", promtool.display()))?;
    libs.extend(shared_libraries(&promtool)?);

    std::fs::create_dir_all(scratch)?;
    let ours = [&bins.breaker, &bins.lab].into_iter().chain(&bins.tests);
    for bin in ours {
        let guest_path = bin
            .to_str()
            .with_context(|| format!("{} is not UTF-8", bin.display()))?;
        let stripped = scratch.join(bin.file_name().context("a binary without a name")?);
        strip_debug(bin, &stripped)?;
        a.copy(guest_path, 0o755, &stripped)?;
        libs.extend(shared_libraries(bin)?);
    }
    for lib in &libs {
        let guest_path = lib
            .to_str()
            .with_context(|| format!("{} is not UTF-8", lib.display()))?;
        // Copied under the name the loader asks for, whatever symlink it is on the host.
        a.copy(guest_path, 0o755, lib)?;
    }

    for module in &image.modules {
        let name = module.file_name().context("a module without a name")?;
        a.copy(
            &format!("/lib/modules/breaker/{}", name.to_string_lossy()),
            0o644,
            module,
        )?;
    }

    let tests: String = bins
        .tests
        .iter()
        .map(|t| format!("{}\n", t.display()))
        .collect();
    a.file("/etc/breaker-vm/tests", 0o644, tests.as_bytes())?;
    a.file(
        "/etc/breaker-vm/env",
        0o644,
        format!("BREAKER_BIN='{}'\n", bins.breaker.display()).as_bytes(),
    )?;
    a.file(
        "/etc/breaker-vm/refused.toml",
        0o644,
        REFUSED_CONFIG.as_bytes(),
    )?;
    a.finish()?;
    Ok(())
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} is not on PATH (cargo xtask setup installs it)"))
}

/// The shared libraries `bin` loads, the dynamic loader included; none for a static binary.
fn shared_libraries(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed ({}): {stderr}", bin.display(), out.status);
    }
    parse_ldd(&stdout).with_context(|| format!("libraries of {}", bin.display()))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2
/// (0x...)`; the vDSO has no file and is left out.
fn parse_ldd(text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            bail!("a library is missing: {line}");
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

fn strip_debug(from: &Path, to: &Path) -> anyhow::Result<()> {
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(from)
        .arg(to)
        .status()
        .context("running objcopy")?;
    if !status.success() {
        bail!("objcopy --strip-debug {} failed ({status})", from.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_loader_and_libraries_not_the_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }
}
