//! The one encoder of destinations and endpoint keys, used by the kernel programs
//! (from `bpf_sock_addr` / `bpf_sock_ops` fields) and by the daemon (from parsed
//! addresses), so both build byte-identical map keys.
//!
//! Byte order: addresses and ports are kept as the kernel stores them in its
//! context structs, network order in native-endian integers.
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::abi::{DestKey, EndpointV4, EndpointV6, AF_INET, AF_INET6, PORT_PREFIX_BITS};

/// The IPv4 address `a` (network order) as a v4-mapped IPv6 address, as `DestKey` keeps it.
#[inline(always)]
pub const fn v4_mapped(a: u32) -> [u32; 4] {
    [0, 0, 0xffff_u32.to_be(), a]
}

/// If `addr` (network order) is v4-mapped, its IPv4 address in network order.
#[inline(always)]
pub const fn unmap_v4(addr: [u32; 4]) -> Option<u32> {
    if addr[0] == 0 && addr[1] == 0 && addr[2] == 0xffff_u32.to_be() {
        Some(addr[3])
    } else {
        None
    }
}

impl DestKey {
    /// An IPv4 destination: `addr` as `user_ip4`, `port` as `user_port` hold them.
    #[inline(always)]
    pub const fn ipv4(addr: u32, port: u16) -> DestKey {
        DestKey {
            addr: v4_mapped(addr),
            port,
            family: AF_INET,
        }
    }

    /// An IPv6 destination; a v4-mapped address is the IPv4 destination it stands
    /// for, because that is where the connect goes.
    #[inline(always)]
    pub const fn ipv6(addr: [u32; 4], port: u16) -> DestKey {
        match unmap_v4(addr) {
            Some(v4) => DestKey::ipv4(v4, port),
            None => DestKey {
                addr,
                port,
                family: AF_INET6,
            },
        }
    }

    #[inline(always)]
    pub const fn is_ipv4(&self) -> bool {
        self.family == AF_INET
    }

    /// The LPM key data of this destination with `port` (its own, or 0 for the
    /// any-port entries), IPv4.
    #[inline(always)]
    pub const fn endpoint_v4(&self, port: u16) -> EndpointV4 {
        EndpointV4 {
            port: port.to_ne_bytes(),
            addr: self.addr[3].to_ne_bytes(),
        }
    }

    /// As [`DestKey::endpoint_v4`], IPv6.
    #[inline(always)]
    pub const fn endpoint_v6(&self, port: u16) -> EndpointV6 {
        EndpointV6 {
            port: port.to_ne_bytes(),
            addr: words_to_bytes(self.addr),
        }
    }

    /// The key of a parsed socket address.
    pub fn from_socket_addr(sock: SocketAddr) -> DestKey {
        let port = port_ne(sock.port());
        match sock.ip() {
            IpAddr::V4(ip) => DestKey::ipv4(u32::from_ne_bytes(ip.octets()), port),
            IpAddr::V6(ip) => DestKey::ipv6(bytes_to_words(ip.octets()), port),
        }
    }

    /// Back to an address, for logs and events.
    pub fn to_socket_addr(&self) -> SocketAddr {
        let port = u16::from_be_bytes(self.port.to_ne_bytes());
        if self.is_ipv4() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(self.addr[3].to_ne_bytes())), port)
        } else {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(words_to_bytes(self.addr))), port)
        }
    }
}

/// Slots of `ENDPOINT_TABLE` a lookup reads at most, from its key's
/// [`endpoint_slot`] on; an endpoint that cannot be placed within them goes to
/// `ENDPOINTS_EXACT` instead.
pub const ENDPOINT_TABLE_PROBES: u32 = 8;

/// Where `d`'s probes of `ENDPOINT_TABLE` start, before the table's mask: a
/// multiply-xorshift mix of its five words (address, then port and family).
/// Cheap on BPF (32-bit multiplies and shifts), and it spreads consecutive
/// addresses and ports over the table.
#[inline(always)]
pub const fn endpoint_slot(d: &crate::abi::DestKey) -> u32 {
    let words = [
        d.addr[0],
        d.addr[1],
        d.addr[2],
        d.addr[3],
        d.port as u32 | (d.family as u32) << 16,
    ];
    let mut h: u32 = 0x9e37_79b9;
    let mut i = 0;
    while i < words.len() {
        h = (h ^ words[i]).wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        i += 1;
    }
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// A port in the byte order the hooks read it (`user_port`, `remote_port >> 16`).
#[inline(always)]
pub const fn port_ne(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// LPM prefix length of an endpoint key whose address prefix is `addr_bits` long.
#[inline(always)]
pub const fn endpoint_prefix_len(addr_bits: u32) -> u32 {
    PORT_PREFIX_BITS + addr_bits
}

impl EndpointV4 {
    /// An IPv4 endpoint for the LPM trie; `port` None is any port.
    pub fn from_net(addr: Ipv4Addr, port: Option<u16>) -> EndpointV4 {
        EndpointV4 {
            port: port.unwrap_or(0).to_be_bytes(),
            addr: addr.octets(),
        }
    }
}

impl EndpointV6 {
    /// An IPv6 endpoint for the LPM trie; `port` None is any port.
    pub fn from_net(addr: Ipv6Addr, port: Option<u16>) -> EndpointV6 {
        EndpointV6 {
            port: port.unwrap_or(0).to_be_bytes(),
            addr: addr.octets(),
        }
    }
}

/// An address as four network-order words (as the hooks see it) to its bytes.
#[inline(always)]
pub const fn words_to_bytes(addr: [u32; 4]) -> [u8; 16] {
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

/// An address's bytes to four network-order words, as the hooks see them.
#[inline(always)]
pub const fn bytes_to_words(o: [u8; 16]) -> [u32; 4] {
    let mut words = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        words[i] = u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
        i += 1;
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_keys_hold_network_order_as_the_hooks_read_it() {
        let k = DestKey::from_socket_addr(sa("10.0.0.7:8080"));
        assert_eq!(k.family, AF_INET);
        assert_eq!(k.addr[3], u32::from_ne_bytes([10, 0, 0, 7]));
        assert_eq!(k.port.to_ne_bytes(), 8080u16.to_be_bytes());
        // What connect4 builds from user_ip4 / user_port.
        assert_eq!(
            k,
            DestKey::ipv4(u32::from_ne_bytes([10, 0, 0, 7]), port_ne(8080))
        );
        assert_eq!(k.to_socket_addr(), sa("10.0.0.7:8080"));
    }

    #[test]
    fn v4_mapped_destinations_are_their_ipv4_twin() {
        let v4 = DestKey::from_socket_addr(sa("10.0.0.7:8080"));
        assert_eq!(DestKey::from_socket_addr(sa("[::ffff:10.0.0.7]:8080")), v4);
        // What connect6 builds from user_ip6 of a v4-mapped destination.
        let mapped = v4_mapped(u32::from_ne_bytes([10, 0, 0, 7]));
        assert_eq!(DestKey::ipv6(mapped, port_ne(8080)), v4);
    }

    #[test]
    fn ipv6_keys_round_trip() {
        let k = DestKey::from_socket_addr(sa("[fd00::1]:443"));
        assert_eq!(k.family, AF_INET6);
        assert_eq!(k.addr[0].to_ne_bytes(), [0xfd, 0, 0, 0]);
        assert_eq!(k.to_socket_addr(), sa("[fd00::1]:443"));
    }

    #[test]
    fn endpoint_keys_from_a_destination_match_those_from_the_config() {
        let k = DestKey::from_socket_addr(sa("10.1.2.3:81"));
        assert_eq!(
            k.endpoint_v4(k.port),
            EndpointV4::from_net("10.1.2.3".parse().unwrap(), Some(81))
        );
        assert_eq!(
            k.endpoint_v4(0),
            EndpointV4::from_net("10.1.2.3".parse().unwrap(), None)
        );
        let k6 = DestKey::from_socket_addr(sa("[fd77::3]:82"));
        assert_eq!(
            k6.endpoint_v6(k6.port),
            EndpointV6::from_net("fd77::3".parse().unwrap(), Some(82))
        );
        assert_eq!(endpoint_prefix_len(24), 40);
    }
}
