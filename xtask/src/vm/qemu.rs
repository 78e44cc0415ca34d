//! Booting a kernel and initramfs in qemu, reading the serial console line by line,
//! and killing a guest that outlives its time.
use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context;

/// `line` without its line ending and the firmware's terminal escapes (screen
/// clears, line-wrap switches), which would garble a log.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            // ESC [ parameters, then one final byte in @..~; or ESC and one byte.
            '\x1b' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// KVM when the CPU has hardware virtualisation and /dev/kvm opens; otherwise TCG,
/// with the reason. A /dev/kvm without vmx/svm (a paravirtual module, as on cloud
/// VMs) hangs stock kernels, so it is not used.
pub fn pick_accel() -> (Accel, String) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !hw {
        return (
            Accel::Tcg,
            "the CPU flags show no vmx/svm: emulating (TCG)".into(),
        );
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => (Accel::Kvm, "vmx/svm and /dev/kvm: KVM".into()),
        Err(e) => (Accel::Tcg, format!("/dev/kvm: {e}: emulating (TCG)")),
    }
}

pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    pub accel: Accel,
    /// The whole run, boot to power-off.
    pub timeout: Duration,
    /// A line the guest prints once its init runs, and how long to wait for it: a
    /// guest that has not printed it by then did not come up.
    pub came_up: (&'a str, Duration),
}

pub enum Ended {
    /// qemu exited by itself (the guest powered off, or its kernel panicked).
    Exited { qemu_stderr: String },
    /// Killed at the timeout.
    TimedOut,
    /// Killed: the guest did not reach init in time.
    NoStart,
}

/// Boots and hands each console line (without its line ending) to `on_line`.
pub fn boot(b: &Boot, mut on_line: impl FnMut(&str)) -> anyhow::Result<Ended> {
    let mut cmd = Command::new("qemu-system-x86_64");
    match b.accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        // qemu64: the CPU model the cloud kernels are known to boot on under TCG.
        // A thread per vCPU (one thread for both is too slow for the suite). The
        // spurious int3 this once caused, a static key live-patched while the
        // other vCPU ran it, is kept away by init.sh holding the keys on.
        Accel::Tcg => cmd.args(["-accel", "tcg,thread=multi", "-cpu", "qemu64"]),
    };
    cmd.args([
        "-m",
        "2048",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
    ])
    .arg("-kernel")
    .arg(b.vmlinuz)
    .arg("-initrd")
    .arg(b.initrd)
    .arg("-append")
    .arg(b.cmdline)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let mut stderr = child.stderr.take().context("qemu stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        // Bytes, not str lines: a console can carry anything.
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = printable(&String::from_utf8_lossy(&buf));
            if tx.send(line).is_err() {
                break;
            }
            buf.clear();
        }
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let start = Instant::now();
    let (marker, came_up_within) = b.came_up;
    let mut up = false;
    let ended = loop {
        let limit = if up {
            b.timeout
        } else {
            came_up_within.min(b.timeout)
        };
        let Some(left) = limit.checked_sub(start.elapsed()) else {
            let _ = child.kill();
            break if up { Ended::TimedOut } else { Ended::NoStart };
        };
        match rx.recv_timeout(left) {
            Ok(line) => {
                up |= line.contains(marker);
                on_line(&line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Ended::Exited {
                    qemu_stderr: String::new(),
                }
            }
        }
    };
    child.wait().context("waiting for qemu")?;
    let qemu_stderr = stderr_reader.join().unwrap_or_default();
    Ok(match ended {
        Ended::Exited { .. } => Ended::Exited { qemu_stderr },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_lose_escapes_and_line_endings() {
        assert_eq!(
            printable("\x1bc\x1b[?7l\x1b[2JSeaBIOS (version 1.16)\r\n"),
            "SeaBIOS (version 1.16)"
        );
        assert_eq!(printable("test a ... ok\n"), "test a ... ok");
        assert_eq!(printable("a\tb"), "a\tb");
    }
}
