//! `[[interface]]`: the interfaces whose packets the packet path watches (a VM's
//! tap, a bridge, a veth, the LAN side of a gateway), and `packet_action`.
use std::{collections::HashSet, net::SocketAddr};

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
    /// The flow goes to the upstream's fallback (addresses rewritten both ways);
    /// a reset where there is no fallback of the SYN's family.
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
        fallback: &[SocketAddr],
    ) -> Result<PacketAction, ConfigError> {
        match raw {
            None | Some("reject") => Ok(PacketAction::Reject),
            Some("drop") => Ok(PacketAction::Drop),
            Some("icmp") => Ok(PacketAction::Icmp),
            Some("redirect") if fallback.is_empty() => self.fail(
                format!("{at}.packet_action"),
                "\"redirect\" needs a fallback: set `fallback` on this upstream",
            ),
            // A packet from another host is never routed to the host's loopback.
            Some("redirect") if fallback.iter().any(|a| a.ip().is_loopback()) => self.fail(
                format!("{at}.packet_action"),
                "\"redirect\" cannot reach a loopback fallback from another host's \
                 packets: give the fallback an address the interface's traffic can reach",
            ),
            Some("redirect") => Ok(PacketAction::Redirect),
            Some(other) => self.fail(
                format!("{at}.packet_action"),
                format!(
                    "{other:?} is not a packet action: \"reject\" (the default), \"icmp\",                      \"drop\" or \"redirect\""
                ),
            ),
        }
    }
}
