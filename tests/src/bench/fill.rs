//! Fills the default policy's per-destination map, the way a busy host with many
//! failing destinations would: one refused connect to each of `count` distinct
//! destinations, from inside the lab cgroup.
//!
//! Only failures make entries (healthy destinations need none), so every
//! destination here answers RST: the upstream namespace owns 10.78.0.0/16 as local
//! addresses with nothing listening, and the client routes that /16 to it.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::lab::Lab;

const BASE: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 0);
const FIRST_PORT: u16 = 1000;
/// One connect per thread at a time; the machine has 2 cores.
const THREADS: u32 = 2;

#[derive(Clone, Copy, Debug, Default)]
pub struct Filled {
    pub attempted: u32,
    /// Connects that failed with ECONNREFUSED: each one a failure the breaker saw.
    pub refused: u32,
    pub secs: f64,
}

/// Destination `i`: the /16's 65 536 addresses, then the next port.
fn destination(i: u32) -> SocketAddr {
    let addr = Ipv4Addr::from(u32::from(BASE) + (i % 65_536));
    SocketAddr::new(addr.into(), FIRST_PORT + (i / 65_536) as u16)
}

fn refused(to: SocketAddr) -> bool {
    let Ok(socket) = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    ) else {
        return false;
    };
    // The RST comes back within microseconds; the timeout only guards against a
    // routing mistake turning this into a million hung connects.
    matches!(
        socket.connect_timeout(&to.into(), Duration::from_secs(1)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// The calling process, in the lab cgroup until dropped: the connects come from
/// threads of this process, which is much faster than a process per destination.
struct InCgroup {
    home: PathBuf,
}

impl InCgroup {
    fn enter(cgroup: &std::path::Path) -> anyhow::Result<InCgroup> {
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("no cgroup2 entry in /proc/self/cgroup")?;
        let home = breaker::cgroup::cgroup2_root()?.join(rel.trim().trim_start_matches('/'));
        std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("moving the benchmark into {}", cgroup.display()))?;
        Ok(InCgroup { home })
    }
}

impl Drop for InCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.home.join("cgroup.procs"),
            std::process::id().to_string(),
        );
    }
}

pub fn refused_destinations(lab: &Lab, count: u32) -> anyhow::Result<Filled> {
    // Idempotent: the scenario may fill more than once in the same lab.
    lab.upstream
        .ip(&["route", "replace", "local", "10.78.0.0/16", "dev", "lo"])?;
    lab.client.ip(&[
        "route",
        "replace",
        "10.78.0.0/16",
        "via",
        crate::lab::UPSTREAM_V4,
        "dev",
        "veth0",
    ])?;
    // Checked from outside the lab cgroup first, where no breaker sees it.
    let probe = destination(count.saturating_sub(1));
    anyhow::ensure!(
        lab.client.within(move || refused(probe))?,
        "{probe} does not answer with RST: the fill would not fail"
    );
    let started = Instant::now();
    let refused_n = AtomicU32::new(0);
    {
        let _inside = InCgroup::enter(&lab.cgroup)?;
        std::thread::scope(|scope| -> anyhow::Result<()> {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let refused_n = &refused_n;
                    scope.spawn(move || -> anyhow::Result<()> {
                        lab.client.enter_current_thread()?;
                        let mut n = 0;
                        for i in (t..count).step_by(THREADS as usize) {
                            n += u32::from(refused(destination(i)));
                        }
                        refused_n.fetch_add(n, Ordering::Relaxed);
                        Ok(())
                    })
                })
                .collect();
            for w in workers {
                w.join()
                    .map_err(|_| anyhow::anyhow!("fill thread panicked"))??;
            }
            Ok(())
        })?;
    }
    Ok(Filled {
        attempted: count,
        refused: refused_n.load(Ordering::Relaxed),
        secs: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_distinct_across_ports() {
        assert_eq!(destination(0), "10.78.0.0:1000".parse().unwrap());
        assert_eq!(destination(65_537), "10.78.0.1:1001".parse().unwrap());
        assert_eq!(destination(999_999), "10.78.66.63:1015".parse().unwrap());
    }
}
