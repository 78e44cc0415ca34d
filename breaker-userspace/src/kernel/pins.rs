//! The pin folder: what outlives the daemon. A crash, `kill -9`, an upgrade or a
//! restart leaves the programs attached and the breakers' state in place; the next
//! daemon adopts them.
//!
//! ```text
//! /sys/fs/bpf/breaker/          (daemon.pin_path)
//!   maps/UPSTREAM_STATES ...    every map, by its name
//!   links/brk_connect4 ...      the four cgroup links, by program name
//! ```
//! `maps/PIN_METADATA` says which ABI, binary, config and cgroup they belong to.
//! The folder itself is the lock: a daemon holds `flock` on it while it runs.
use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

/// `statfs.f_type` of the bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not on a bpf filesystem, and mounting one at {mount} failed: {source}")]
    NotBpffs {
        path: PathBuf,
        mount: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "another breaker daemon (pid {pid}: {command}) runs on the pins at {path}; stop it first"
    )]
    Locked {
        path: PathBuf,
        pid: u32,
        command: String,
    },
    #[error("the pins at {path} were made by a breaker of ABI {found} ({version}); this binary is ABI {ours}: run `breaker uninstall --pin-path {path}` (protection is off until the new daemon starts), then start this one")]
    Abi {
        path: PathBuf,
        found: u32,
        ours: u32,
        version: String,
    },
    #[error("the pinned map {name} holds {pinned} entries; this config needs {wanted}: run `breaker uninstall --pin-path {path}`, then start again (the breakers start CLOSED)")]
    TooSmall {
        path: PathBuf,
        name: &'static str,
        pinned: u32,
        wanted: u32,
    },
    #[error("{call} on {path}: {source}")]
    Syscall {
        call: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A pin folder, e.g. `/sys/fs/bpf/breaker`.
#[derive(Clone, Debug)]
pub struct PinFolder {
    root: PathBuf,
}

impl PinFolder {
    pub fn new(root: impl Into<PathBuf>) -> PinFolder {
        PinFolder { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    pub fn link(&self, name: &str) -> PathBuf {
        self.root.join("links").join(name)
    }

    /// Makes the folder (mounting bpffs at its parent mount point when nothing is
    /// mounted there) and takes its lock, held until the returned value is dropped.
    pub fn prepare_and_lock(&self) -> Result<PinLock, PinError> {
        ensure_bpffs(&self.root)?;
        for sub in ["maps", "links"] {
            let dir = self.root.join(sub);
            std::fs::create_dir_all(&dir).map_err(|source| PinError::Io { path: dir, source })?;
        }
        self.lock()
    }

    /// Takes the folder's lock, or names the daemon holding it.
    pub fn lock(&self) -> Result<PinLock, PinError> {
        let dir = File::open(&self.root).map_err(|source| PinError::Io {
            path: self.root.clone(),
            source,
        })?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let inode = dir.metadata().map(|m| m.ino()).unwrap_or(0);
                let pid = lock_holder(inode).unwrap_or(0);
                let command = std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| {
                        String::from_utf8_lossy(&c)
                            .replace('\0', " ")
                            .trim()
                            .to_string()
                    })
                    .unwrap_or_else(|_| "unknown".into());
                return Err(PinError::Locked {
                    path: self.root.clone(),
                    pid,
                    command,
                });
            }
            return Err(PinError::Io {
                path: self.root.clone(),
                source: err,
            });
        }
        Ok(PinLock { _dir: dir })
    }

    /// Removes the folder if nothing was pinned in it (a start that failed before
    /// loading anything, e.g. without privileges); a folder in use is kept.
    pub fn remove_if_empty(&self) {
        for sub in ["links", "maps"] {
            let _ = std::fs::remove_dir(self.root.join(sub));
        }
        let _ = std::fs::remove_dir(&self.root);
    }

    /// Whether a daemon left maps here to adopt.
    pub fn has_maps(&self) -> bool {
        self.root
            .join("maps")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
    }

    /// Removes every pin (links first, which detaches the programs, then maps) and
    /// the folder; returns what it removed. Refuses while a daemon holds the lock.
    pub fn uninstall(&self) -> Result<Vec<PathBuf>, PinError> {
        if !self.root.exists() {
            return Ok(Vec::new());
        }
        let _lock = self.lock()?;
        let mut removed = Vec::new();
        for sub in ["links", "maps"] {
            let dir = self.root.join(sub);
            let Ok(entries) = dir.read_dir() else {
                continue;
            };
            let mut paths: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for path in paths {
                std::fs::remove_file(&path).map_err(|source| PinError::Io {
                    path: path.clone(),
                    source,
                })?;
                removed.push(path);
            }
            let _ = std::fs::remove_dir(&dir);
        }
        std::fs::remove_dir(&self.root).map_err(|source| PinError::Io {
            path: self.root.clone(),
            source,
        })?;
        Ok(removed)
    }
}

/// The pin folder's lock; released when dropped (or when the process dies).
pub struct PinLock {
    _dir: File,
}

/// The pid holding an flock on the file with `inode`, from /proc/locks.
fn lock_holder(inode: u64) -> Option<u32> {
    lock_holder_in(&std::fs::read_to_string("/proc/locks").ok()?, inode)
}

fn lock_holder_in(locks: &str, inode: u64) -> Option<u32> {
    // "1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF"
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (pid, id) = (fields.get(4)?, fields.get(5)?);
        let ino: u64 = id.rsplit(':').next()?.parse().ok()?;
        (fields.get(1) == Some(&"FLOCK") && ino == inode)
            .then(|| pid.parse().ok())
            .flatten()
    })
}

/// Mounts bpffs at `/sys/fs/bpf` when `path` would not be on one.
fn ensure_bpffs(path: &Path) -> Result<(), PinError> {
    let mount = Path::new(crate::config::defaults::BPFFS);
    if is_bpffs(mount) {
        return Ok(());
    }
    let c = |p: &str| CString::new(p).expect("static string without NUL");
    let target = CString::new(mount.as_os_str().as_bytes()).expect("static path without NUL");
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c("bpf").as_ptr(),
            target.as_ptr(),
            c("bpf").as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(PinError::NotBpffs {
            path: path.to_path_buf(),
            mount: mount.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    tracing::info!(mount = %mount.display(), "mounted the bpf filesystem");
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes one struct to a valid pointer; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    st.f_type as i64 == BPF_FS_MAGIC
}

/// `BPF_OBJ_GET`: a descriptor for the object pinned at `path`.
pub fn obj_get(path: &Path) -> Result<OwnedFd, PinError> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| PinError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let mut attr = [0u8; 128];
    let get = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: ObjGet is plain integers and fits in the zeroed 128-byte attr.
    unsafe { std::ptr::write_unaligned(attr.as_mut_ptr().cast::<ObjGet>(), get) };
    let fd = bpf(BPF_OBJ_GET, &mut attr).map_err(|source| PinError::Syscall {
        call: "BPF_OBJ_GET",
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_LINK_UPDATE`: runs `program` under `link` from now on. The kernel swaps
/// them in one step, so the hook never runs without a program.
pub fn link_update(link: &Path, program: BorrowedFd<'_>) -> Result<(), PinError> {
    let link_fd = obj_get(link)?;
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let mut attr = [0u8; 128];
    let update = LinkUpdate {
        link_fd: link_fd.as_fd().as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: LinkUpdate is plain integers and fits in the zeroed 128-byte attr.
    unsafe { std::ptr::write_unaligned(attr.as_mut_ptr().cast::<LinkUpdate>(), update) };
    bpf(BPF_LINK_UPDATE, &mut attr).map_err(|source| PinError::Syscall {
        call: "BPF_LINK_UPDATE",
        path: link.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// Removes the pin at `link` and detaches its link at once (`BPF_LINK_DETACH`,
/// 5.9+): an unlinked pin alone frees its link later, from a kernel work
/// queue, and an XDP program attached again in between would find the
/// interface still taken. Where the kernel cannot detach the link, removing
/// the pin is all there is.
pub fn remove_and_detach(link: &Path) -> Result<(), PinError> {
    let link_fd = obj_get(link);
    // Detached even when the pin cannot go: a link left running beside the
    // next attach would run two programs (TCX) or refuse it (XDP).
    let removed = std::fs::remove_file(link).map_err(|source| PinError::Io {
        path: link.to_path_buf(),
        source,
    });
    let Ok(link_fd) = link_fd else {
        return removed;
    };
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(link_fd.as_fd().as_raw_fd() as u32).to_ne_bytes());
    let detached = bpf(BPF_LINK_DETACH, &mut attr)
        .map(drop)
        .map_err(|source| PinError::Syscall {
            call: "BPF_LINK_DETACH",
            path: link.to_path_buf(),
            source,
        });
    removed.and(detached)
}

/// The cgroup (its id: the cgroup folder's inode number) that the cgroup link
/// pinned at `link` is attached to; 0 once the link was detached (`bpftool link
/// detach`, or its cgroup removed).
pub fn link_cgroup_id(link: &Path) -> Result<u64, PinError> {
    let info = link_info(link)?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&info[16..24]);
    Ok(u64::from_ne_bytes(id))
}

/// The interface that the XDP or TCX link pinned at `link` is attached to; 0
/// once the link was detached (`bpftool link detach`).
pub fn link_ifindex(link: &Path) -> Result<u32, PinError> {
    let info = link_info(link)?;
    let mut index = [0u8; 4];
    index.copy_from_slice(&info[16..20]);
    Ok(u32::from_ne_bytes(index))
}

/// `BPF_OBJ_GET_INFO_BY_FD` on the link pinned at `link`: struct bpf_link_info,
/// whose type, id and prog_id come before the (8-aligned) union of per-type
/// members at offset 16; the cgroup's starts with cgroup_id, XDP's and TCX's
/// with ifindex.
fn link_info(link: &Path) -> Result<[u8; 64], PinError> {
    let link_fd = obj_get(link)?;
    let mut info = [0u8; 64];
    #[repr(C)]
    struct GetInfo {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = [0u8; 128];
    let get = GetInfo {
        bpf_fd: link_fd.as_fd().as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: GetInfo is plain integers and fits in the zeroed 128-byte attr; the
    // kernel writes at most info_len bytes into `info`, which outlives the call.
    unsafe { std::ptr::write_unaligned(attr.as_mut_ptr().cast::<GetInfo>(), get) };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map_err(|source| PinError::Syscall {
        call: "BPF_OBJ_GET_INFO_BY_FD",
        path: link.to_path_buf(),
        source,
    })?;
    Ok(info)
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<i32> {
    // SAFETY: bpf(2) reads (and may write) at most `size` bytes of `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_holder_is_found_by_inode() {
        let locks = "1: POSIX  ADVISORY  WRITE 10 00:1f:777 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 11 00:1f:778 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 4242 00:1f:777 0 EOF\n";
        assert_eq!(lock_holder_in(locks, 777), Some(4242));
        assert_eq!(lock_holder_in(locks, 779), None);
    }
}
