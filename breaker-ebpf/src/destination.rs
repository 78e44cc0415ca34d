//! Where a connection goes, and which breaker guards it: a configured upstream (a hash
//! of single-address endpoints, then LPM tries keyed by port and address prefix) or,
//! under the default policy, a breaker of its own per destination. Shared by the connect hooks and sock_ops, which both
//! resolve the breaker from the destination rather than carry it per socket.
use aya_ebpf::maps::lpm_trie::Key;
use breaker_common::abi::{
    unmap_v4, v4_mapped, DestKey, EndpointV4, EndpointV6, Settings, AF_INET, AF_INET6,
    PORT_PREFIX_BITS, PREFIX_ENDPOINTS_V4, PREFIX_ENDPOINTS_V6,
};

use crate::{
    breaker::Breaker,
    maps::{ENDPOINTS_EXACT, ENDPOINTS_V4, ENDPOINTS_V6},
};

/// A destination as the hooks see it: address and port in network byte order.
#[derive(Clone, Copy)]
pub enum Destination {
    V4 { addr: u32, port: u16 },
    V6 { addr: [u32; 4], port: u16 },
}

impl Destination {
    /// An IPv6 destination, looking through v4-mapped addresses.
    #[inline(always)]
    pub fn from_v6(addr: [u32; 4], port: u16) -> Destination {
        match unmap_v4(addr) {
            Some(v4) => Destination::V4 { addr: v4, port },
            None => Destination::V6 { addr, port },
        }
    }

    /// The key of this destination's default-policy breaker.
    #[inline(always)]
    pub fn key(self) -> DestKey {
        match self {
            Destination::V4 { addr, port } => DestKey {
                addr: v4_mapped(addr),
                port,
                family: AF_INET,
            },
            Destination::V6 { addr, port } => DestKey {
                addr,
                port,
                family: AF_INET6,
            },
        }
    }

    /// The configured upstream. A single-address endpoint with this port wins (one
    /// hash lookup); then, if any are configured for the family, prefix endpoints
    /// with this port, then any-port ones, the longest prefix winning within each.
    #[inline(always)]
    pub fn upstream(self, settings: &Settings) -> Option<u32> {
        if let Some(id) = unsafe { ENDPOINTS_EXACT.get(self.key()) } {
            return Some(*id);
        }
        match self {
            Destination::V4 { addr, port }
                if settings.prefix_endpoints & PREFIX_ENDPOINTS_V4 != 0 =>
            {
                let addr = addr.to_ne_bytes();
                let exact = Key::new(
                    PORT_PREFIX_BITS + 32,
                    EndpointV4 {
                        port: port.to_ne_bytes(),
                        addr,
                    },
                );
                if let Some(id) = ENDPOINTS_V4.get(&exact) {
                    return Some(*id);
                }
                let any = Key::new(PORT_PREFIX_BITS + 32, EndpointV4 { port: [0; 2], addr });
                ENDPOINTS_V4.get(&any).copied()
            }
            Destination::V6 { addr, port }
                if settings.prefix_endpoints & PREFIX_ENDPOINTS_V6 != 0 =>
            {
                let addr = ipv6_bytes(addr);
                let exact = Key::new(
                    PORT_PREFIX_BITS + 128,
                    EndpointV6 {
                        port: port.to_ne_bytes(),
                        addr,
                    },
                );
                if let Some(id) = ENDPOINTS_V6.get(&exact) {
                    return Some(*id);
                }
                let any = Key::new(PORT_PREFIX_BITS + 128, EndpointV6 { port: [0; 2], addr });
                ENDPOINTS_V6.get(&any).copied()
            }
            _ => None,
        }
    }

    /// The breaker guarding this destination, if any. `create` makes a missing
    /// default-policy breaker (the connect hooks do; sock_ops only finds).
    #[inline(always)]
    pub fn breaker(self, settings: &Settings, create: bool) -> Option<Breaker> {
        match self.upstream(settings) {
            Some(upstream) => Breaker::configured(upstream),
            None if settings.default_policy_enabled != 0 => {
                Breaker::for_destination(&self.key(), create)
            }
            None => None,
        }
    }
}

#[inline(always)]
fn ipv6_bytes(addr: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = addr[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}
