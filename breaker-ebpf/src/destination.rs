//! Which configured upstream guards a destination: a hash of single-address
//! endpoints first, then LPM tries keyed by (port, address prefix), exact port
//! before any port. Only the connect hooks resolve (once per connect); sock_ops and
//! sock_release read the answer from the socket's record.
use aya_ebpf::maps::lpm_trie::Key;
use breaker_common::{
    abi::{DestKey, Settings, PREFIX_ENDPOINTS_V4, PREFIX_ENDPOINTS_V6},
    dest::endpoint_prefix_len,
};

use crate::maps::{ENDPOINTS_EXACT, ENDPOINTS_V4, ENDPOINTS_V6};

/// The configured upstream of `dest`, if any.
#[inline(always)]
pub fn upstream(dest: &DestKey, settings: &Settings) -> Option<u32> {
    // SAFETY: the value is copied out at once.
    if let Some(id) = unsafe { ENDPOINTS_EXACT.get(dest) } {
        return Some(*id);
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
