//! The `/metrics` HTTP server, built so that nothing a client does can end the daemon or
//! grow its memory without bound:
//! - an error on `accept` (EMFILE, ENFILE, ECONNABORTED, ENOMEM, anything) is logged at
//!   most once per [`LOG_EVERY`], with a count of the ones not logged, and the loop goes
//!   on after a short back-off;
//! - at most [`MAX_CONNECTIONS`] connections are served at once. A new connection over
//!   the limit takes the slot of the oldest connection that is idle (no request being
//!   answered) and older than [`GRACE`]; when there is none it is closed at once. So a
//!   slowloris or idle client cannot keep a scraper out, and a flood of new connections
//!   is turned away rather than queued;
//! - a request's head must arrive within [`HEADER_READ_TIMEOUT`] (hyper starts this
//!   timer on each request, so it also closes idle keep-alive connections), a head is
//!   at most [`MAX_BUF`] bytes, and no connection lives longer than [`CONNECTION_DEADLINE`];
//! - scrapes are rendered one at a time, and scrapers waiting for a render share the
//!   body of a render that started after they asked: no scrape is older than its
//!   request, and at most one render's worth of memory is being built at any time.
use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{body::Bytes, service::service_fn, Response, StatusCode};
use tokio::{net::TcpListener, sync::oneshot};

use super::Metrics;
use crate::{kernel::CounterTable, state::StateTable};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection younger than this is never evicted, so a scraper gets to send its request.
pub const GRACE: Duration = Duration::from_millis(500);
/// Time for a request's head to arrive, counted from when the server starts reading it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection is kept longer than this, whatever it does.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// The read buffer of a connection (hyper's minimum): a longer request head is refused.
pub const MAX_BUF: usize = 8192;
/// At most one log line per this, per kind of trouble.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// Serves `/metrics` on `listener` until the task is cancelled. It never returns:
/// every error is one client's, or passes.
pub async fn serve(
    listener: Arc<TcpListener>,
    metrics: Arc<Metrics>,
    counters: Arc<CounterTable>,
    states: Arc<StateTable>,
) {
    let renderer = Arc::new(Renderer {
        metrics,
        counters,
        states,
        last: Arc::new(tokio::sync::Mutex::new(None)),
    });
    let slots = Arc::new(Slots::default());
    let mut accept_errors = RateLimited::new(LOG_EVERY);
    let mut turned_away = RateLimited::new(LOG_EVERY);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                // Our own idle connections may be what holds the descriptors.
                if out_of_fds {
                    slots.evict_idle(Instant::now());
                }
                if let Some(suppressed) = accept_errors.hit(Instant::now()) {
                    tracing::warn!(error = %e, suppressed, "metrics listener: accept failed; going on");
                }
                tokio::time::sleep(backoff(&e)).await;
                continue;
            }
        };
        let Some((id, close)) = slots.take(Instant::now()) else {
            if let Some(suppressed) = turned_away.hit(Instant::now()) {
                tracing::warn!(
                    limit = MAX_CONNECTIONS,
                    suppressed,
                    "metrics listener: connection limit reached; new connection closed"
                );
            }
            drop(stream);
            continue;
        };
        let (renderer, slots) = (renderer.clone(), slots.clone());
        tokio::spawn(async move {
            let conn = connection(stream, id, renderer, slots.clone());
            tokio::select! {
                ended = tokio::time::timeout(CONNECTION_DEADLINE, conn) => match ended {
                    Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection ended"),
                    Ok(Ok(())) => {}
                    Err(_) => tracing::debug!("metrics connection closed at its deadline"),
                },
                _ = close => tracing::debug!("idle metrics connection closed for a new one"),
            }
            slots.free(id);
        });
    }
}

/// Serves one connection.
fn connection(
    stream: tokio::net::TcpStream,
    id: u64,
    renderer: Arc<Renderer>,
    slots: Arc<Slots>,
) -> impl Future<Output = hyper::Result<()>> {
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (renderer, slots) = (renderer.clone(), slots.clone());
        async move {
            let _busy = Busy::new(slots, id);
            if req.uri().path() == "/healthz" {
                // Not healthy while the protected cgroup does not exist: nothing
                // is protected then, whatever the breaker states say.
                return match renderer.metrics.health() {
                    Ok(()) => Response::builder().body(Full::new(Bytes::from_static(b"ok\n"))),
                    Err(why) => Response::builder()
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .body(Full::new(Bytes::from(format!("{why}\n")))),
                };
            }
            if req.uri().path() == "/status" {
                let body = renderer.metrics.status_json(&renderer.states);
                return Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)));
            }
            if req.uri().path() != "/metrics" {
                return Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Full::new(Bytes::from_static(
                        b"not found: try /metrics, /healthz or /status\n",
                    )));
            }
            match renderer.body().await {
                Some(body) => Response::builder()
                    .header("content-type", "text/plain; version=0.0.4")
                    .body(Full::new(body)),
                None => Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(Full::new(Bytes::from_static(b"rendering failed\n"))),
            }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF);
    builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
}

/// How long to wait after a failed `accept`.
fn backoff(e: &std::io::Error) -> Duration {
    match e.raw_os_error() {
        // Out of a resource: give it time to come back.
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS) => {
            Duration::from_millis(100)
        }
        // One connection's trouble (ECONNABORTED and the like): go on almost at once,
        // but never spin.
        _ => Duration::from_millis(5),
    }
}

/// Allows one event per `every`; counts the ones in between.
#[derive(Debug)]
pub struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    pub fn new(every: Duration) -> RateLimited {
        RateLimited {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when this event is to be reported, `n` being how many were not since
    /// the last report; `None` when it is to be counted only.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The connections being served.
#[derive(Default)]
struct Slots {
    inner: Mutex<SlotsInner>,
}

#[derive(Default)]
struct SlotsInner {
    next_id: u64,
    open: HashMap<u64, Slot>,
}

struct Slot {
    /// A request is being answered.
    busy: bool,
    /// When it was accepted, or last answered a request.
    idle_since: Instant,
    /// Dropping it closes the connection.
    _close: oneshot::Sender<()>,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotsInner> {
        // The map stays consistent whatever panicked while holding it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection: its id, and what tells it to close. `None` when
    /// every slot is busy or too young to be evicted.
    fn take(&self, now: Instant) -> Option<(u64, oneshot::Receiver<()>)> {
        let mut inner = self.lock();
        if inner.open.len() >= MAX_CONNECTIONS && !Self::evict_locked(&mut inner, now) {
            return None;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let (tx, rx) = oneshot::channel();
        inner.open.insert(
            id,
            Slot {
                busy: false,
                idle_since: now,
                _close: tx,
            },
        );
        Some((id, rx))
    }

    /// Closes the connection that has been idle longest, if any is past [`GRACE`].
    fn evict_idle(&self, now: Instant) -> bool {
        Self::evict_locked(&mut self.lock(), now)
    }

    fn evict_locked(inner: &mut SlotsInner, now: Instant) -> bool {
        let oldest = inner
            .open
            .iter()
            .filter(|(_, s)| !s.busy && now.saturating_duration_since(s.idle_since) >= GRACE)
            .min_by_key(|(_, s)| s.idle_since)
            .map(|(id, _)| *id);
        // Removing the slot drops its sender, which the connection's task is waiting on.
        oldest.is_some_and(|id| inner.open.remove(&id).is_some())
    }

    fn set_busy(&self, id: u64, busy: bool) {
        if let Some(slot) = self.lock().open.get_mut(&id) {
            slot.busy = busy;
            slot.idle_since = Instant::now();
        }
    }

    fn free(&self, id: u64) {
        self.lock().open.remove(&id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().open.len()
    }
}

/// Marks a connection busy while a request is answered; idle again when dropped, also
/// when the answer is cancelled.
struct Busy {
    slots: Arc<Slots>,
    id: u64,
}

impl Busy {
    fn new(slots: Arc<Slots>, id: u64) -> Busy {
        slots.set_busy(id, true);
        Busy { slots, id }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.slots.set_busy(self.id, false);
    }
}

/// Renders scrapes one at a time and shares each body with the scrapers that waited for it.
struct Renderer {
    metrics: Arc<Metrics>,
    counters: Arc<CounterTable>,
    states: Arc<StateTable>,
    /// When the last render started, and its body.
    last: Arc<tokio::sync::Mutex<Option<(Instant, Bytes)>>>,
}

impl Renderer {
    /// A body rendered after this call began; `None` if rendering panicked.
    async fn body(&self) -> Option<Bytes> {
        let asked = Instant::now();
        let mut last = self.last.clone().lock_owned().await;
        if let Some((started, body)) = last.as_ref() {
            if *started >= asked {
                return Some(body.clone());
            }
        }
        let (metrics, counters, states) = (
            self.metrics.clone(),
            self.counters.clone(),
            self.states.clone(),
        );
        // The render keeps the lock to its end, even when the scraper that asked for
        // it goes away: renders never pile up, whatever scrapers do.
        let render = tokio::spawn(async move {
            let started = Instant::now();
            // Rendering reads every counter and map and encodes every series: off the
            // async workers.
            let body = tokio::task::spawn_blocking(move || metrics.render(&counters, &states))
                .await
                .ok()
                .map(Bytes::from);
            if let Some(body) = &body {
                *last = Some((started, body.clone()));
            }
            body
        });
        render.await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_reports_once_per_period_with_the_count_in_between() {
        let mut r = RateLimited::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(r.hit(t0), Some(0));
        assert_eq!(r.hit(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.hit(t0 + Duration::from_secs(4)), None);
        assert_eq!(r.hit(t0 + Duration::from_secs(5)), Some(2));
        assert_eq!(r.hit(t0 + Duration::from_secs(6)), None);
    }

    #[test]
    fn a_full_server_evicts_the_oldest_idle_connection_past_its_grace() {
        let slots = Slots::default();
        let t0 = Instant::now();
        let mut held: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|i| slots.take(t0 + Duration::from_millis(i as u64)).unwrap())
            .collect();
        // All young: a new connection is turned away.
        assert!(slots.take(t0 + Duration::from_millis(100)).is_none());
        // The oldest is answering a request: the next oldest goes instead.
        slots.lock().open.get_mut(&held[0].0).unwrap().busy = true;
        let late = t0 + GRACE + Duration::from_secs(1);
        let (id, _rx) = slots.take(late).unwrap();
        assert_eq!(slots.len(), MAX_CONNECTIONS);
        assert!(
            matches!(
                held[1].1.try_recv(),
                Err(oneshot::error::TryRecvError::Closed)
            ),
            "connection 1 was told to close"
        );
        assert!(matches!(
            held[0].1.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        slots.free(id);
        assert_eq!(slots.len(), MAX_CONNECTIONS - 1);
    }

    #[test]
    fn every_slot_busy_turns_new_connections_away() {
        let slots = Slots::default();
        let t0 = Instant::now();
        for _ in 0..MAX_CONNECTIONS {
            let (id, _rx) = slots.take(t0).unwrap();
            slots.lock().open.get_mut(&id).unwrap().busy = true;
        }
        assert!(slots.take(t0 + Duration::from_secs(60)).is_none());
    }
}
