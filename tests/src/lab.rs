//! A lab for one test or the demo:
//!
//! ```text
//!  client netns (daemon, clients in the lab cgroup)       upstream netns (servers)
//!  veth0 10.77.0.1/24 fd77::1/64  <------ veth ------>    veth0 10.77.0.2, .3 fd77::2, ::3
//!  dark (veth, no ARP) 10.77.9.0/24, fd77:9::/64 and blackholed addresses
//!        ------ veth ------> void netns: no addresses, no forwarding: packets vanish
//! ```
//!
//! Nothing touches the host's own network: every address lives in the lab's namespaces.
//! Namespaces, cgroup and daemon are removed on drop, also when a test panics.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::{
    client::{parse_attempts, Attempt},
    metrics::Sample,
    netns::Netns,
    server::Server,
};

pub const UPSTREAM_V4: &str = "10.77.0.2";
/// Routed to the dark link: SYNs vanish, nothing answers.
pub const BLACKHOLE_V4: &str = "10.77.9.1";
/// Where the daemon serves metrics, inside the client namespace.
pub const METRICS: &str = "127.0.0.1:9464";
/// How long a daemon may take to serve metrics after it starts. Only a bound on
/// waiting for a broken one: a debug build with 2000 upstreams takes 8-12 s to
/// start under emulation (the kernel matrix in qemu), and more beside another test.
const DAEMON_READY_WITHIN: Duration = Duration::from_secs(60);

pub struct Lab {
    pub client: Netns,
    pub upstream: Netns,
    /// Where blackholed packets go: up, but owns no address and forwards nothing.
    pub void: Netns,
    pub cgroup: PathBuf,
    /// A sibling cgroup the breaker is never attached to: the A/B baseline.
    pub bare_cgroup: PathBuf,
    /// The daemon's pin folder (bpffs), removed with the lab.
    pub pins: PathBuf,
    work: PathBuf,
    breaker_bin: PathBuf,
    lab_bin: PathBuf,
    daemon: Option<Child>,
    servers: Vec<Server>,
    /// A "vm" behind the client namespace (see [`Lab::add_vm`]).
    pub vm: Option<Netns>,
}

/// The vm's address, behind the client namespace's `vm0`.
pub const VM_V4: &str = "10.77.5.2";
/// The client namespace's side of the vm's link: the interface the packet path
/// watches.
pub const VM_LINK: &str = "vm0";

/// The `breaker` binary: $BREAKER_BIN, or next to (or one up from) the running executable.
pub fn find_breaker_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("BREAKER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no folder")?;
    for candidate in [dir.join("breaker"), dir.join("../breaker")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("the breaker binary is not built next to {} (cargo build -p breaker-userspace, or set BREAKER_BIN)", exe.display())
}

impl Lab {
    /// Builds the lab; `tag` keeps names apart between tests running at once.
    pub fn new(tag: &str, lab_bin: &Path) -> anyhow::Result<Lab> {
        let id = format!("{tag}-{}", std::process::id());
        let client = Netns::create(&format!("brk-{id}-c"))?;
        let upstream = Netns::create(&format!("brk-{id}-u"))?;
        let void = Netns::create(&format!("brk-{id}-v"))?;
        let cgroup2 = breaker::cgroup::cgroup2_root()?;
        let cgroup = cgroup2.join(format!("breaker-lab-{id}"));
        let bare_cgroup = cgroup2.join(format!("breaker-lab-{id}-bare"));
        let work = std::env::temp_dir().join(format!("breaker-lab-{id}"));
        let pins = PathBuf::from(format!("/sys/fs/bpf/breaker-lab-{id}"));
        let mut lab = Lab {
            client,
            upstream,
            void,
            cgroup,
            bare_cgroup,
            pins,
            work,
            breaker_bin: find_breaker_bin()?,
            lab_bin: lab_bin.to_path_buf(),
            daemon: None,
            servers: Vec::new(),
            vm: None,
        };
        lab.wire().context("building the lab network")?;
        lab.wait_until_reachable()
            .context("waiting for the lab network")?;
        for cgroup in [&lab.cgroup, &lab.bare_cgroup] {
            std::fs::create_dir_all(cgroup)
                .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
        }
        std::fs::create_dir_all(&lab.work)?;
        Ok(lab)
    }

    fn wire(&mut self) -> anyhow::Result<()> {
        let (c, u) = (&self.client, &self.upstream);
        c.ip(&[
            "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", &u.name,
        ])?;
        c.ip(&["addr", "add", "10.77.0.1/24", "dev", "veth0"])?;
        c.ip(&["addr", "add", "fd77::1/64", "dev", "veth0", "nodad"])?;
        c.ip(&["link", "set", "veth0", "up"])?;
        for a in ["10.77.0.2/24", "10.77.0.3/24"] {
            u.ip(&["addr", "add", a, "dev", "veth0"])?;
        }
        for a in ["fd77::2/64", "fd77::3/64"] {
            u.ip(&["addr", "add", a, "dev", "veth0", "nodad"])?;
        }
        u.ip(&["link", "set", "veth0", "up"])?;
        // No ARP/ND on the dark link: SYNs leave at once and are silently dropped
        // in the void (not local there, forwarding off), so nothing ever answers.
        c.ip(&[
            "link",
            "add",
            "dark",
            "type",
            "veth",
            "peer",
            "name",
            "dark",
            "netns",
            &self.void.name,
        ])?;
        c.ip(&["link", "set", "dark", "arp", "off", "up"])?;
        self.void.ip(&["link", "set", "dark", "arp", "off", "up"])?;
        c.ip(&["route", "add", "10.77.9.0/24", "dev", "dark"])?;
        // Room for a million distinct dark destinations (default-policy benchmarks).
        c.ip(&["route", "add", "10.78.0.0/16", "dev", "dark"])?;
        c.ip(&["-6", "route", "add", "fd77:9::/64", "dev", "dark"])?;
        Ok(())
    }

    /// New links take a moment (carrier, IPv6 address setup) before the first SYN gets
    /// through; until then a test's first connect would look like a timeout. Waits
    /// until a closed port on the upstream answers RST, for both families.
    fn wait_until_reachable(&self) -> anyhow::Result<()> {
        let ready = self.client.within(|| {
            let deadline = Instant::now() + crate::testing::patience(Duration::from_secs(10));
            ["10.77.0.2:9", "[fd77::2]:9"].iter().all(|target| {
                let target: SocketAddr = target.parse().expect("static address");
                while Instant::now() < deadline {
                    match TcpStream::connect_timeout(&target, Duration::from_millis(100)) {
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
                false
            })
        })?;
        if !ready {
            bail!("the upstream namespace did not answer within 10 s");
        }
        Ok(())
    }

    /// Adds a "vm": a namespace whose traffic is routed through the client
    /// namespace (forwarding on) to the upstream one, as a VM's through its host.
    /// No cgroup hook sees its sockets (they are not in the lab cgroup): only the
    /// packet path on the client namespace's `vm0` does.
    ///
    /// ```text
    ///  vm netns 10.77.5.2/24 --- veth ---> client netns vm0 10.77.5.1/24 --> veth0 --> upstream
    /// ```
    pub fn add_vm(&mut self) -> anyhow::Result<()> {
        let name = format!("{}-m", self.client.name.trim_end_matches("-c"));
        let vm = Netns::create(&name)?;
        let c = &self.client;
        c.ip(&[
            "link", "add", VM_LINK, "type", "veth", "peer", "name", "eth0", "netns", &vm.name,
        ])?;
        c.ip(&["addr", "add", "10.77.5.1/24", "dev", VM_LINK])?;
        c.ip(&["link", "set", VM_LINK, "up"])?;
        vm.ip(&["addr", "add", "10.77.5.2/24", "dev", "eth0"])?;
        vm.ip(&["link", "set", "eth0", "up"])?;
        vm.ip(&["link", "set", "lo", "up"])?;
        vm.ip(&["route", "add", "default", "via", "10.77.5.1"])?;
        self.upstream
            .ip(&["route", "add", "10.77.5.0/24", "via", "10.77.0.1"])?;
        self.vm = Some(vm);
        self.client_sysctl("net/ipv4/ip_forward", "1")
            .context("turning forwarding on in the client namespace")?;
        Ok(())
    }

    /// `breaker-lab connect ARGS` in the vm namespace (no cgroup hook sees it),
    /// waited for and parsed.
    pub fn vm_client(&self, args: &[&str]) -> anyhow::Result<Vec<Attempt>> {
        let vm = self.vm.as_ref().context("no vm: Lab::add_vm first")?;
        let out = vm
            .command(&self.lab_bin)
            .arg("connect")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .context("running the lab client in the vm")?;
        if !out.status.success() {
            bail!(
                "vm client failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse_attempts(&String::from_utf8_lossy(&out.stdout))
    }

    /// Starts a server in the upstream namespace.
    pub fn serve(&mut self, addr: &str, name: &str) -> anyhow::Result<&Server> {
        let addr: SocketAddr = addr.parse()?;
        let name2 = name.to_string();
        let server = self
            .upstream
            .within(move || Server::start(addr, &name2))??;
        self.servers.push(server);
        Ok(self.servers.last().expect("just pushed"))
    }

    /// Starts an accept-and-drop listener in the upstream namespace.
    pub fn sink(&mut self, addr: &str) -> anyhow::Result<()> {
        let addr: SocketAddr = addr.parse()?;
        let server = self.upstream.within(move || Server::sink(addr))??;
        self.servers.push(server);
        Ok(())
    }

    /// The daemon's pid, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// The daemon's exit status once it has exited (it stays known); `None` while it runs.
    pub fn daemon_exit(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match self.daemon.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("no daemon was started"),
        }
    }

    /// Sets a per-namespace sysctl (e.g. `net/ipv4/tcp_syn_retries`) in the client namespace.
    pub fn client_sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let (path, value) = (format!("/proc/sys/{key}"), value.to_string());
        self.client.within(move || std::fs::write(path, value))??;
        Ok(())
    }

    /// As [`Lab::client_sysctl`], in the vm namespace ([`Lab::add_vm`]).
    pub fn vm_sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let vm = self.vm.as_ref().context("no vm: Lab::add_vm first")?;
        let (path, value) = (format!("/proc/sys/{key}"), value.to_string());
        vm.within(move || std::fs::write(path, value))??;
        Ok(())
    }

    pub fn server(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// From now on, SYNs from the client namespace to `ip` vanish.
    pub fn blackhole(&self, ip: &str) -> anyhow::Result<()> {
        let prefix = if ip.contains(':') { "/128" } else { "/32" };
        self.client
            .ip(&["route", "replace", &format!("{ip}{prefix}"), "dev", "dark"])?;
        Ok(())
    }

    /// Undoes [`Lab::blackhole`].
    pub fn restore(&self, ip: &str) -> anyhow::Result<()> {
        let prefix = if ip.contains(':') { "/128" } else { "/32" };
        self.client
            .ip(&["route", "del", &format!("{ip}{prefix}"), "dev", "dark"])?;
        Ok(())
    }

    /// Writes `body` as a config attached to the lab cgroup, with metrics on [`METRICS`].
    pub fn write_config(&self, body: &str) -> anyhow::Result<PathBuf> {
        let path = self.work.join("breaker.toml");
        let pin_path = format!(
            "pin_path = {:?}\ncontrol_socket = {:?}\n",
            self.pins.display().to_string(),
            self.control_socket().display().to_string()
        );
        let mut text = format!("cgroup = {:?}\n", self.cgroup.display().to_string());
        if body.contains("[daemon]\n") {
            text.push_str(&body.replacen("[daemon]\n", &format!("[daemon]\n{pin_path}"), 1));
        } else {
            text.push_str(&format!(
                "[daemon]\nmetrics_listen = {METRICS:?}\n{pin_path}"
            ));
            text.push_str(body);
        }
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// The lab's scratch folder (removed with the lab).
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// Writes a file in the lab's scratch folder.
    pub fn work_file(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.work.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Starts the daemon with `config` (see [`Lab::write_config`]) and waits until it serves metrics.
    pub fn start_daemon(&mut self, config: &str) -> anyhow::Result<()> {
        let path = self.write_config(config)?;
        let child = self.spawn_breaker_run(&path, &self.daemon_log_path())?;
        self.daemon = Some(child);
        let deadline = Instant::now() + crate::testing::patience(DAEMON_READY_WITHIN);
        while Instant::now() < deadline {
            if let Some(child) = self.daemon.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "breaker daemon exited with {status}:\n{}",
                        self.daemon_log()
                    );
                }
            }
            if self.metrics_text().is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "breaker daemon did not serve metrics within {} s:\n{}",
            DAEMON_READY_WITHIN.as_secs(),
            self.daemon_log()
        )
    }

    /// `breaker run --config CONFIG` in the client namespace, logging to `log`.
    fn spawn_breaker_run(&self, config: &Path, log: &Path) -> anyhow::Result<Child> {
        self.client
            .command(&self.breaker_bin)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                // breaker::breaker is the kernel programs' aya-log output.
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,breaker::breaker=debug".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("starting a breaker daemon")
    }

    /// `breaker calibrate`: empty programs on the lab cgroup while the guard lives.
    pub fn start_calibration(&self) -> anyhow::Result<Calibration> {
        let mut child = Command::new(&self.breaker_bin)
            .arg("calibrate")
            .arg("--cgroup")
            .arg(&self.cgroup)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting breaker calibrate")?;
        // It says so on stderr once attached.
        let stderr = child.stderr.take().context("calibrate stderr")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stderr), &mut line)?;
        if !line.contains("attached") {
            let _ = child.kill();
            bail!("breaker calibrate failed: {line}");
        }
        Ok(Calibration(child))
    }

    pub fn daemon_log_path(&self) -> PathBuf {
        self.work.join("daemon.log")
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.daemon_log_path()).unwrap_or_default()
    }

    /// Stops the daemon with SIGTERM and removes its pins, so nothing of it stays
    /// attached (as before a test's next daemon); returns its exit status.
    pub fn stop_daemon(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let status = self.signal_daemon(nix::sys::signal::Signal::SIGTERM)?;
        let _ = breaker::kernel::PinFolder::new(&self.pins).uninstall();
        Ok(status)
    }

    /// Runs `breaker ARGS` in the client namespace until it exits (killed after
    /// `within`, which then is an error): for a command expected to end, such as a
    /// daemon that must refuse to start.
    pub fn breaker_output(
        &self,
        args: &[&str],
        within: Duration,
    ) -> anyhow::Result<std::process::Output> {
        let mut child = self
            .client
            .command(&self.breaker_bin)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting breaker")?;
        let deadline = Instant::now() + crate::testing::patience(within);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(child.wait_with_output()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let out = child.wait_with_output()?;
        bail!(
            "breaker {args:?} was still running after {within:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The lab daemon's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.work.join("control.sock")
    }

    /// `breaker ARGS --socket SOCKET`: a CLI verb for the lab's daemon.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        self.cli_as(args, None)
    }

    /// `breaker ARGS --socket SOCKET` started, not waited for (`events --follow`).
    pub fn cli_spawn(&self, args: &[&str]) -> anyhow::Result<Child> {
        Command::new(&self.breaker_bin)
            .args(args)
            .arg("--socket")
            .arg(self.control_socket())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the breaker CLI")
    }

    /// [`Lab::cli`] as user `uid` (root when `None`).
    pub fn cli_as(&self, args: &[&str], uid: Option<u32>) -> anyhow::Result<std::process::Output> {
        let mut command = Command::new(&self.breaker_bin);
        command
            .args(args)
            .arg("--socket")
            .arg(self.control_socket());
        if let Some(uid) = uid {
            command.uid(uid);
        }
        command.output().context("running the breaker CLI")
    }

    /// The breaker programs attached to the lab cgroup, as bpftool shows them: (id,
    /// name), sorted by name.
    pub fn attached_programs(&self) -> anyhow::Result<Vec<(u32, String)>> {
        let out = Command::new("bpftool")
            .args(["cgroup", "show"])
            .arg(&self.cgroup)
            .output()
            .context("running bpftool (cargo xtask setup installs it)")?;
        let mut found: Vec<(u32, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let id = words.next()?.parse().ok()?;
                let name = words.last()?;
                name.starts_with("brk_").then(|| (id, name.to_string()))
            })
            .collect();
        found.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(found)
    }

    /// `breaker uninstall` on the lab's pins, through the real binary.
    pub fn uninstall(&self) -> anyhow::Result<std::process::Output> {
        Command::new(&self.breaker_bin)
            .arg("uninstall")
            .arg("--pin-path")
            .arg(&self.pins)
            .output()
            .context("running breaker uninstall")
    }

    /// Sends the daemon `signal` and waits for it to exit (SIGKILL after 5 s); its
    /// pins, and so its programs, stay. Returns its exit status.
    pub fn signal_daemon(
        &mut self,
        signal: nix::sys::signal::Signal,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let Some(mut child) = self.daemon.take() else {
            return Ok(None);
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = Instant::now() + crate::testing::patience(Duration::from_secs(5));
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        Ok(Some(child.wait()?))
    }

    /// The daemon's /metrics, fetched from inside the client namespace.
    pub fn metrics_text(&self) -> anyhow::Result<String> {
        self.metrics_text_at(METRICS)
    }

    /// The whole HTTP response (status line, headers, body) of the lab daemon's
    /// listener to a GET of `path`.
    pub fn http_get(&self, path: &str) -> anyhow::Result<String> {
        let request = format!("GET {path} HTTP/1.0\r\nHost: breaker\r\n\r\n");
        self.client.within(move || -> anyhow::Result<String> {
            let mut s = TcpStream::connect_timeout(&METRICS.parse()?, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(request.as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })?
    }

    /// The metrics text of a daemon listening on `addr` in the client namespace.
    pub fn metrics_text_at(&self, addr: &str) -> anyhow::Result<String> {
        let addr: SocketAddr = addr.parse()?;
        self.client.within(move || -> anyhow::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: breaker\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            let (_, body) = out.split_once("\r\n\r\n").context("no HTTP body")?;
            Ok(body.to_string())
        })?
    }

    pub fn metrics(&self) -> anyhow::Result<Vec<Sample>> {
        Ok(crate::metrics::parse(&self.metrics_text()?))
    }

    /// One metric value (see [`crate::metrics::value`]); an error when the series is missing.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        Ok(crate::metrics::value(&self.metrics()?, name, labels)?)
    }

    /// Waits until `name{labels}` reaches `want` or `timeout` passes; returns the last value.
    /// A series that appears on its first event (such as a transition) may be missing
    /// while waiting; still missing at the deadline is an error.
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        want: f64,
        timeout: Duration,
    ) -> anyhow::Result<f64> {
        let deadline = Instant::now() + crate::testing::patience(timeout);
        loop {
            let v = crate::metrics::value(&self.metrics()?, name, labels);
            match v {
                Ok(v) if v == want => return Ok(v),
                _ if Instant::now() >= deadline => return Ok(v?),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Runs `breaker-lab connect ARGS` as an unmodified client: in the client namespace
    /// and inside the lab cgroup, where the breaker is attached.
    pub fn client(&self, args: &[&str]) -> anyhow::Result<Vec<Attempt>> {
        self.run_client(&self.cgroup, args)
    }

    /// `breaker-lab connect ARGS` in the vm namespace, not yet started, its
    /// attempts on stdout (for a vm client that runs in the background).
    pub fn vm_client_command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let vm = self.vm.as_ref().context("no vm: Lab::add_vm first")?;
        let mut cmd = vm.command(&self.lab_bin);
        cmd.arg("connect")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        Ok(cmd)
    }

    /// The client command, not yet started (for clients that run in the background).
    pub fn client_command(&self, args: &[&str]) -> Command {
        let mut full = vec!["connect"];
        full.extend_from_slice(args);
        self.lab_command(&full)
    }

    /// `breaker-lab ARGS` in the client namespace and the lab cgroup, not yet started.
    pub fn lab_command(&self, args: &[&str]) -> Command {
        self.lab_command_in(&self.cgroup, args)
    }

    /// The client, as [`Lab::client`], but in the bare cgroup: no breaker sees it.
    pub fn client_bare(&self, args: &[&str]) -> anyhow::Result<Vec<Attempt>> {
        self.run_client(&self.bare_cgroup, args)
    }

    /// `breaker-lab connect ARGS` in `cgroup`, waited for and parsed.
    pub fn run_client(&self, cgroup: &Path, args: &[&str]) -> anyhow::Result<Vec<Attempt>> {
        let mut full = vec!["connect"];
        full.extend_from_slice(args);
        let out = self
            .lab_command_in(cgroup, &full)
            .output()
            .context("running the lab client")?;
        if !out.status.success() {
            bail!(
                "lab client failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse_attempts(&String::from_utf8_lossy(&out.stdout))
    }

    /// `breaker-lab ARGS` in the client namespace and in `cgroup`, not yet started.
    pub fn lab_command_in(&self, cgroup: &Path, args: &[&str]) -> Command {
        let mut cmd = self.client.command(&self.lab_bin);
        cmd.args(args);
        let procs = cgroup.join("cgroup.procs");
        let procs =
            std::ffi::CString::new(procs.as_os_str().as_encoded_bytes()).expect("path has no NUL");
        // SAFETY: between fork and exec only async-signal-safe calls (open, write, close).
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process (this child) into the cgroup.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.stop_daemon();
        self.servers.clear();
        // The cgroup can only go once its processes are gone; clients are waited for.
        for cgroup in [&self.cgroup, &self.bare_cgroup] {
            for _ in 0..50 {
                if std::fs::remove_dir(cgroup).is_ok() || !cgroup.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Another breaker daemon beside the lab's own (a second instance on overlapping
/// cgroups), stopped when dropped.
pub struct OtherDaemon {
    child: Child,
    pub log: PathBuf,
    pub metrics: String,
    pins: PathBuf,
}

impl Lab {
    /// Starts another daemon in the client namespace, attached to `cgroup`, with its
    /// metrics on `metrics`; waits until it serves them.
    pub fn start_other_daemon(
        &self,
        name: &str,
        cgroup: &Path,
        metrics: &str,
        body: &str,
    ) -> anyhow::Result<OtherDaemon> {
        let path = self.work.join(format!("{name}.toml"));
        let pins = PathBuf::from(format!("{}-{name}", self.pins.display()));
        std::fs::write(
            &path,
            format!(
                "cgroup = {:?}\n[daemon]\nmetrics_listen = {metrics:?}\npin_path = {:?}\ncontrol_socket = {:?}\n{body}",
                cgroup.display().to_string(),
                pins.display().to_string(),
                self.work.join(format!("{name}.sock")).display().to_string()
            ),
        )?;
        let log = self.work.join(format!("{name}.log"));
        let child = self.spawn_breaker_run(&path, &log)?;
        let other = OtherDaemon {
            child,
            log,
            metrics: metrics.to_string(),
            pins,
        };
        let deadline = Instant::now() + crate::testing::patience(DAEMON_READY_WITHIN);
        while Instant::now() < deadline {
            if self.metrics_text_at(metrics).is_ok() {
                return Ok(other);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the other daemon did not serve metrics within {} s:\n{}",
            DAEMON_READY_WITHIN.as_secs(),
            std::fs::read_to_string(&other.log).unwrap_or_default()
        )
    }

    /// One metric of another daemon (see [`crate::metrics::value`]).
    pub fn other_metric(
        &self,
        other: &OtherDaemon,
        name: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<f64> {
        let samples = crate::metrics::parse(&self.metrics_text_at(&other.metrics)?);
        Ok(crate::metrics::value(&samples, name, labels)?)
    }
}

impl Drop for OtherDaemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        let _ = breaker::kernel::PinFolder::new(&self.pins).uninstall();
    }
}

/// The calibration programs, detached when dropped.
pub struct Calibration(Child);

impl Drop for Calibration {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}
