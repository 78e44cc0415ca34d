//! The four cgroup links, pinned in `links/` under the program's name, so they
//! outlive the daemon.
use std::{fs::File, os::fd::AsFd};

use aya::{
    programs::{
        links::{CgroupAttachMode, FdLink},
        CgroupSock, CgroupSockAddr, SockOps,
    },
    Ebpf,
};
use breaker_common::abi::program_names;

use super::{pins, prog_err, program, KernelError, PinFolder};

/// In attach order: sock_release last, as it only cleans up after records the
/// others write.
const LINKED: [&str; 4] = [
    program_names::CONNECT4,
    program_names::CONNECT6,
    program_names::SOCK_OPS,
    program_names::SOCK_RELEASE,
];

/// Whether all four links are pinned.
pub fn all_pinned(pins: &PinFolder) -> bool {
    LINKED.iter().all(|name| pins.link(name).exists())
}

/// Swaps the loaded programs in under the pinned links (`BPF_LINK_UPDATE`). Fails
/// when any pinned link is missing (nothing is swapped then) or an update fails.
pub fn swap(ebpf: &mut Ebpf, pins: &PinFolder) -> Result<(), KernelError> {
    if !all_pinned(pins) {
        return Err(KernelError::MissingProgram {
            name: "a pinned link",
        });
    }
    for name in LINKED {
        let prog = ebpf
            .program(name)
            .ok_or(KernelError::MissingProgram { name })?;
        let fd = prog.fd().map_err(prog_err(name))?;
        pins::link_update(&pins.link(name), fd.as_fd())?;
    }
    Ok(())
}

/// Attaches the four programs to `cgroup` as new links, all or none, then pins
/// each in place of the previous one (removing a pin detaches an old link that
/// nothing else holds).
pub fn attach_and_pin(ebpf: &mut Ebpf, pins: &PinFolder, cgroup: &File) -> Result<(), KernelError> {
    // Until pinned, each link lives only in this Vec: an error drops (detaches) them.
    let mut made: Vec<(&'static str, FdLink)> = Vec::with_capacity(LINKED.len());
    for name in [program_names::CONNECT4, program_names::CONNECT6] {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        let id = prog
            .attach(cgroup, CgroupAttachMode::Single)
            .map_err(prog_err(name))?;
        let link = prog.take_link(id).map_err(prog_err(name))?;
        made.push((name, fd_link(name, link)?));
    }
    let name = program_names::SOCK_OPS;
    let prog: &mut SockOps = program(ebpf, name)?;
    let id = prog
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(prog_err(name))?;
    let link = prog.take_link(id).map_err(prog_err(name))?;
    made.push((name, fd_link(name, link)?));
    let name = program_names::SOCK_RELEASE;
    let prog: &mut CgroupSock = program(ebpf, name)?;
    let id = prog
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(prog_err(name))?;
    let link = prog.take_link(id).map_err(prog_err(name))?;
    made.push((name, fd_link(name, link)?));

    for (name, link) in made {
        let path = pins.link(name);
        let _ = std::fs::remove_file(&path);
        link.pin(&path).map_err(|source| KernelError::Pin {
            what: name,
            path,
            source,
        })?;
    }
    Ok(())
}

fn fd_link<L>(name: &'static str, link: L) -> Result<FdLink, KernelError>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    FdLink::try_from(link).map_err(|e| KernelError::Program {
        name,
        source: aya::programs::ProgramError::IOError(std::io::Error::other(format!(
            "the kernel made no BPF link (cgroup links need 5.7): {e}"
        ))),
    })
}
