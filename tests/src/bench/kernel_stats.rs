//! The kernel's own BPF statistics (`kernel.bpf_stats_enabled`) and the daemon's
//! memory: map memory from /proc/PID/fdinfo, RSS from /proc/PID/status.
//!
//! Programs and maps are those a given process holds (its fds, from
//! /proc/PID/fdinfo), so that another daemon or test on the same machine, loading
//! programs of the same names, never leaks into the figures.
use std::collections::BTreeSet;

use breaker_common::abi::{map_names, program_names, BreakerCell, DestKey};

/// The cgroup/sock_release program, reported on its own line.
pub const SOCK_RELEASE: &str = program_names::SOCK_RELEASE;

/// The names the daemon's programs carry in the kernel.
pub const BREAKER_PROGRAMS: [&str; 4] = [
    program_names::CONNECT4,
    program_names::CONNECT6,
    program_names::SOCK_OPS,
    SOCK_RELEASE,
];
/// The empty programs `breaker calibrate` attaches.
pub const EMPTY_PROGRAMS: [&str; 3] = [
    program_names::NOP_CONNECT4,
    program_names::NOP_SOCK_OPS,
    program_names::NOP_SOCK_RELEASE,
];

#[derive(Clone, Debug, Default)]
pub struct ProgCost {
    pub name: String,
    /// The kernel's program type (`bpf_prog_type`): empty programs are matched by it.
    pub prog_type: u32,
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

/// Turns run-time accounting on (`kernel.bpf_stats_enabled`, which the daemon
/// reads) for as long as the guard lives, then puts back what was there.
pub struct StatsEnabled(String);

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl StatsEnabled {
    pub fn on() -> anyhow::Result<StatsEnabled> {
        let before = std::fs::read_to_string(STATS_SYSCTL)?;
        std::fs::write(STATS_SYSCTL, "1")?;
        Ok(StatsEnabled(before.trim().to_string()))
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS_SYSCTL, &self.0);
    }
}

/// Every fdinfo of `pid` that carries `key:` (e.g. `prog_id`, `map_id`): its values.
fn held_ids(pid: u32, key: &str) -> BTreeSet<u32> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return BTreeSet::new();
    };
    let prefix = format!("{key}:");
    fds.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix(prefix.as_str())
                    .and_then(|v| v.trim().parse::<u32>().ok())
            })
        })
        .collect()
}

/// Run counts and times of the programs with these names that `pid` holds (program
/// or link fds). Counters are cumulative: take differences around a measured run.
pub fn programs_of(pid: u32, names: &[&str]) -> anyhow::Result<Vec<ProgCost>> {
    let ids = held_ids(pid, "prog_id");
    anyhow::ensure!(!ids.is_empty(), "process {pid} holds no BPF programs");
    let mut found: Vec<ProgCost> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|info| ids.contains(&info.id()))
        .filter_map(|info| {
            let name = info.name_as_str()?;
            names.contains(&name).then(|| ProgCost {
                name: name.to_string(),
                prog_type: info.program_type() as u32,
                runs: info.run_count(),
                run_ns: info.run_time().as_nanos() as u64,
            })
        })
        .collect();
    // In the order of `names`, so tables list programs the same way every run.
    found.sort_by_key(|p| names.iter().position(|n| *n == p.name));
    anyhow::ensure!(
        !found.is_empty(),
        "process {pid} holds none of the programs {names:?}"
    );
    Ok(found)
}

/// `after` minus `before`, program by program: what one measured run cost.
pub fn delta(before: &[ProgCost], after: &[ProgCost]) -> Vec<ProgCost> {
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.name == a.name);
            ProgCost {
                runs: a.runs - b.map_or(0, |b| b.runs.min(a.runs)),
                run_ns: a.run_ns - b.map_or(0, |b| b.run_ns.min(a.run_ns)),
                ..a.clone()
            }
        })
        .collect()
}

/// Entries the default policy's per-destination LRU map of `pid` holds right now,
/// counted by walking its keys.
pub fn default_states_entries(pid: u32) -> anyhow::Result<u64> {
    let ids = held_ids(pid, "map_id");
    let id = ids
        .iter()
        .copied()
        .find(|id| {
            aya::maps::MapInfo::from_id(*id)
                .is_ok_and(|m| m.name_as_str() == Some(map_names::DEFAULT_STATES))
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "process {pid} holds no map named {}",
                map_names::DEFAULT_STATES
            )
        })?;
    let map = aya::maps::Map::from_map_data(aya::maps::MapData::from_id(id)?)?;
    let states = aya::maps::HashMap::<_, DestKey, BreakerCell>::try_from(map)?;
    let mut n = 0;
    for key in states.keys() {
        key?;
        n += 1;
    }
    Ok(n)
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
