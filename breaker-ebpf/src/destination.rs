//! Which configured upstream guards a destination: single-address endpoints
//! first (the daemon's probing table, then the hash of those it had no place
//! for), then LPM tries keyed by (port, address prefix), exact port before any
//! port. Only the hooks that admit a connect resolve (connect4/6 once per
//! connect, the packet ingress per SYN); sock_ops, sock_release and the packet
//! egress read the answer from the socket's record or the flow's.
use aya_ebpf::maps::lpm_trie::Key;
use breaker_common::{
    abi::{
        DestKey, Settings, DEFAULT_UPSTREAM_ID, EXACT_OVERFLOW, PREFIX_ENDPOINTS_V4,
        PREFIX_ENDPOINTS_V6,
    },
    dest::{endpoint_prefix_len, endpoint_slot, ENDPOINT_TABLE_PROBES},
};

use crate::maps::{ENDPOINTS_EXACT, ENDPOINTS_V4, ENDPOINTS_V6, ENDPOINT_TABLE};

/// The breaker that judges a connect to `dest`: its configured upstream's, else
/// the default policy's when it is on; `None`: nothing watches it. Asked by
/// every hook that admits a connect (connect4/6, the packet ingress).
#[inline(always)]
pub fn judged_by(dest: &DestKey, settings: &Settings) -> Option<u32> {
    match upstream(dest, settings) {
        Some(id) => Some(id),
        None if settings.default_policy_enabled != 0 => Some(DEFAULT_UPSTREAM_ID),
        None => None,
    }
}

/// The configured upstream of `dest`, if any.
#[inline(always)]
pub fn upstream(dest: &DestKey, settings: &Settings) -> Option<u32> {
    if let Some(id) = single(dest, settings) {
        return Some(id);
    }
    if settings.prefix_endpoints & EXACT_OVERFLOW != 0 {
        // SAFETY: the value is copied out at once.
        if let Some(id) = unsafe { ENDPOINTS_EXACT.get(dest) } {
            return Some(*id);
        }
    }
    if dest.is_ipv4() {
        if settings.prefix_endpoints & PREFIX_ENDPOINTS_V4 == 0 {
            return None;
        }
        let bits = endpoint_prefix_len(32);
        if let Some(id) = ENDPOINTS_V4.get(Key::new(bits, dest.endpoint_v4(dest.port))) {
            return Some(*id);
        }
        ENDPOINTS_V4
            .get(Key::new(bits, dest.endpoint_v4(0)))
            .copied()
    } else {
        if settings.prefix_endpoints & PREFIX_ENDPOINTS_V6 == 0 {
            return None;
        }
        let bits = endpoint_prefix_len(128);
        if let Some(id) = ENDPOINTS_V6.get(Key::new(bits, dest.endpoint_v6(dest.port))) {
            return Some(*id);
        }
        ENDPOINTS_V6
            .get(Key::new(bits, dest.endpoint_v6(0)))
            .copied()
    }
}

/// `dest`'s upstream in `ENDPOINT_TABLE`: its slot and the next ones, up to
/// [`ENDPOINT_TABLE_PROBES`], until its own or an empty one (the daemon placed
/// every endpoint with no empty slot before it).
#[inline(always)]
fn single(dest: &DestKey, settings: &Settings) -> Option<u32> {
    let start = endpoint_slot(dest);
    for probe in 0..ENDPOINT_TABLE_PROBES {
        let slot = ENDPOINT_TABLE.get(start.wrapping_add(probe) & settings.endpoint_table_mask)?;
        if slot.upstream == 0 {
            return None;
        }
        if slot.dest == *dest {
            return Some(slot.upstream);
        }
    }
    None
}
