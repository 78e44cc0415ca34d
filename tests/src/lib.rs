//! The lab: everything the integration tests and the demo need to run the breaker
//! against real TCP servers on a real kernel, isolated from the host.
//!
//! - [`netns`]: network namespaces, entered per thread.
//! - [`lab`]: a client namespace and an upstream namespace joined by veth, a cgroup
//!   for the clients, the daemon process, blackholing and metrics scraping.
//! - [`server`]: a small TCP/HTTP server that answers with its name.
//! - [`slow_upstream`]: a TUN answerer whose SYN-ACKs come late (slow connects).
//! - [`client`]: the connect client (`breaker-lab connect`), one JSON line per attempt.
//! - [`metrics`]: reading the Prometheus text format.
pub mod bench;
pub mod client;
pub mod demo;
pub mod icmp_router;
pub mod lab;
pub mod metrics;
pub mod netns;
pub mod packets;
pub mod privileges;
pub mod server;
pub mod slow_upstream;
pub mod stats;
pub mod testing;

/// Runs a command, failing with its stderr if it does not succeed.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
