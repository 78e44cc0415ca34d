//! Half-open probing: once an upstream has been OPEN for `open_duration`, the daemon
//! checks it every `probe_interval` (TCP connect, or HTTP GET answering 2xx) and
//! applies the result to the kernel state with the shared state machine.
//!
//! Probe sockets carry the configured SO_MARK, which the connect hooks let through.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use breaker_common::{
    abi::{cause_name, CAUSE_PROBE_FAILURE, CAUSE_PROBE_SUCCESS},
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
}

/// A marked TCP connection to `addr`.
async fn connect_marked(addr: SocketAddr, mark: u32) -> std::io::Result<TcpStream> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_mark(mark)?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    socket.connect(addr).await
}

/// One probe of `target`: a marked TCP connect, then the HTTP GET if a path is set.
pub async fn probe_once(
    addr: SocketAddr,
    http_path: Option<&str>,
    mark: u32,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let exchange = async {
        let stream = connect_marked(addr, mark)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
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

/// Probes upstream `id` whenever its breaker is due, forever.
pub async fn run(
    id: u32,
    upstream: Upstream,
    mark: u32,
    states: Arc<StateTable>,
    metrics: Arc<Metrics>,
) {
    let policy = upstream.policy;
    let thresholds = crate::kernel::policy_abi(&policy, &[]).thresholds();
    // Checking the word is a memory read; a short tick keeps probes on time.
    let tick = policy.probe_interval.min(Duration::from_millis(50));
    let mut last_probe: Option<Instant> = None;
    loop {
        tokio::time::sleep(tick).await;
        let Some(word) = states.load(id) else { return };
        let due = word.state() != State::Closed
            && word.open_for_ms(now_ms()) >= thresholds.open_duration_ms
            && last_probe.is_none_or(|t| t.elapsed() >= policy.probe_interval);
        if !due {
            if word.state() == State::Closed {
                last_probe = None;
            }
            continue;
        }
        last_probe = Some(Instant::now());
        let result = probe_once(
            upstream.probe.address,
            upstream.probe.http_path.as_deref(),
            mark,
            policy.probe_timeout,
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
        if let Some((prev, step)) =
            states.update(id, |w| machine::probe(w, success, now, &thresholds))
        {
            // A probe that finds OPEN expired moves it to HALF_OPEN first.
            let expired = machine::expire_open(prev, now, &thresholds);
            for (from, to, why) in [
                (prev.state(), expired.state(), "open_expired"),
                (expired.state(), step.next.state(), cause_name(cause)),
            ] {
                if from != to {
                    crate::events::record(
                        &metrics,
                        &Transition {
                            upstream: id,
                            from,
                            to,
                            cause: why,
                            dest: None,
                        },
                    );
                }
            }
        }
    }
}
