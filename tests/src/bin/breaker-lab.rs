//! `breaker-lab`: the lab's client, the demo and the benchmarks.
use std::{io::Write, net::SocketAddr, path::PathBuf, time::Duration};

use breaker_lab::client::{self, ClientOptions};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "breaker-lab",
    about = "Lab tools for breaker: an unmodified TCP client, the demo, the benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args)]
struct ConnectArgs {
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
    /// Close with SO_LINGER 0 (an RST, no TIME_WAIT): for long connect loops.
    #[arg(long)]
    linger0: bool,
    /// Keep a socket whose connect failed open this many milliseconds before
    /// closing it (an application leaking its sockets).
    #[arg(long, default_value_t = 0)]
    hold_ms: u64,
    /// Cancel a timed-out connect with shutdown() before closing the socket.
    #[arg(long)]
    cancel_with_shutdown: bool,
    /// Attempt N goes to the port of --to plus N (one destination per attempt).
    #[arg(long)]
    each_port: bool,
    /// Set TCP_USER_TIMEOUT to this many milliseconds before connecting, and
    /// report the socket's value once connected (an application that sets its
    /// own, as gRPC does).
    #[arg(long)]
    user_timeout_ms: Option<u64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Connect to an address repeatedly, printing one JSON line per attempt.
    Connect(ConnectArgs),
    /// Run the self-contained demo (needs root).
    Demo,
    /// Run the benchmarks and write BENCHMARKS.md and plots (needs root).
    Bench {
        /// Each scenario briefly: keeps the harness working, proves nothing about speed.
        #[arg(long)]
        quick: bool,
        /// Where BENCHMARKS.md and the plots go.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Run only these scenarios (healthy, failfast, outage, scale, proxy, operations).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Connect(a) => {
            if a.concurrency == 0 || a.timeout_ms == 0 {
                anyhow::bail!("--concurrency and --timeout-ms must be at least 1");
            }
            let opts = ClientOptions {
                to: a.to,
                count: a.count,
                concurrency: a.concurrency,
                interval: Duration::from_millis(a.interval_ms),
                timeout: Duration::from_millis(a.timeout_ms),
                http: a.http,
                udp: a.udp,
                linger0: a.linger0,
                hold: Duration::from_millis(a.hold_ms),
                cancel_with_shutdown: a.cancel_with_shutdown,
                each_port: a.each_port,
                user_timeout: a.user_timeout_ms.map(Duration::from_millis),
            };
            let stdout = std::sync::Mutex::new(std::io::BufWriter::new(std::io::stdout()));
            client::run(&opts, |a| {
                if let Ok(line) = serde_json::to_string(a) {
                    let mut out = stdout.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = writeln!(out, "{line}");
                    // Attempts stream to whoever watches (the demo) as they happen.
                    if !opts.interval.is_zero() {
                        let _ = out.flush();
                    }
                }
            });
            let _ = stdout.lock().unwrap_or_else(|e| e.into_inner()).flush();
            Ok(())
        }
        Cmd::Demo => breaker_lab::demo::run(),
        Cmd::Bench { quick, out, only } => breaker_lab::bench::run(quick, &out, &only),
    }
}
