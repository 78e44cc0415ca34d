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

/// Logs and counts one transition.
pub fn record(metrics: &Metrics, t: &Transition) {
    let name = metrics.upstream_name(t.upstream);
    match t.dest {
        Some(dest) => {
            tracing::info!(upstream = name, %dest, from = t.from.name(), to = t.to.name(), cause = t.cause, "breaker transition")
        }
        None => tracing::info!(
            upstream = name,
            from = t.from.name(),
            to = t.to.name(),
            cause = t.cause,
            "breaker transition"
        ),
    }
    metrics.transition(t.upstream, t.from, t.to, t.dest);
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
