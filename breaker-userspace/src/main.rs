//! The `breaker` command.
use std::{path::PathBuf, process::ExitCode};

use breaker::config::Config;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "breaker",
    version,
    about = "Host-level eBPF circuit breaker for TCP upstreams"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: attach the kernel programs and probe, until SIGINT/SIGTERM.
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and print what it means.
    CheckConfig {
        /// The TOML configuration file.
        config: PathBuf,
    },
}

/// Exit status for a configuration the daemon refuses.
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let (Command::Run { config } | Command::CheckConfig { config }) = &cli.command;
    let parsed = match Config::from_file(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    match cli.command {
        Command::CheckConfig { .. } => {
            print!("{}", parsed.describe());
            println!("config OK");
            ExitCode::SUCCESS
        }
        Command::Run { .. } => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(breaker::daemon::run(parsed)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    let bad_config = e
                        .chain()
                        .any(|c| c.downcast_ref::<breaker::cgroup::CgroupError>().is_some());
                    if bad_config {
                        ExitCode::from(EXIT_BAD_CONFIG)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
    }
}
