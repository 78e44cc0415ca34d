//! Endpoint syntax: an address or CIDR, with a port or any port.
//!
//! `10.0.0.5:80`, `10.0.0.0/24:80`, `10.0.0.0/24:*`, `10.0.0.5` (any port),
//! `[fd00::5]:80`, `[fd00::/64]:*`, `[fd00::5]` (any port), `fd00::/64` (any port).
//!
//! A bare IPv6 address is refused: `fd00::1:80` could be the address `fd00::1:80`
//! or `fd00::1` port 80. Brackets say which; only a bare CIDR (`fd00::/64`) is
//! unambiguous.
//!
//! The kernel matches a connect to `::ffff:a.b.c.d` as IPv4, so a v4-mapped endpoint
//! is stored as the IPv4 endpoint it stands for: `[::ffff:10.0.0.0/120]:80` is
//! `10.0.0.0/24:80`.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use ipnet::{IpNet, Ipv4Net};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Host bits are cleared: `10.0.0.7/24` is stored as `10.0.0.0/24`.
    pub net: IpNet,
    /// `None`: any port.
    pub port: Option<u16>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointParseError {
    #[error("not an IPv4/IPv6 address or CIDR ({0})")]
    Address(String),
    #[error("port {0:?} is not a number from 1 to 65535 or '*'")]
    Port(String),
    #[error("an IPv6 endpoint with a port needs brackets, e.g. [fd00::1]:80")]
    Brackets,
    #[error("an IPv6 address must be in brackets: [{0}] for that address and any port{1}")]
    BareIpv6(String, String),
    #[error(
        "{0} is a v4-mapped address with a prefix shorter than /96: it would cover more than \
         IPv4, which the kernel matches as IPv4; write the IPv4 CIDR instead"
    )]
    MappedPrefix(String),
}

impl Endpoint {
    /// The one address:port this endpoint stands for, if it is a single host with a port.
    pub fn single_address(&self) -> Option<SocketAddr> {
        let port = self.port?;
        (self.net.prefix_len() == self.net.max_prefix_len())
            .then(|| SocketAddr::new(self.net.addr(), port))
    }

    pub fn matches(&self, addr: SocketAddr) -> bool {
        self.net.contains(&addr.ip()) && self.port.is_none_or(|p| p == addr.port())
    }
}

/// Which of `endpoints` (each with its owner `T`) takes `addr` (v4-mapped
/// already as IPv4), as the kernel decides it: a single address with a port
/// first, then the longest prefix with `addr`'s port, then the longest with any
/// port. `None`: no endpoint covers it.
pub fn owner_of<'a, T: Copy>(
    endpoints: impl IntoIterator<Item = (T, &'a Endpoint)>,
    addr: SocketAddr,
) -> Option<T> {
    endpoints
        .into_iter()
        .filter(|(_, e)| e.matches(addr))
        .max_by_key(|(_, e)| (e.port.is_some(), e.net.prefix_len()))
        .map(|(owner, _)| owner)
}

fn parse_port(text: &str) -> Result<Option<u16>, EndpointParseError> {
    if text == "*" {
        return Ok(None);
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(EndpointParseError::Port(text.to_string())),
        Ok(p) => Ok(Some(p)),
    }
}

fn parse_net(text: &str) -> Result<IpNet, EndpointParseError> {
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => text
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| EndpointParseError::Address(text.to_string()))?,
    };
    Ok(unmap_v4_net(net, text)?.trunc())
}

/// `::ffff:a.b.c.d/N` (N >= 96) as the IPv4 `a.b.c.d/(N - 96)`; other nets unchanged.
fn unmap_v4_net(net: IpNet, text: &str) -> Result<IpNet, EndpointParseError> {
    let IpNet::V6(v6) = net else {
        return Ok(net);
    };
    let Some(v4) = v6.addr().to_ipv4_mapped() else {
        return Ok(net);
    };
    let prefix = v6
        .prefix_len()
        .checked_sub(96)
        .ok_or_else(|| EndpointParseError::MappedPrefix(text.to_string()))?;
    Ok(IpNet::V4(
        Ipv4Net::new(v4, prefix).expect("a prefix of 0..=32 is valid for IPv4"),
    ))
}

/// `[::ffff:a.b.c.d]:port` as `a.b.c.d:port`, which is how the kernel sees it.
pub fn unmap_v4_addr(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

impl FromStr for Endpoint {
    type Err = EndpointParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix('[') {
            let (addr, after) = rest
                .split_once(']')
                .ok_or_else(|| EndpointParseError::Address(s.to_string()))?;
            let net = parse_net(addr)?;
            let port = match after {
                "" => None,
                _ => parse_port(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| EndpointParseError::Address(s.to_string()))?,
                )?,
            };
            return Ok(Endpoint { net, port });
        }
        // Bare: the whole thing is an address/CIDR (any port) ...
        if let Ok(net) = parse_net(s) {
            if net.addr().is_ipv6() && !s.contains('/') && s.contains(':') {
                return Err(bare_ipv6(s));
            }
            return Ok(Endpoint { net, port: None });
        }
        // ... or IPv4[/len]:port. A bare IPv6 with a port is ambiguous.
        match s.rsplit_once(':') {
            Some((addr, port)) if !addr.contains(':') => Ok(Endpoint {
                net: parse_net(addr)?,
                port: parse_port(port)?,
            }),
            Some(_) => Err(EndpointParseError::Brackets),
            None => Err(EndpointParseError::Address(s.to_string())),
        }
    }
}

/// The refusal of a bare IPv6 address, with the other reading when there is one.
fn bare_ipv6(s: &str) -> EndpointParseError {
    let port_reading = s.rsplit_once(':').and_then(|(addr, port)| {
        let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
        let addr = addr.parse::<std::net::Ipv6Addr>().ok()?;
        Some(format!(", or [{addr}]:{port} for port {port}"))
    });
    EndpointParseError::BareIpv6(s.to_string(), port_reading.unwrap_or_default())
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = self
            .port
            .map(|p| p.to_string())
            .unwrap_or_else(|| "*".into());
        let net = if self.net.prefix_len() == self.net.max_prefix_len() {
            self.net.addr().to_string()
        } else {
            self.net.to_string()
        };
        match self.net {
            IpNet::V4(_) => write!(f, "{net}:{port}"),
            IpNet::V6(_) => write!(f, "[{net}]:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's order: an address with its port, then the longest prefix
    /// with the port, then the longest with any port (`destination.rs`).
    #[test]
    fn owner_of_resolves_as_the_kernel_does() {
        let eps: Vec<(&str, Endpoint)> = [
            ("wide-port", "10.0.0.0/8:80"),
            ("narrow-any", "10.0.5.0/24"),
            ("narrower-any", "10.0.5.0/28:*"),
            ("exact", "10.0.5.7:80"),
            ("v6", "[fd00::/64]:443"),
        ]
        .into_iter()
        .map(|(o, e)| (o, e.parse().unwrap()))
        .collect();
        let owner = |a: &str| owner_of(eps.iter().map(|(o, e)| (*o, e)), a.parse().unwrap());
        for (addr, want) in [
            ("10.0.5.7:80", Some("exact")),
            // A port beats a longer prefix of any port, as the kernel's
            // port-keyed lookup comes first.
            ("10.0.5.8:80", Some("wide-port")),
            ("10.0.5.8:81", Some("narrower-any")),
            ("10.0.5.200:81", Some("narrow-any")),
            ("10.1.0.1:81", None),
            ("[fd00::1]:443", Some("v6")),
            ("[fd00::1]:80", None),
        ] {
            assert_eq!(owner(addr), want, "{addr}");
        }
    }
}
