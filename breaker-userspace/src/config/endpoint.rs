//! Endpoint syntax: an address or CIDR, with a port or any port.
//!
//! `10.0.0.5:80`, `10.0.0.0/24:80`, `10.0.0.0/24:*`, `10.0.0.5` (any port),
//! `[fd00::5]:80`, `[fd00::/64]:*`, `fd00::/64` (any port).
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use ipnet::IpNet;

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
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| EndpointParseError::Address(text.to_string()))
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
