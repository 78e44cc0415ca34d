//! The four cgroup links, pinned in `links/` under the program's name, so they
//! outlive the daemon.
use std::{fs::File, os::fd::AsFd};

use aya::{
    programs::{
        links::{CgroupAttachMode, FdLink, PinnedLink},
        loaded_programs, CgroupSock, CgroupSockAddr, ProgramInfo, SockOps,
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

/// Whether every pinned link is attached to the cgroup whose inode is
/// `cgroup_ino`, or which one is not (missing, detached by hand, elsewhere).
pub fn attached_to(pins: &PinFolder, cgroup_ino: u64) -> Result<(), String> {
    for name in LINKED {
        match pins::link_cgroup_id(&pins.link(name)) {
            Ok(id) if id == cgroup_ino => {}
            Ok(0) => return Err(format!("link {name} is detached")),
            Ok(_) => return Err(format!("link {name} is on another cgroup")),
            Err(e) => return Err(format!("link {name}: {e}")),
        }
    }
    Ok(())
}

/// The program each pinned link runs, by our name for it; links whose pin is
/// missing or unreadable are left out.
pub fn program_ids(pins: &PinFolder) -> Vec<(&'static str, u32)> {
    LINKED
        .iter()
        .filter_map(|name| {
            let link = FdLink::from(PinnedLink::from_pin(pins.link(name)).ok()?);
            Some((*name, link.info().ok()?.program_id()))
        })
        .collect()
}

/// Every map the programs under the pinned links use, by kernel id; an error
/// names a link that is missing or runs a program that is not ours by name.
pub fn used_map_ids(pins: &PinFolder) -> Result<std::collections::HashSet<u32>, String> {
    let ids = program_ids(pins);
    if ids.len() != LINKED.len() {
        return Err("a link pin is missing".into());
    }
    let mut programs: std::collections::HashMap<u32, ProgramInfo> = loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.iter().any(|(_, id)| *id == p.id()))
        .map(|p| (p.id(), p))
        .collect();
    let mut used = std::collections::HashSet::new();
    for (name, id) in ids {
        let info = programs
            .remove(&id)
            .ok_or_else(|| format!("link {name}: its program {id} is gone"))?;
        if info.name_as_str() != Some(name) {
            return Err(format!(
                "link {name} runs program {:?}",
                info.name_as_str().unwrap_or_default()
            ));
        }
        let maps = info
            .map_ids()
            .map_err(|e| format!("program {name}: {e}"))?
            .ok_or("the kernel does not list a program's maps")?;
        used.extend(maps);
    }
    Ok(used)
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

/// `link` as a BPF link that can be pinned; an error when the kernel attached
/// it another way (cgroup links need 5.7, TCX links 6.6).
pub(super) fn fd_link<L>(name: &'static str, link: L) -> Result<FdLink, KernelError>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    FdLink::try_from(link).map_err(|e| KernelError::Program {
        name,
        source: aya::programs::ProgramError::IOError(std::io::Error::other(format!(
            "the kernel made no BPF link (cgroup links need 5.7, TCX links 6.6): {e}"
        ))),
    })
}
