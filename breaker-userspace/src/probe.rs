//! Half-open probing: once an upstream has been OPEN for `open_duration`, the daemon
//! checks it every `probe_interval` (TCP connect, or HTTP GET answering 2xx) and
//! applies the result to the kernel state with the shared state machine.
//!
//! Probe sockets carry the configured SO_MARK, which the connect hooks let through.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use breaker_common::{
    abi::{cause_name, CAUSE_OPEN_EXPIRED, CAUSE_PROBE_FAILURE, CAUSE_PROBE_SUCCESS},
    machine::{self, State},
};
use tokio::{net::TcpStream, time::Instant};

use crate::{
    config::Upstream,
    events::Transition,
    metrics::Metrics,
    state::{now_ms, StateTable},
};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("HTTP exchange with {addr} failed: {message}")]
    Http { addr: SocketAddr, message: String },
    #[error("{addr} answered HTTP {status}, not 2xx")]
    Status { addr: SocketAddr, status: u16 },
    #[error("connect to {addr} took {took:?}, slow (slow_connect_threshold {threshold:?})")]
    Slow {
        addr: SocketAddr,
        took: Duration,
        threshold: Duration,
    },
}

/// A marked TCP connection to `addr`.
async fn connect_marked(addr: SocketAddr, mark: u32) -> std::io::Result<TcpStream> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    // 0 is never a configured mark (the config refuses it): unmarked, for tests.
    if mark != 0 {
        socket.set_mark(mark)?;
    }
    socket.set_nonblocking(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    socket.connect(addr).await
}

/// One probe of `target`: a marked TCP connect, then the HTTP GET if a path is set.
/// With `slow` (an upstream that counts slow connects as failures), a connect that
/// took that long fails the probe, as it would fail a trial: a slow upstream must
/// not close at every probe. Timed here, so a busy daemon may see a connect a
/// little slower than the kernel did: probes err on the side of staying open.
pub async fn probe_once(
    addr: SocketAddr,
    http_path: Option<&str>,
    mark: u32,
    timeout: Duration,
    slow: Option<Duration>,
) -> Result<(), ProbeError> {
    let exchange = async {
        let started = std::time::Instant::now();
        let stream = connect_marked(addr, mark)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        let took = started.elapsed();
        if let Some(threshold) = slow.filter(|t| took >= *t) {
            return Err(ProbeError::Slow {
                addr,
                took,
                threshold,
            });
        }
        let Some(path) = http_path else { return Ok(()) };
        let http = |e: &dyn std::fmt::Display| ProbeError::Http {
            addr,
            message: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<
            _,
            http_body_util::Empty<hyper::body::Bytes>,
        >(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| http(&e))?;
        let driver = tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::USER_AGENT, "breaker-probe")
            .body(http_body_util::Empty::new())
            .map_err(|e| http(&e))?;
        let response = sender.send_request(request).await.map_err(|e| http(&e));
        driver.abort();
        let status = response?.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(ProbeError::Status {
                addr,
                status: status.as_u16(),
            })
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout { addr, timeout }),
    }
}

/// How often the scheduler reads every breaker word. A read of the mmapped map is a
/// memory load, so one pass over thousands of upstreams costs microseconds.
const SCAN_EVERY: Duration = Duration::from_millis(20);

/// One configured upstream as the scheduler tracks it.
struct Probed {
    id: u32,
    upstream: Arc<Upstream>,
    thresholds: breaker_common::machine::Thresholds,
    last_probe: Option<Instant>,
    /// How long after `last_probe` the next one is due, fixed once that probe's
    /// result is in (its jitter drawn once, not at every scan).
    wait: Option<Duration>,
    /// A probe of this upstream is running: never two at once.
    busy: Arc<std::sync::atomic::AtomicBool>,
}

/// Probes every upstream whose breaker is due, forever: not CLOSED, OPEN for at least
/// its open time (`open_duration`, grown by reopens), and `probe_interval` (grown
/// by failed recovery attempts, with `max_open_duration`) since its last probe. One task scans all the
/// Every this many passes (a second), each service's ejection slot is set to
/// its endpoints ejected now: a place the kernel could not give back (its
/// compare-and-swap lost to contention) is freed, and one lost at a reload
/// is counted again.
const RECONCILE_EVERY_PASSES: u32 = 50;

/// words; each probe runs in a task of its own.
pub async fn run(
    upstreams: Vec<(u32, Upstream)>,
    mark: u32,
    states: Arc<StateTable>,
    metrics: Arc<Metrics>,
    heartbeat: Arc<crate::state::Heartbeat>,
) {
    use std::sync::atomic::Ordering;
    let mut probed: Vec<Probed> = upstreams
        .into_iter()
        .map(|(id, upstream)| Probed {
            id,
            thresholds: crate::kernel::thresholds(&upstream.policy),
            upstream: Arc::new(upstream),
            last_probe: None,
            wait: None,
            busy: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
        .collect();
    let mut tick = tokio::time::interval(SCAN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut passes: u32 = 0;
    loop {
        tick.tick().await;
        // Each pass tells the kernel a daemon is probing: while this is fresh,
        // HALF_OPEN waits for probes rather than letting applications try.
        heartbeat.beat();
        // The first pass too: the slots are this config's from the start.
        if passes.is_multiple_of(RECONCILE_EVERY_PASSES) {
            states.recount_services();
        }
        passes = passes.wrapping_add(1);
        let now = now_ms();
        for p in &mut probed {
            // Read before the word: idle means the last probe's result is in it.
            let idle = !p.busy.load(Ordering::Acquire);
            let Some(word) = states.load(p.id) else {
                continue;
            };
            // An operator's override decides, not probes.
            if word.mode() != breaker_common::machine::Mode::Auto {
                p.last_probe = None;
                p.wait = None;
                continue;
            }
            // HALF_OPEN is a breaker being probed: open_duration has passed, and a
            // failed probe keeps it there, so probes go on every probe_interval.
            let recovering = match word.state() {
                State::Closed => {
                    p.last_probe = None;
                    p.wait = None;
                    continue;
                }
                State::Open => {
                    word.phase_ms(now)
                        >= breaker_common::machine::open_duration_ms(word, &p.thresholds)
                }
                State::HalfOpen => true,
            };
            // The interval grows with failed probes when max_open_duration says so;
            // it is fixed once the last probe's result is in the word.
            let interval = p.wait.unwrap_or_else(|| {
                Duration::from_millis(u64::from(machine::probe_interval_ms(
                    word,
                    p.upstream.policy.probe_interval.as_millis() as u32,
                    &p.thresholds,
                )))
            });
            if p.wait.is_none() && p.last_probe.is_some() && idle {
                p.wait = Some(interval);
            }
            let due = recovering && p.last_probe.is_none_or(|t| t.elapsed() >= interval);
            if !due || p.busy.swap(true, Ordering::AcqRel) {
                continue;
            }
            // Show the probing as it happens: OPEN past its time is HALF_OPEN now,
            // not when the probe's answer comes back.
            expire(p.id, &p.thresholds, now, &states, &metrics);
            p.last_probe = Some(Instant::now());
            p.wait = None;
            let (id, upstream, thresholds, busy) =
                (p.id, p.upstream.clone(), p.thresholds, p.busy.clone());
            let (states, metrics) = (states.clone(), metrics.clone());
            tokio::spawn(async move {
                probe_and_apply(id, &upstream, thresholds, mark, &states, &metrics).await;
                busy.store(false, Ordering::Release);
            });
        }
    }
}

/// Moves an expired OPEN breaker to HALF_OPEN, as the kernel does on a connect.
fn expire(
    id: u32,
    thresholds: &breaker_common::machine::Thresholds,
    now: u32,
    states: &StateTable,
    metrics: &Metrics,
) {
    let expire = |w| machine::Step {
        next: machine::expire_open(w, now, thresholds),
        result: (),
    };
    if let Some((prev, step)) = states.update(id, expire) {
        if let Some((from, to)) = step.transition(prev) {
            transition(metrics, id, from, to, cause_name(CAUSE_OPEN_EXPIRED));
        }
    }
}

/// Logs and counts a transition the daemon made.
fn transition(metrics: &Metrics, upstream: u32, from: State, to: State, cause: &'static str) {
    crate::events::record(
        metrics,
        &Transition {
            upstream,
            from,
            to,
            cause,
            dest: None,
        },
    );
}

/// One probe of `upstream`, its result applied to the kernel state.
async fn probe_and_apply(
    id: u32,
    upstream: &Upstream,
    thresholds: breaker_common::machine::Thresholds,
    mark: u32,
    states: &StateTable,
    metrics: &Metrics,
) {
    let policy = upstream.policy;
    let result = probe_once(
        upstream.probe.address,
        upstream.probe.http_path.as_deref(),
        mark,
        policy.probe_timeout,
        policy.slow_fails(),
    )
    .await;
    let success = result.is_ok();
    metrics.probe(id, success);
    match &result {
        Ok(()) => {
            tracing::info!(upstream = upstream.name.as_str(), target = %upstream.probe.address, "probe passed")
        }
        Err(e) => tracing::info!(upstream = upstream.name.as_str(), error = %e, "probe failed"),
    }
    let now = now_ms();
    let cause = if success {
        CAUSE_PROBE_SUCCESS
    } else {
        CAUSE_PROBE_FAILURE
    };
    if let Some((prev, step)) = states.update(id, |w| machine::probe(w, success, now, &thresholds))
    {
        // A probe that finds OPEN expired moves it to HALF_OPEN first.
        let expired = machine::expire_open(prev, now, &thresholds);
        for (from, to, why) in [
            (
                prev.state(),
                expired.state(),
                cause_name(CAUSE_OPEN_EXPIRED),
            ),
            (expired.state(), step.next.state(), cause_name(cause)),
        ] {
            if from != to {
                transition(metrics, id, from, to, why);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback listener: connects to it take microseconds.
    async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback listener");
        let addr = l.local_addr().expect("its address");
        (l, addr)
    }

    #[tokio::test]
    async fn a_probe_slower_than_the_slow_threshold_fails() {
        let (_l, addr) = listener().await;
        let timeout = Duration::from_secs(5);
        probe_once(addr, None, 0, timeout, None)
            .await
            .expect("no threshold: any connect passes");
        probe_once(addr, None, 0, timeout, Some(Duration::from_secs(4)))
            .await
            .expect("well under the threshold");
        match probe_once(addr, None, 0, timeout, Some(Duration::from_nanos(1))).await {
            Err(ProbeError::Slow {
                took, threshold, ..
            }) => {
                assert!(took >= threshold, "{took:?} < {threshold:?}")
            }
            other => panic!("a connect over the threshold passed: {other:?}"),
        }
    }

    #[test]
    fn only_a_slow_threshold_that_counts_as_a_failure_judges_probes() {
        let policy = |extra: &str| {
            crate::config::Config::parse(
                std::path::Path::new("t.toml"),
                &format!("[[upstream]]\nname='a'\nendpoints=['10.0.0.1:80']\n{extra}"),
            )
            .expect("a valid config")
            .upstreams[0]
                .policy
        };
        let ms = Duration::from_millis;
        assert_eq!(policy("").slow_fails(), None);
        // Measured only: it fails nothing, so probes are not held to it.
        assert_eq!(
            policy("slow_connect_threshold='300ms'\n").slow_fails(),
            None
        );
        assert_eq!(
            policy("slow_connect_threshold='300ms'\ncount=['timeout','slow']\n").slow_fails(),
            Some(ms(300))
        );
        // A slow rate judges a closed breaker's connects, not its recovery.
        assert_eq!(
            policy("slow_connect_threshold='300ms'\nslow_rate_threshold=50\n").slow_fails(),
            None
        );
    }
}
