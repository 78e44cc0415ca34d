//! `breaker-lab`: the lab's client, server and demo.
use std::{io::Write, net::SocketAddr, time::Duration};

use breaker_lab::client::{self, ClientOptions};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "breaker-lab",
    about = "Lab tools for breaker: an unmodified TCP client, a server, the demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Connect to an address repeatedly, printing one JSON line per attempt.
    Connect {
        /// Destination, e.g. 10.77.0.2:8080 or [fd77::2]:8080.
        #[arg(long)]
        to: SocketAddr,
        /// Attempts per client.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Clients running at once.
        #[arg(long, default_value_t = 1)]
        concurrency: u32,
        /// Pause after each attempt, in milliseconds.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        /// Connect (and HTTP) timeout, in milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// Send an HTTP GET and report the response body.
        #[arg(long)]
        http: bool,
        /// Use UDP (connect and send one datagram) instead of TCP.
        #[arg(long, conflicts_with = "http")]
        udp: bool,
    },
    /// Run the self-contained demo (needs root).
    Demo,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Connect {
            to,
            count,
            concurrency,
            interval_ms,
            timeout_ms,
            http,
            udp,
        } => {
            if concurrency == 0 || timeout_ms == 0 {
                anyhow::bail!("--concurrency and --timeout-ms must be at least 1");
            }
            let opts = ClientOptions {
                to,
                count,
                concurrency,
                interval: Duration::from_millis(interval_ms),
                timeout: Duration::from_millis(timeout_ms),
                http,
                udp,
            };
            let stdout = std::sync::Mutex::new(std::io::stdout());
            client::run(&opts, |a| {
                if let Ok(line) = serde_json::to_string(a) {
                    let mut out = stdout.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = writeln!(out, "{line}");
                }
            });
            Ok(())
        }
        Cmd::Demo => breaker_lab::demo::run(),
    }
}
