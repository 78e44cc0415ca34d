//! Named network namespaces (`ip netns`), deleted on drop.
use std::{fs::File, path::PathBuf};

use nix::sched::{setns, CloneFlags};

pub struct Netns {
    pub name: String,
    /// Open for the namespace's lifetime, for `setns` in spawned children.
    file: File,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        // A namespace left by a crashed run of the same name would make `add` fail.
        let _ = crate::run("ip", &["netns", "del", name]);
        crate::run("ip", &["netns", "add", name])?;
        let file = File::open(PathBuf::from("/run/netns").join(name))?;
        let ns = Netns {
            name: name.to_string(),
            file,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        crate::run("ip", &full)
    }

    /// Moves the calling thread into the namespace. Sockets it creates from then on
    /// live there, whichever thread uses them later.
    pub fn enter_current_thread(&self) -> anyhow::Result<()> {
        let file = File::open(self.path())?;
        setns(&file, CloneFlags::CLONE_NEWNET)?;
        Ok(())
    }

    /// `program` to be started inside the namespace. Unlike `ip netns exec`, only the
    /// network namespace changes: the child sees the host's mounts (cgroup2 included).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        use std::os::{fd::AsRawFd, unix::process::CommandExt};
        let mut cmd = std::process::Command::new(program);
        let fd = self.file.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd stays open in the parent until exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs `f` on a fresh thread inside the namespace.
    /// A TUN device named `name` (IPv4 packets, no packet info) in the namespace,
    /// up, with `prefix` (a CIDR) routed into it: what a userspace router or
    /// upstream reads and answers.
    pub fn tun(&self, name: &'static str, prefix: &str) -> anyhow::Result<tun_tap::Iface> {
        use anyhow::Context;
        let iface = self
            .within(|| tun_tap::Iface::without_packet_info(name, tun_tap::Mode::Tun))?
            .context("creating the TUN device (needs /dev/net/tun)")?;
        self.ip(&["link", "set", iface.name(), "up"])?;
        self.ip(&["route", "replace", prefix, "dev", iface.name()])?;
        Ok(iface)
    }

    pub fn within<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = self.path();
        std::thread::spawn(move || -> anyhow::Result<T> {
            let file = File::open(path)?;
            setns(&file, CloneFlags::CLONE_NEWNET)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = crate::run("ip", &["netns", "del", &self.name]);
    }
}
