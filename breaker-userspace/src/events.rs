//! Transition events: from the kernel's ring buffer and from the daemon's own probes,
//! into logs and metrics.
use std::net::SocketAddr;

use aya::maps::{MapData, RingBuf};
use breaker_common::{
    abi::{cause_name, DestKey, TransitionEvent},
    machine::State,
};
use tokio::io::unix::AsyncFd;

use crate::metrics::Metrics;

/// One transition, from whichever side made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub upstream: u32,
    pub from: State,
    pub to: State,
    pub cause: &'static str,
    /// The destination, for default-policy breakers.
    pub dest: Option<SocketAddr>,
}

impl Transition {
    pub fn from_event(e: &TransitionEvent) -> Transition {
        Transition {
            upstream: e.upstream,
            from: State::from_u32(e.from),
            to: State::from_u32(e.to),
            cause: cause_name(e.cause),
            dest: dest_addr(&e.dest),
        }
    }
}

/// The socket address in a `DestKey`, or `None` for an empty key.
pub fn dest_addr(d: &DestKey) -> Option<SocketAddr> {
    (d.family != 0).then(|| d.to_socket_addr())
}

/// Logs and counts one transition. A per-destination breaker's transitions (the
/// default policy's, a per-address upstream's: a CIDR's addresses are as many
/// as a host's destinations) are logged at debug, with an info summary at most
/// every [`SUMMARY_EVERY`]: a flood of failing destinations must not flood the log.
pub fn record(metrics: &Metrics, t: &Transition) {
    let name = metrics.upstream_name(t.upstream);
    match t.dest {
        Some(dest) => {
            tracing::debug!(upstream = name, %dest, from = t.from.name(), to = t.to.name(), cause = t.cause, "breaker transition");
            DESTINATION_SUMMARY.note(t);
        }
        None => tracing::info!(
            upstream = name,
            from = t.from.name(),
            to = t.to.name(),
            cause = t.cause,
            "breaker transition"
        ),
    }
    metrics.transition(t.upstream, t.from, t.to);
    metrics
        .history()
        .publish(crate::control::protocol::EventView {
            at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            upstream: name.clone(),
            destination: t.dest.map(|d| d.to_string()),
            from: t.from.name().to_string(),
            to: t.to.name().to_string(),
            cause: t.cause.to_string(),
        });
    if t.dest.is_none() {
        metrics
            .history()
            .transition(t.upstream, t.from.name(), t.to.name(), t.cause);
    }
}

/// How often default-policy transitions are summed up in the log.
pub const SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Default-policy transitions since the last summary line.
struct Summary {
    window: std::sync::Mutex<(Option<std::time::Instant>, u64, u64)>,
}

static DESTINATION_SUMMARY: Summary = Summary {
    window: std::sync::Mutex::new((None, 0, 0)),
};

impl Summary {
    fn note(&self, t: &Transition) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let (start, opened, closed) = &mut *w;
        match t.to {
            State::Open => *opened += 1,
            State::Closed => *closed += 1,
            State::HalfOpen => {}
        }
        let now = std::time::Instant::now();
        let since = *start.get_or_insert(now);
        if now.duration_since(since) >= SUMMARY_EVERY {
            tracing::info!(
                opened = *opened,
                closed = *closed,
                seconds = now.duration_since(since).as_secs(),
                "per-destination breakers (default policy, per-address upstreams) opened and closed since the last summary (each at debug)"
            );
            *w = (Some(now), 0, 0);
        }
    }
}

/// Reads kernel transitions until the task is cancelled.
pub async fn pump(ring: RingBuf<MapData>, metrics: std::sync::Arc<Metrics>) -> anyhow::Result<()> {
    // SAFETY: the RingBuf owns its fd for as long as the AsyncFd holds it.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<TransitionEvent>() {
                tracing::warn!(len = item.len(), "short transition event ignored");
                continue;
            }
            // SAFETY: length checked; TransitionEvent is plain integers.
            let event: TransitionEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            record(&metrics, &Transition::from_event(&event));
        }
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dest_keys_decode_to_socket_addresses() {
        for text in ["10.0.0.7:8080", "[fd00::5]:443"] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(dest_addr(&DestKey::from_socket_addr(addr)), Some(addr));
        }
        assert_eq!(dest_addr(&DestKey::default()), None);
    }
}
