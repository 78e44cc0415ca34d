//! The kernel's own BPF statistics (`kernel.bpf_stats_enabled`) and the daemon's
//! memory: map memory from /proc/PID/fdinfo, RSS from /proc/PID/status.
/// The names the daemon's programs carry in the kernel (see breaker-common's abi).
pub const BREAKER_PROGRAMS: [&str; 3] = ["brk_connect4", "brk_connect6", "brk_sock_ops"];
/// The empty programs `breaker calibrate` attaches.
pub const EMPTY_PROGRAMS: [&str; 2] = ["brk_nop_connect", "brk_nop_sockops"];

#[derive(Clone, Debug, Default)]
pub struct ProgCost {
    pub name: String,
    pub runs: u64,
    pub run_ns: u64,
}

impl ProgCost {
    pub fn ns_per_run(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.run_ns as f64 / self.runs as f64
        }
    }
}

/// Turns run-time accounting on for as long as the guard lives.
pub struct StatsEnabled;

impl StatsEnabled {
    pub fn on() -> anyhow::Result<StatsEnabled> {
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
        Ok(StatsEnabled)
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    }
}

/// Run counts and times of the newest loaded breaker programs.
pub fn breaker_programs() -> Vec<ProgCost> {
    programs(&BREAKER_PROGRAMS)
}

/// Run counts and times of the newest loaded programs with these names.
pub fn programs(names: &[&str]) -> Vec<ProgCost> {
    let mut newest: Vec<(u32, ProgCost)> = Vec::new();
    for info in aya::programs::loaded_programs().filter_map(Result::ok) {
        let Some(name) = info.name_as_str() else {
            continue;
        };
        if !names.contains(&name) {
            continue;
        }
        let cost = ProgCost {
            name: name.to_string(),
            runs: info.run_count(),
            run_ns: info.run_time().as_nanos() as u64,
        };
        match newest.iter_mut().find(|(_, c)| c.name == name) {
            Some((id, c)) if info.id() > *id => {
                *id = info.id();
                *c = cost;
            }
            Some(_) => {}
            None => newest.push((info.id(), cost)),
        }
    }
    newest.into_iter().map(|(_, c)| c).collect()
}

/// Bytes of map memory the process holds (sum of `memlock` over its map fds).
pub fn map_memory(pid: u32) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    fds.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|info| info.contains("map_type:"))
        .filter_map(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("memlock:")
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        })
        .sum()
}

/// Resident set size of the process, in bytes.
pub fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// User plus system CPU time of the process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which may hold spaces, so split after ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 11 and 12 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}
