//! Finding the cgroup to attach to.
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read /proc/self/mounts: {0}")]
    Mounts(#[source] std::io::Error),
    #[error("no cgroup2 filesystem is mounted (see /proc/self/mounts); breaker needs cgroup v2")]
    NoCgroup2,
    #[error("cgroup: {path} does not exist")]
    Missing { path: PathBuf },
    #[error("cgroup: {path} is not inside the cgroup2 mount {root}")]
    Outside { path: PathBuf, root: PathBuf },
    #[error("cgroup: {path} is not a cgroup v2 directory (a cgroup v1 hierarchy, or a plain directory?)")]
    NotCgroup2 { path: PathBuf },
}

/// statfs(2)'s f_type of a cgroup2 filesystem.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The mount point of the cgroup2 hierarchy: `/sys/fs/cgroup` on most hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(CgroupError::Mounts)?;
    cgroup2_root_in(&mounts).ok_or(CgroupError::NoCgroup2)
}

fn cgroup2_root_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| unescape_mount_path(dir))
    })
}

/// Undoes the octal escapes /proc/self/mounts writes for space, tab, newline and
/// backslash in a path (`\040`, `\011`, `\012`, `\134`).
fn unescape_mount_path(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'\\')
            .then(|| bytes.get(i + 1..i + 4))
            .flatten()
            .filter(|octal| octal.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|octal| {
                let value = octal
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                u8::try_from(value).ok()
            });
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The configured cgroup (absolute, or relative to the cgroup2 root), or the root,
/// as a real path (`.`, `..` and symlinks resolved) that is a cgroup v2 directory
/// inside the cgroup2 mount. Attaching anywhere else fails late, in bpf_link_create.
pub fn resolve(configured: Option<&Path>) -> Result<PathBuf, CgroupError> {
    let root = cgroup2_root()?;
    // join() with an absolute path is that path.
    let path = configured.map_or_else(|| root.clone(), |p| root.join(p));
    let real =
        std::fs::canonicalize(&path).map_err(|_| CgroupError::Missing { path: path.clone() })?;
    let real_root = std::fs::canonicalize(&root).unwrap_or(root);
    if !real.starts_with(&real_root) {
        return Err(CgroupError::Outside {
            path: real,
            root: real_root,
        });
    }
    if !is_cgroup2_fs(&real) || !real.join("cgroup.procs").exists() {
        return Err(CgroupError::NotCgroup2 { path: real });
    }
    Ok(real)
}

fn is_cgroup2_fs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own, and reads a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
    let f_type = st.f_type as i64;
    f_type == CGROUP2_SUPER_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_layouts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_root_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_root_in("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_root_in("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn unescapes_octal_escapes_in_the_mount_point() {
        let mounts = "proc /proc proc rw 0 0\ncgroup2 /mnt/my\\040cgroups\\011v2\\134x cgroup2 rw,nosuid 0 0\n";
        assert_eq!(
            cgroup2_root_in(mounts),
            Some(PathBuf::from("/mnt/my cgroups\tv2\\x"))
        );
        // A backslash not followed by three octal digits is kept as it is.
        assert_eq!(unescape_mount_path("/a\\09b\\"), PathBuf::from("/a\\09b\\"));
    }
}
