//! A writer of the "newc" cpio format the kernel unpacks as an initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst). Written here rather
//! than by the `cpio` program because the archive needs entries a staging folder
//! cannot hold without root: files owned by root whoever builds it, and the
//! /dev/console node the kernel opens for init's output before anything is mounted.
use std::{collections::BTreeSet, io::Write, path::Path};

use anyhow::{bail, Context};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

pub struct Archive<W: Write> {
    out: W,
    next_ino: u32,
    /// Folders already written: each path's parents are added once, before it.
    dirs: BTreeSet<String>,
}

impl<W: Write> Archive<W> {
    pub fn new(out: W) -> Archive<W> {
        Archive {
            out,
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// A regular file at `path` (absolute, in the guest) holding `data`.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> anyhow::Result<()> {
        self.parents(path)?;
        self.entry(path, S_IFREG | mode, 1, (0, 0), data)
    }

    /// A copy of the host file `from` at `path`.
    pub fn copy(&mut self, path: &str, mode: u32, from: &Path) -> anyhow::Result<()> {
        let data = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        self.file(path, mode, &data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<()> {
        self.parents(path)?;
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    pub fn char_device(&mut self, path: &str, mode: u32, rdev: (u32, u32)) -> anyhow::Result<()> {
        self.parents(path)?;
        self.entry(path, S_IFCHR | mode, 1, rdev, &[])
    }

    /// A folder (and its parents), once.
    pub fn dir(&mut self, path: &str) -> anyhow::Result<()> {
        self.parents(path)?;
        let name = path.trim_matches('/');
        if self.dirs.insert(name.to_string()) {
            self.entry(path, S_IFDIR | 0o755, 2, (0, 0), &[])?;
        }
        Ok(())
    }

    /// Writes the trailer; the archive is complete.
    pub fn finish(mut self) -> anyhow::Result<W> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn parents(&mut self, path: &str) -> anyhow::Result<()> {
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
            bail!("initramfs paths are absolute and plain: {path}");
        }
        let name = path.trim_matches('/');
        let mut at = 0;
        while let Some(i) = name[at..].find('/') {
            let parent = &name[..at + i];
            if self.dirs.insert(parent.to_string()) {
                self.entry(parent, S_IFDIR | 0o755, 2, (0, 0), &[])?;
            }
            at += i + 1;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> anyhow::Result<()> {
        // Names are stored without the leading slash, as `cpio -o` run from / would.
        let name = path.trim_start_matches('/');
        let size = u32::try_from(data.len()).context("a file over 4 GiB in the initramfs")?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0, // uid: root
            0, // gid: root
            nlink,
            0, // mtime
            size,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1, // with its NUL
            0,                     // check: unused by newc
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        // Header plus name, then the data, are each padded to 4 bytes.
        self.pad(110 + name.len() + 1)?;
        self.out.write_all(data)?;
        self.pad(data.len())?;
        Ok(())
    }

    fn pad(&mut self, len: usize) -> anyhow::Result<()> {
        let zeros = [0u8; 3];
        self.out.write_all(&zeros[..(4 - len % 4) % 4])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads entries back: (name, mode, uid, data).
    fn entries(bytes: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
        let hex = |b: &[u8]| u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let h = &bytes[at..at + 110];
            assert_eq!(&h[..6], b"070701");
            let field = |i: usize| hex(&h[6 + i * 8..14 + i * 8]);
            let (mode, uid, size, namesize) = (field(1), field(2), field(6), field(11));
            let name_end = at + 110 + namesize as usize - 1;
            let name = String::from_utf8(bytes[at + 110..name_end].to_vec()).unwrap();
            assert_eq!(bytes[name_end], 0);
            let data_at = (name_end + 1).div_ceil(4) * 4;
            let data = bytes[data_at..data_at + size as usize].to_vec();
            at = (data_at + size as usize).div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                assert_eq!(at, bytes.len());
                return out;
            }
            out.push((name, mode, uid, data));
        }
    }

    #[test]
    fn writes_parents_once_then_entries_padded_to_four_bytes() {
        let mut a = Archive::new(Vec::new());
        a.file("/usr/bin/x", 0o755, b"hello").unwrap();
        a.file("/usr/bin/yz", 0o644, b"").unwrap();
        a.symlink("/bin/sh", "busybox").unwrap();
        a.char_device("/dev/console", 0o600, (5, 1)).unwrap();
        a.dir("/usr").unwrap();
        let bytes = a.finish().unwrap();
        let got: Vec<_> = entries(&bytes)
            .into_iter()
            .map(|(n, m, u, d)| (n, m, u, String::from_utf8(d).unwrap()))
            .collect();
        let want = [
            ("usr", 0o040755, ""),
            ("usr/bin", 0o040755, ""),
            ("usr/bin/x", 0o100755, "hello"),
            ("usr/bin/yz", 0o100644, ""),
            ("bin", 0o040755, ""),
            ("bin/sh", 0o120777, "busybox"),
            ("dev", 0o040755, ""),
            ("dev/console", 0o020600, ""),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.0.as_str(), g.1, g.2, g.3.as_str()), (w.0, w.1, 0, w.2));
        }
    }

    #[test]
    fn refuses_relative_and_climbing_paths() {
        let mut a = Archive::new(Vec::new());
        assert!(a.file("usr/x", 0o644, b"").is_err());
        assert!(a.file("/usr/../x", 0o644, b"").is_err());
    }
}
