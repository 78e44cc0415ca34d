//! The packet path's BPF links on the watched interfaces (XDP, and TC as TCX
//! links on 6.6+), pinned in `links/` beside the cgroup links as
//! `if:ROLE:IFINDEX:NAME`: a daemon that stops or dies leaves them running on
//! the pinned maps, and the next start (or a reload) swaps its own programs in
//! under them (`BPF_LINK_UPDATE`), with no moment unwatched. On 6.6+ only:
//! before, TC programs are clsact filters, not links, and an interface's
//! links are pinned all or none.
use std::path::PathBuf;

use aya::programs::links::FdLink;
use breaker_common::abi::program_names;

use super::{pins, KernelError, PinFolder};

/// What a pinned link runs, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    XdpNative,
    XdpGeneric,
    TcIngress,
    TcEgress,
}

impl Role {
    const ALL: [Role; 4] = [
        Role::XdpNative,
        Role::XdpGeneric,
        Role::TcIngress,
        Role::TcEgress,
    ];

    fn tag(self) -> &'static str {
        match self {
            Role::XdpNative => "xdpdrv",
            Role::XdpGeneric => "xdpskb",
            Role::TcIngress => "tci",
            Role::TcEgress => "tce",
        }
    }

    /// The program the link runs.
    pub fn program(self) -> &'static str {
        match self {
            Role::XdpNative | Role::XdpGeneric => program_names::XDP_INGRESS,
            Role::TcIngress => program_names::TC_INGRESS,
            Role::TcEgress => program_names::TC_EGRESS,
        }
    }

    /// How `status` and the logs name the hook (see `packet::Attached`).
    pub fn label(self) -> &'static str {
        match self {
            Role::XdpNative => "xdp (native)",
            Role::XdpGeneric => "xdp (generic)",
            Role::TcIngress | Role::TcEgress => "tc (tcx)",
        }
    }
}

/// One pinned interface link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfacePin {
    pub role: Role,
    pub ifindex: u32,
    pub interface: String,
}

/// bpffs refuses dots in names (reserved), and interface names never hold a
/// colon: fields are split by colons, and a dot of the name is written as one.
const PREFIX: &str = "if:";

impl InterfacePin {
    fn file_name(&self) -> String {
        format!(
            "{PREFIX}{}:{}:{}",
            self.role.tag(),
            self.ifindex,
            self.interface.replace('.', ":")
        )
    }

    /// The pin's fields from its file name; None for any other file.
    fn parse(file: &str) -> Option<InterfacePin> {
        let mut parts = file.strip_prefix(PREFIX)?.splitn(3, ':');
        let tag = parts.next()?;
        let role = Role::ALL.into_iter().find(|r| r.tag() == tag)?;
        let ifindex = parts.next()?.parse().ok()?;
        let interface = parts.next().filter(|n| !n.is_empty())?.replace(':', ".");
        Some(InterfacePin {
            role,
            ifindex,
            interface,
        })
    }

    pub fn path(&self, pins: &PinFolder) -> PathBuf {
        pins.link(&self.file_name())
    }
}

/// Every interface link pinned in `pins`.
pub fn pinned(pins: &PinFolder) -> Vec<InterfacePin> {
    let Ok(entries) = pins.link("").read_dir() else {
        return Vec::new();
    };
    let mut found: Vec<InterfacePin> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| InterfacePin::parse(&e.file_name().to_string_lossy()))
        .collect();
    found.sort_by_key(|p| p.file_name());
    found
}

/// Removes `pin`: its link detaches once no descriptor holds it (the daemon
/// keeps none).
pub fn remove(pins: &PinFolder, pin: &InterfacePin) {
    let _ = std::fs::remove_file(pin.path(pins));
}

/// Pins `link` as `pin` (in place of a pin of the same name, which detaches).
pub fn pin(pins: &PinFolder, pin: &InterfacePin, link: FdLink) -> Result<(), KernelError> {
    let path = pin.path(pins);
    let _ = std::fs::remove_file(&path);
    link.pin(&path)
        .map(drop)
        .map_err(|source| KernelError::Pin {
            what: pin.role.program(),
            path,
            source,
        })
}

/// Runs `program` under the pinned link from now on (`BPF_LINK_UPDATE`).
pub fn swap(
    pins: &PinFolder,
    pin: &InterfacePin,
    program: std::os::fd::BorrowedFd<'_>,
) -> Result<(), pins::PinError> {
    pins::link_update(&pin.path(pins), program)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_name_reads_back_as_written_and_other_files_are_not_pins() {
        for role in Role::ALL {
            for interface in ["vm0", "tap.100", "br-lan"] {
                let pin = InterfacePin {
                    role,
                    ifindex: 42,
                    interface: interface.to_string(),
                };
                assert_eq!(InterfacePin::parse(&pin.file_name()), Some(pin));
            }
        }
        // bpffs refuses a dot in a pin's name.
        let pin = InterfacePin {
            role: Role::TcEgress,
            ifindex: 7,
            interface: "eth0.100".to_string(),
        };
        assert_eq!(pin.file_name(), "if:tce:7:eth0:100");
        for other in [
            "brk_connect4",
            "if:",
            "if:tci:7",
            "if:tci:7:",
            "if:xyz:7:vm0",
            "if:tce:x:vm0",
        ] {
            assert_eq!(InterfacePin::parse(other), None, "{other}");
        }
    }
}
