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
    /// Attach empty programs to a cgroup until SIGINT/SIGTERM (benchmarks only: the
    /// cost of a program that does nothing).
    #[command(hide = true)]
    Calibrate {
        #[arg(long)]
        cgroup: PathBuf,
    },
    /// Validate a configuration file and print what it means.
    CheckConfig {
        /// The TOML configuration file.
        config: PathBuf,
    },
    /// Remove every program, link, map and pin a daemon left attached (stop the
    /// daemon first): afterwards nothing of breaker runs in the kernel.
    Uninstall {
        /// The pin folder (the config's `daemon.pin_path`).
        #[arg(long, env = "BREAKER_PIN_PATH", default_value = breaker::config::defaults::PIN_PATH)]
        pin_path: PathBuf,
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
    match Cli::parse().command {
        Command::Run { config: path } => match load(&path) {
            Ok(config) => run(path, config),
            Err(code) => code,
        },
        Command::CheckConfig { config: path } => match load(&path) {
            Ok(config) => check_config(&path, &config),
            Err(code) => code,
        },
        Command::Calibrate { cgroup } => calibrate(&cgroup),
        Command::Uninstall { pin_path } => uninstall(&pin_path),
    }
}

/// `breaker uninstall`: removes the pins, which detaches and frees everything.
fn uninstall(pin_path: &std::path::Path) -> ExitCode {
    let bpffs = std::path::Path::new(breaker::config::defaults::BPFFS);
    if !pin_path.starts_with(bpffs) || pin_path == bpffs {
        eprintln!(
            "error: --pin-path {} must be a folder inside {}",
            pin_path.display(),
            bpffs.display()
        );
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    match breaker::kernel::PinFolder::new(pin_path).uninstall() {
        Ok(removed) if removed.is_empty() => {
            println!("nothing to remove at {}", pin_path.display());
            ExitCode::SUCCESS
        }
        Ok(removed) => {
            for path in &removed {
                println!("removed {}", path.display());
            }
            println!(
                "removed {} pins at {}: no breaker program is attached from there any more",
                removed.len(),
                pin_path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The validated config, or the exit status for one the daemon refuses.
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::from_file(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

/// `breaker check-config`: what the config means, where it attaches, what it costs.
fn check_config(path: &std::path::Path, config: &Config) -> ExitCode {
    // The cgroup as `run` will resolve it: a typo'd service name fails here, not at start.
    let cgroup = match breaker::cgroup::resolve(config.cgroup.as_deref()) {
        Ok(cgroup) => cgroup,
        Err(e) => {
            eprintln!("error: config {}: {e}", path.display());
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    for warning in config.warnings() {
        eprintln!("warning: config {}: {warning}", path.display());
    }
    print!("{}", config.describe());
    println!("cgroup:    {}", cgroup.display());
    let cpus = breaker::config::possible_cpus();
    let bytes = config.kernel_memory_estimate(cpus);
    println!(
        "kernel memory: about {:.1} MiB pinned by the maps (an estimate, for {cpus} possible CPUs)",
        bytes as f64 / f64::from(1 << 20)
    );
    println!("config OK");
    ExitCode::SUCCESS
}

fn run(path: PathBuf, config: Config) -> ExitCode {
    // Before anything is loaded: an old kernel gets one line, not a verifier error.
    if let Err(e) = breaker::requirements::check_running_kernel() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
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
    let explain_with = config.clone();
    match runtime.block_on(breaker::daemon::run(path, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A kernel error the operator can act on: the field, or the capability.
            let explained = e
                .chain()
                .find_map(|c| c.downcast_ref::<breaker::kernel::KernelError>())
                .and_then(|k| breaker::explain::explain(k, &explain_with));
            if let Some(explained) = explained {
                eprintln!("error: {}", explained.message);
                return if explained.config_fault {
                    ExitCode::from(EXIT_BAD_CONFIG)
                } else {
                    ExitCode::FAILURE
                };
            }
            eprintln!("error: {e:#}");
            // A cgroup that is not there is the config's fault: nothing was attached.
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

fn calibrate(cgroup: &std::path::Path) -> ExitCode {
    let _attached = match breaker::kernel::attach_calibration(cgroup) {
        Ok(ebpf) => ebpf,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("calibration programs attached to {}", cgroup.display());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(runtime) = runtime else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        }
    });
    ExitCode::SUCCESS
}
