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
    /// The pin's file name as found (or written): a name in another spelling
    /// of the same fields (`if:tci:07:vm0`) is still removed and swapped where
    /// it is.
    file: String,
}

/// bpffs refuses dots in names (reserved), and interface names never hold a
/// colon: fields are split by colons, and a dot of the name is written as one.
const PREFIX: &str = "if:";

impl InterfacePin {
    pub fn new(role: Role, ifindex: u32, interface: &str) -> InterfacePin {
        InterfacePin {
            role,
            ifindex,
            interface: interface.to_string(),
            file: format!(
                "{PREFIX}{}:{ifindex}:{}",
                role.tag(),
                interface.replace('.', ":")
            ),
        }
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
            file: file.to_string(),
        })
    }

    pub fn path(&self, pins: &PinFolder) -> PathBuf {
        pins.link(&self.file)
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
    found.sort_by(|a, b| a.file.cmp(&b.file));
    found
}

/// Whether `pin`'s link still runs its program on its interface: its file is
/// there and the link was not detached by another hand (`bpftool link
/// detach` leaves the pin to a link that runs nothing). A link that cannot be
/// asked now (out of descriptors, say) counts as live: re-attaching a working
/// link would leave redirected flows unrewritten for a moment.
pub fn live(pins: &PinFolder, pin: &InterfacePin) -> bool {
    match pins::link_ifindex(&pin.path(pins)) {
        Ok(index) => index == pin.ifindex,
        Err(pins::PinError::Syscall { source, .. } | pins::PinError::Io { source, .. }) => {
            source.kind() != std::io::ErrorKind::NotFound
        }
        Err(_) => true,
    }
}

/// Whether the packet path's programs kept running on their pinned links until
/// now: some interface's links are pinned, and every pinned link is live on
/// the interface that still has its ifindex, an ingress and an egress among
/// them. Only then did they see every connect while no daemon ran.
pub fn all_running(pins: &PinFolder, ifindex: impl Fn(&str) -> Option<u32>) -> bool {
    let found = pinned(pins);
    !found.is_empty()
        && found.iter().any(|p| p.role == Role::TcEgress)
        && found.iter().any(|p| p.role != Role::TcEgress)
        && found
            .iter()
            .all(|p| ifindex(&p.interface) == Some(p.ifindex) && live(pins, p))
}

/// Removes `pin` and detaches its link then and there (not when the kernel
/// gets round to freeing it), so that the interface is free for the next
/// attach. A pin gone already is no error: nothing is left to do.
pub fn remove(pins: &PinFolder, pin: &InterfacePin) {
    match pins::remove_and_detach(&pin.path(pins)) {
        Ok(()) => {}
        Err(pins::PinError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
        }
        Err(e) => {
            tracing::warn!(error = %e, "an interface link's pin could not be removed cleanly")
        }
    }
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
                let pin = InterfacePin::new(role, 42, interface);
                assert_eq!(InterfacePin::parse(&pin.file), Some(pin));
            }
        }
        // bpffs refuses a dot in a pin's name.
        let pin = InterfacePin::new(Role::TcEgress, 7, "eth0.100");
        assert_eq!(pin.file, "if:tce:7:eth0:100");
        // Another spelling of the same fields is kept as found, so that it is
        // removed where it is.
        let odd = InterfacePin::parse("if:tci:07:vm0").expect("a pin");
        assert_eq!(
            (odd.role, odd.ifindex, odd.interface.as_str()),
            (Role::TcIngress, 7, "vm0")
        );
        assert_eq!(odd.file, "if:tci:07:vm0");
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
