//! `[[interface]]`: the interfaces whose packets the packet path watches (a VM's
//! tap, a bridge, a veth, the LAN side of a gateway), and `packet_action`.
use std::{collections::HashSet, net::IpAddr};

use serde::Deserialize;

use super::{Check, ConfigError};

/// Longest interface name the kernel takes (IFNAMSIZ less its NUL).
const MAX_INTERFACE_NAME: usize = 15;

/// Where the SYNs arriving on an interface are looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Hook {
    /// XDP, native where the driver has it and generic otherwise; TC where XDP
    /// cannot go (another program holds the interface's XDP hook).
    #[default]
    Auto,
    /// XDP only: refuse to start rather than fall back.
    Xdp,
    /// TC (clsact or TCX) only.
    Tc,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Auto => "auto",
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        }
    }
}

/// One watched interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub hook: Hook,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInterface {
    name: String,
    hook: Option<String>,
}

/// What the packet path does with a SYN its breaker rejects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PacketAction {
    /// A reset from the upstream's address: the client's connect fails at once
    /// with ECONNREFUSED, as on the socket path.
    #[default]
    Reject,
    /// Dropped: the client times out.
    Drop,
    /// An ICMP port unreachable from the upstream's address: the client's connect
    /// fails at once with ECONNREFUSED; what some stacks and firewalls prefer.
    Icmp,
    /// The flow goes to the first of the upstream's fallbacks that takes it
    /// (addresses rewritten both ways); a reset where none does.
    Redirect,
}

impl PacketAction {
    pub fn name(self) -> &'static str {
        match self {
            PacketAction::Reject => "reject",
            PacketAction::Drop => "drop",
            PacketAction::Icmp => "icmp",
            PacketAction::Redirect => "redirect",
        }
    }
}

impl Check<'_> {
    pub(super) fn interfaces(&self, raw: Vec<RawInterface>) -> Result<Vec<Interface>, ConfigError> {
        let mut seen = HashSet::new();
        raw.into_iter()
            .enumerate()
            .map(|(i, r)| {
                let at = format!("interface[{i}]");
                let name = r.name;
                if name.is_empty()
                    || name.len() > MAX_INTERFACE_NAME
                    || name == "."
                    || name == ".."
                    || name
                        .chars()
                        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
                {
                    return self.fail(
                        format!("{at}.name"),
                        format!(
                            "{name:?} is not an interface name: 1 to {MAX_INTERFACE_NAME} \
                             characters, no '/', ':' or spaces"
                        ),
                    );
                }
                if !seen.insert(name.clone()) {
                    return self.fail(format!("{at}.name"), format!("{name:?} is listed twice"));
                }
                let hook = match r.hook.as_deref() {
                    None | Some("auto") => Hook::Auto,
                    Some("xdp") => Hook::Xdp,
                    Some("tc") => Hook::Tc,
                    Some(other) => {
                        return self.fail(
                            format!("{at}.hook"),
                            format!(
                            "{other:?} is not a hook: \"auto\" (the default), \"xdp\" or \"tc\""
                        ),
                        )
                    }
                };
                Ok(Interface { name, hook })
            })
            .collect()
    }

    pub(super) fn packet_action(
        &self,
        at: &str,
        raw: Option<&str>,
        has_fallback: bool,
    ) -> Result<PacketAction, ConfigError> {
        match raw {
            None | Some("reject") => Ok(PacketAction::Reject),
            Some("drop") => Ok(PacketAction::Drop),
            Some("icmp") => Ok(PacketAction::Icmp),
            Some("redirect") if !has_fallback => self.fail(
                format!("{at}.packet_action"),
                "\"redirect\" needs a fallback: set `fallbacks` on this upstream (or per_endpoint \
                 = true with more than one endpoint)",
            ),
            // Whether its fallbacks can take another host's packets is checked once
            // they are resolved (`redirects_routable`).
            Some("redirect") => Ok(PacketAction::Redirect),
            Some(other) => self.fail(
                format!("{at}.packet_action"),
                format!(
                    "{other:?} is not a packet action: \"reject\" (the default), \"icmp\", \
                     \"drop\" or \"redirect\""
                ),
            ),
        }
    }
}

/// Whether a forwarded packet rewritten to `ip` can be routed there: one host's
/// unicast address beyond this link's own scope. Fallbacks are stored unmapped
/// (a v4-mapped one is IPv4 here).
fn routable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            // 0.0.0.0/8 names this network's hosts only as a source.
            !(v4.is_loopback()
                || v4.octets()[0] == 0
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_link_local())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local())
        }
    }
}

impl Check<'_> {
    /// A packet from another host is never routed to the host's loopback, nor to
    /// an address that names no one host: the kernel drops it, and every SYN sent
    /// again would be redirected into the same void. Checked once fallbacks are
    /// resolved (a named upstream's address is known only then).
    pub(super) fn redirects_routable(
        &self,
        upstreams: &[super::Upstream],
    ) -> Result<(), ConfigError> {
        for up in upstreams {
            if up.packet_action != PacketAction::Redirect {
                continue;
            }
            // Where its flows may go: its fallbacks, and the other endpoints of
            // its service that it steers to.
            let steered_to = up.steered_to(upstreams);
            let stray = up
                .fallbacks
                .iter()
                .chain(&steered_to)
                .find_map(|f| f.addresses().find(|a| !routable(a.ip())).map(|a| (f, a)));
            if let Some((hop, addr)) = stray {
                return self.fail(
                    format!("{}.packet_action", up.written_at),
                    format!(
                        "\"redirect\" needs fallbacks (and a service's endpoints, which \
                         its flows are steered to) another host's packets can be routed \
                         to: not loopback, unspecified, multicast, broadcast or link-local \
                         ({} sends to {addr})",
                        hop.label
                    ),
                );
            }
        }
        Ok(())
    }

    /// A redirect's rewrites are done with TC's checksum helpers: an interface
    /// explicitly on XDP cannot carry them.
    pub(super) fn redirects_on_tc(
        &self,
        upstreams: &[super::Upstream],
        interfaces: &[Interface],
    ) -> Result<(), ConfigError> {
        let Some(up) = upstreams
            .iter()
            .find(|u| u.packet_action == PacketAction::Redirect)
        else {
            return Ok(());
        };
        match interfaces.iter().position(|i| i.hook == Hook::Xdp) {
            Some(i) => self.fail(
                format!("interface[{i}].hook"),
                format!(
                    "\"xdp\" cannot carry upstream {:?}'s packet_action = \"redirect\": its \
                     rewrites need TC (a tap's frames may carry offloaded checksums); use \
                     \"auto\" or \"tc\"",
                    up.name
                ),
            ),
            None => Ok(()),
        }
    }
}
