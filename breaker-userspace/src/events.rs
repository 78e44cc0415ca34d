//! Transition events: from the kernel's ring buffer and from the daemon's own probes,
//! into logs and metrics.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use aya::maps::{MapData, RingBuf};
use breaker_common::{
    abi::{cause_name, unmap_v4, DestKey, TransitionEvent, AF_INET},
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
    if d.family == 0 {
        return None;
    }
    let port = u16::from_be(d.port);
    let ip = match (d.family, unmap_v4(d.addr)) {
        (AF_INET, Some(v4)) => IpAddr::V4(Ipv4Addr::from(u32::from_be(v4))),
        _ => {
            let mut octets = [0u8; 16];
            for (i, w) in d.addr.iter().enumerate() {
                octets[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
    };
    Some(SocketAddr::new(ip, port))
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
    use breaker_common::abi::{v4_mapped, AF_INET6};

    #[test]
    fn dest_keys_decode_to_socket_addresses() {
        let v4 = DestKey {
            addr: v4_mapped(u32::from_ne_bytes([10, 0, 0, 7])),
            port: 8080u16.to_be(),
            family: AF_INET,
        };
        assert_eq!(dest_addr(&v4), Some("10.0.0.7:8080".parse().unwrap()));
        let o = "fd00::5".parse::<Ipv6Addr>().unwrap().octets();
        let mut addr = [0u32; 4];
        for (i, w) in addr.iter_mut().enumerate() {
            *w = u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
        }
        let v6 = DestKey {
            addr,
            port: 443u16.to_be(),
            family: AF_INET6,
        };
        assert_eq!(dest_addr(&v6), Some("[fd00::5]:443".parse().unwrap()));
        assert_eq!(dest_addr(&DestKey::default()), None);
    }
}
