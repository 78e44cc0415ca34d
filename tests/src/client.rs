//! The connect client: what an unmodified legacy application does, measured.
//! `breaker-lab connect` prints one JSON [`Attempt`] per line.
use std::{
    io::{Read, Write},
    net::SocketAddr,
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    pub client: u32,
    pub seq: u32,
    /// Start, in ms since the client began.
    pub start_ms: f64,
    /// Start, in ms of CLOCK_MONOTONIC (shared by every process, for lining up phases).
    #[serde(default)]
    pub mono_ms: f64,
    /// How long connect() (and the HTTP exchange, with `--http`) took.
    pub latency_us: f64,
    /// ok, refused, timeout, unreachable or error.
    pub outcome: String,
    pub errno: Option<i32>,
    /// The response body with `--http` (the server's name).
    pub body: Option<String>,
    /// With `--user-timeout-ms`: the socket's TCP_USER_TIMEOUT once connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_timeout_ms: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub to: SocketAddr,
    pub count: u32,
    pub concurrency: u32,
    pub interval: Duration,
    pub timeout: Duration,
    pub http: bool,
    /// UDP instead of TCP: connect() and send one datagram.
    pub udp: bool,
    /// Close with SO_LINGER 0 (RST, no TIME_WAIT), for long connect loops.
    pub linger0: bool,
    /// Keep a socket whose connect failed open this long before closing it, as an
    /// application that leaks its sockets would (zero: close at once).
    pub hold: Duration,
    /// Cancel a connect that timed out with shutdown() before closing it (which
    /// the kernel turns into a disconnect of the connecting socket).
    pub cancel_with_shutdown: bool,
    /// Attempt `n` of each client goes to `to`'s port plus `n`: many destinations
    /// from one process (a process per destination is slow under emulation).
    pub each_port: bool,
    /// TCP_USER_TIMEOUT set before connect(), and read back once connected.
    pub user_timeout: Option<Duration>,
}

/// CLOCK_MONOTONIC in milliseconds.
pub fn mono_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

pub fn classify(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused",
        Some(libc::ETIMEDOUT) => "timeout",
        Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => "unreachable",
        _ if e.kind() == std::io::ErrorKind::TimedOut => "timeout",
        _ => "error",
    }
}

fn one_udp(opts: &ClientOptions) -> (String, Option<i32>, Option<String>) {
    let bind: SocketAddr = if opts.to.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("static address");
    let result = std::net::UdpSocket::bind(bind).and_then(|s| {
        s.connect(opts.to)?;
        s.send(b"ping")
    });
    match result {
        Ok(_) => ("ok".into(), None, None),
        Err(e) => (classify(&e).into(), e.raw_os_error(), None),
    }
}

/// One attempt: outcome, errno, body, and the socket's TCP_USER_TIMEOUT once
/// connected (with [`ClientOptions::user_timeout`]).
fn one(
    opts: &ClientOptions,
    keep: &mut Option<socket2::Socket>,
) -> (String, Option<i32>, Option<String>, Option<u64>) {
    let mut user_timeout = None;
    let (outcome, errno, body) = if opts.udp {
        one_udp(opts)
    } else {
        one_tcp(opts, keep, &mut user_timeout)
    };
    (outcome, errno, body, user_timeout)
}

fn one_tcp(
    opts: &ClientOptions,
    keep: &mut Option<socket2::Socket>,
    user_timeout: &mut Option<u64>,
) -> (String, Option<i32>, Option<String>) {
    let domain = socket2::Domain::for_address(opts.to);
    let socket =
        match socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP)) {
            Ok(s) => s,
            Err(e) => return (classify(&e).into(), e.raw_os_error(), None),
        };
    if opts.linger0 {
        let _ = socket.set_linger(Some(Duration::ZERO));
    }
    if let Some(t) = opts.user_timeout {
        if let Err(e) = socket.set_tcp_user_timeout(Some(t)) {
            return (classify(&e).into(), e.raw_os_error(), None);
        }
    }
    if let Err(e) = socket.connect_timeout(&opts.to.into(), opts.timeout) {
        if opts.cancel_with_shutdown {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        if !opts.hold.is_zero() {
            *keep = Some(socket);
        }
        return (classify(&e).into(), e.raw_os_error(), None);
    }
    if opts.user_timeout.is_some() {
        *user_timeout = socket
            .tcp_user_timeout()
            .ok()
            .map(|t| t.map_or(0, |t| t.as_millis() as u64));
    }
    if !opts.http {
        // The socket closes here, inside the measured time: connect() plus close.
        return ("ok".into(), None, None);
    }
    let mut stream: std::net::TcpStream = socket.into();
    let _ = stream.set_read_timeout(Some(opts.timeout));
    if let Err(e) = stream.write_all(b"GET / HTTP/1.0\r\nHost: upstream\r\n\r\n") {
        return (classify(&e).into(), e.raw_os_error(), None);
    }
    let mut response = Vec::new();
    if let Err(e) = stream.read_to_end(&mut response) {
        return (classify(&e).into(), e.raw_os_error(), None);
    }
    let text = String::from_utf8_lossy(&response);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.0 200") => {
            ("ok".into(), None, Some(body.to_string()))
        }
        _ => ("error".into(), None, None),
    }
}

/// Runs the attempts; `emit` gets each as it completes.
pub fn run(opts: &ClientOptions, emit: impl Fn(&Attempt) + Send + Sync) {
    let begin = Instant::now();
    let barrier = Arc::new(Barrier::new(opts.concurrency as usize));
    std::thread::scope(|scope| {
        for client in 0..opts.concurrency {
            let (barrier, emit) = (barrier.clone(), &emit);
            scope.spawn(move || {
                barrier.wait();
                let mut held = Vec::new();
                for seq in 0..opts.count {
                    let start = Instant::now();
                    let mono = mono_ms();
                    let mut keep = None;
                    let moved;
                    let opts = if opts.each_port {
                        let mut o = opts.clone();
                        o.to.set_port(opts.to.port().wrapping_add(seq as u16));
                        moved = o;
                        &moved
                    } else {
                        opts
                    };
                    let (outcome, errno, body, user_timeout_ms) = one(opts, &mut keep);
                    let attempt = Attempt {
                        client,
                        seq,
                        start_ms: start.duration_since(begin).as_secs_f64() * 1e3,
                        mono_ms: mono,
                        latency_us: start.elapsed().as_secs_f64() * 1e6,
                        outcome,
                        errno,
                        body,
                        user_timeout_ms,
                    };
                    emit(&attempt);
                    held.extend(keep.map(|s| (Instant::now(), s)));
                    if !opts.interval.is_zero() {
                        std::thread::sleep(opts.interval);
                    }
                }
                for (since, socket) in held {
                    std::thread::sleep(opts.hold.saturating_sub(since.elapsed()));
                    drop(socket);
                }
            });
        }
    });
}

/// Parses the client's output.
pub fn parse_attempts(stdout: &str) -> anyhow::Result<Vec<Attempt>> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("bad client line {l:?}: {e}")))
        .collect()
}
