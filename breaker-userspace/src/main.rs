//! The `breaker` command.
use std::{path::PathBuf, process::ExitCode};

use breaker::{
    config::{Config, LogFormat},
    control::protocol::Request,
};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "breaker",
    version,
    about = "Host-level eBPF circuit breaker for TCP upstreams"
)]
struct Cli {
    /// Log lines as text or as JSON objects (for log shippers); the default is
    /// the config's daemon.log_format, else text.
    #[arg(
        long,
        global = true,
        value_enum,
        ignore_case = true,
        env = "BREAKER_LOG_FORMAT"
    )]
    log_format: Option<LogFormat>,
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
    /// Attach empty programs to a cgroup until SIGINT/SIGTERM (benchmarks: the cost
    /// of a program that does nothing; kernel-matrix guests: static keys held on).
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
    /// Show every upstream's breaker (or one's, with its endpoints, policy and last
    /// transitions), from the running daemon.
    Status {
        /// One upstream, in detail.
        upstream: Option<String>,
        /// The daemon's answer as JSON (see `breaker::control::protocol`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// A live view of every breaker, like htop: state, rates, the last minute,
    /// the default policy's tripped destinations and the host's health. Keys: q
    /// quit, s sort, / filter, Up/Down select, Enter the selected one's transitions.
    Top {
        /// How often to ask the daemon (at least 100ms).
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: std::time::Duration,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Reject (or redirect) every connect to UPSTREAM, with no probing, until reset.
    ForceOpen {
        upstream: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Let every connect to UPSTREAM through (still counted and reported), until reset.
    ForceClose {
        upstream: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Neither count nor enforce for UPSTREAM, until reset.
    Disable {
        upstream: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Back to automatic: CLOSED, the current streak's counts zeroed.
    Reset {
        upstream: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Show breaker transitions: the recent ones, or with --follow each new one as
    /// it happens, one line each (or JSON lines).
    Events {
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Re-read the daemon's config file (as SIGHUP does); non-zero if it was refused.
    Reload {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Remove every program, link, map and pin a daemon left attached (stop the
    /// daemon first): afterwards nothing of breaker runs in the kernel.
    Uninstall {
        /// The pin folder (the config's `daemon.pin_path`).
        #[arg(long, env = "BREAKER_PIN_PATH", default_value = breaker::config::defaults::PIN_PATH)]
        pin_path: PathBuf,
    },
    /// Print a shell completion script: `breaker completions bash >
    /// /etc/bash_completion.d/breaker` (zsh, fish, elvish and powershell too).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (breaker.1 and one per subcommand) into a folder
    /// (packaging).
    #[command(hide = true)]
    Man {
        /// The folder, created if missing.
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct SocketArg {
    /// The daemon's control socket (the config's `daemon.control_socket`).
    #[arg(long = "socket", env = "BREAKER_SOCKET", default_value = breaker::config::defaults::CONTROL_SOCKET)]
    path: PathBuf,
}

/// `top --interval`: a duration of at least [`breaker::top::MIN_INTERVAL`].
fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let interval = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if interval < breaker::top::MIN_INTERVAL {
        return Err(format!(
            "at least {}",
            humantime::format_duration(breaker::top::MIN_INTERVAL)
        ));
    }
    Ok(interval)
}

/// Exit status for a configuration the daemon refuses.
const EXIT_BAD_CONFIG: u8 = 2;

/// Logs to stderr, as text or JSON lines, at `RUST_LOG`'s level (info by default).
fn init_logging(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let flag = cli.log_format;
    // `run` starts logging once it has read its config (daemon.log_format; the flag
    // wins), so its config errors are plain lines; every other verb starts now.
    if !matches!(cli.command, Command::Run { .. }) {
        init_logging(flag.unwrap_or_default());
    }
    match cli.command {
        Command::Run { config: path } => match load(&path) {
            Ok(config) => {
                init_logging(flag.unwrap_or(config.daemon.log_format));
                run(path, config)
            }
            Err(code) => code,
        },
        Command::CheckConfig { config: path } => match load(&path) {
            Ok(config) => check_config(&path, &config),
            Err(code) => code,
        },
        Command::Calibrate { cgroup } => calibrate(&cgroup),
        Command::Uninstall { pin_path } => uninstall(&pin_path),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "breaker",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Man { dir } => man_pages(&dir),
        Command::Status {
            upstream,
            json,
            socket,
        } => control(&socket.path, &Request::Status { upstream }, json),
        Command::Top { interval, socket } => match breaker::top::run(&socket.path, interval) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::ForceOpen { upstream, socket } => {
            control(&socket.path, &Request::ForceOpen { upstream }, false)
        }
        Command::ForceClose { upstream, socket } => {
            control(&socket.path, &Request::ForceClose { upstream }, false)
        }
        Command::Disable { upstream, socket } => {
            control(&socket.path, &Request::Disable { upstream }, false)
        }
        Command::Reset { upstream, socket } => {
            control(&socket.path, &Request::Reset { upstream }, false)
        }
        Command::Reload { socket } => control(&socket.path, &Request::Reload, false),
        Command::Events {
            follow: true,
            json,
            socket,
        } => follow_events(&socket.path, json),
        Command::Events {
            follow: false,
            json,
            socket,
        } => control(&socket.path, &Request::Events { follow: false }, json),
    }
}

/// A verb for the running daemon: one line of error and exit 1 when it cannot
/// be done, the answer (or the status table, or its JSON) otherwise.
fn control(socket: &std::path::Path, request: &Request, json: bool) -> ExitCode {
    let answer = match breaker::control::client::call(socket, request) {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !answer.ok {
        eprintln!(
            "error: {}",
            answer.error.as_deref().unwrap_or("the daemon refused")
        );
        return ExitCode::FAILURE;
    }
    if let Some(status) = &answer.status {
        if json {
            match serde_json::to_string_pretty(status) {
                Ok(text) => println!("{text}"),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            print!("{}", breaker::control::render_status(status));
        }
    }
    for event in answer.events.iter().flatten() {
        if json {
            println!("{}", serde_json::to_string(event).unwrap_or_default());
        } else {
            println!("{event}");
        }
    }
    if let Some(message) = &answer.message {
        println!("{message}");
    }
    ExitCode::SUCCESS
}

/// `breaker events --follow`: each transition as the daemon sends it, until
/// the daemon stops (exit 0) or the CLI is interrupted.
fn follow_events(socket: &std::path::Path, json: bool) -> ExitCode {
    use std::io::Write;
    let shown = breaker::control::client::follow(socket, |line| {
        let text = if json {
            line.to_string()
        } else {
            match serde_json::from_str::<breaker::control::protocol::EventView>(line) {
                Ok(event) => event.to_string(),
                Err(_) => line.to_string(),
            }
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}").is_ok() && out.flush().is_ok()
    });
    match shown {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
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
            // A daemon configured with another pin_path pins elsewhere.
            let others: Vec<String> = std::fs::read_dir(bpffs)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.join("maps").join("PIN_METADATA").exists())
                .map(|p| p.display().to_string())
                .collect();
            if !others.is_empty() {
                println!(
                    "breaker pins elsewhere: {} (remove them with --pin-path)",
                    others.join(", ")
                );
            }
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

/// breaker.1 and breaker-SUBCOMMAND.1 for each visible subcommand, in `dir`.
fn man_pages(dir: &std::path::Path) -> ExitCode {
    use clap::CommandFactory;
    let write = || -> std::io::Result<usize> {
        std::fs::create_dir_all(dir)?;
        let top = Cli::command().name("breaker");
        let mut pages = vec![("breaker".to_string(), top.clone())];
        for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("breaker-{}", sub.get_name());
            let page = sub
                .clone()
                .name(name.clone())
                .version(env!("CARGO_PKG_VERSION"));
            pages.push((name, page));
        }
        for (name, command) in &pages {
            let mut out = Vec::new();
            clap_mangen::Man::new(command.clone()).render(&mut out)?;
            std::fs::write(dir.join(format!("{name}.1")), out)?;
        }
        Ok(pages.len())
    };
    match write() {
        Ok(n) => {
            eprintln!("wrote {n} man pages in {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: writing man pages in {}: {e}", dir.display());
            ExitCode::FAILURE
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
