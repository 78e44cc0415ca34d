//! The kernels of the matrix, and getting them: Debian's cloud kernel packages,
//! downloaded with `apt-get download` through an apt configuration of our own under
//! target/ (its own sources list, state and cache; the system keyring), then only
//! `boot/` and the few modules the lab needs unpacked. Nothing is installed: the
//! host's apt state and /boot stay as they are.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context};

/// What a kernel of the matrix is expected to do.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Run the whole privileged suite, and pass it.
    Suite,
    /// Older than the oldest supported kernel: `breaker run` must refuse it with its
    /// one-line error and exit status 1, attaching nothing.
    Refused,
}

pub struct Kernel {
    /// What `--kernel` takes.
    pub name: &'static str,
    /// The Debian release whose archive has the package.
    pub codename: &'static str,
    /// A metapackage that depends on the newest kernel image of its series.
    pub package: &'static str,
    pub role: Role,
}

pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "6.1",
        codename: "bookworm",
        package: "linux-image-cloud-amd64",
        role: Role::Suite,
    },
    Kernel {
        name: "6.12",
        codename: "bookworm",
        package: "linux-image-6.12-cloud-amd64",
        role: Role::Suite,
    },
    Kernel {
        name: "5.10",
        codename: "bullseye",
        package: "linux-image-cloud-amd64",
        role: Role::Refused,
    },
];

/// The cloud kernels build cgroup2, BPF, BTF, IPv6 and the serial console in, but
/// not veth, which the lab's links are. Paths under lib/modules/RELEASE/; veth
/// depends on no other module.
/// The ICMP test's router is a TUN device (tun depends on no other module). The
/// packet path's TC programs need the clsact qdisc (sch_ingress) and the BPF
/// classifier (cls_bpf) before 6.6 (TCX needs neither); neither depends on
/// another module.
const LAB_MODULES: &[&str] = &[
    "kernel/drivers/net/veth.ko",
    "kernel/drivers/net/tun.ko",
    "kernel/net/sched/sch_ingress.ko",
    "kernel/net/sched/cls_bpf.ko",
];

/// Debian's archive; BREAKER_DEBIAN_MIRROR points elsewhere (same layout).
const DEFAULT_MIRROR: &str = "http://deb.debian.org";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A kernel ready to boot.
pub struct Image {
    /// `uname -r` in the guest, from the image's file name.
    pub release: String,
    /// The image package and its version, for the report.
    pub package: String,
    pub vmlinuz: PathBuf,
    /// Uncompressed modules to load, in order.
    pub modules: Vec<PathBuf>,
}

/// The kernel, from the cache under `root` or downloaded into it.
pub fn fetch(kernel: &Kernel, root: &Path) -> anyhow::Result<Image> {
    let dir = root.join("kernels").join(kernel.name);
    if let Some(image) = cached(&dir)? {
        return Ok(image);
    }
    let apt = Apt::new(&root.join("apt").join(kernel.codename), kernel.codename)?;
    apt.update()?;
    let image_package = apt.image_package(kernel.package)?;
    eprintln!("vm: {}: downloading {image_package}", kernel.name);
    // Unpacked beside the final folder and renamed into place, so an interrupted
    // download never looks cached.
    let partial = dir.with_extension("partial");
    remove_dir_if_present(&partial)?;
    std::fs::create_dir_all(&partial)?;
    let deb = apt.download(&image_package, &partial)?;
    unpack(&deb, &partial)?;
    std::fs::remove_file(&deb)?;
    // Checked before it counts as cached.
    read_unpacked(&partial, &image_package)?;
    std::fs::write(partial.join("package"), format!("{image_package}\n"))?;
    remove_dir_if_present(&dir)?;
    std::fs::rename(&partial, &dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
    read_unpacked(&dir, &image_package)
}

fn cached(dir: &Path) -> anyhow::Result<Option<Image>> {
    match std::fs::read_to_string(dir.join("package")) {
        // A cache made before a module joined LAB_MODULES is fetched again.
        Ok(package) => Ok(read_unpacked(dir, package.trim()).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.join("package").display())),
    }
}

fn remove_dir_if_present(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// The image and modules of an unpacked package in `dir`.
fn read_unpacked(dir: &Path, package: &str) -> anyhow::Result<Image> {
    let boot = dir.join("boot");
    let mut images = Vec::new();
    for entry in std::fs::read_dir(&boot).with_context(|| format!("reading {}", boot.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(release) = name.strip_prefix("vmlinuz-") {
            images.push(release.to_string());
        }
    }
    let [release] = images.as_slice() else {
        bail!(
            "expected one vmlinuz in {}, found {images:?}",
            boot.display()
        );
    };
    let modules = LAB_MODULES
        .iter()
        .map(|m| {
            let path = dir.join("lib/modules").join(release).join(m);
            if path.is_file() {
                Ok(path)
            } else {
                bail!("{} is missing from {package}", path.display())
            }
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Image {
        release: release.clone(),
        package: package.to_string(),
        vmlinuz: boot.join(format!("vmlinuz-{release}")),
        modules,
    })
}

/// `boot/` and the lab's modules out of `deb` into `dir`; compressed modules are
/// decompressed, since busybox's insmod may not read them.
fn unpack(deb: &Path, dir: &Path) -> anyhow::Result<()> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("running dpkg-deb")?;
    let tarfile = dpkg.stdout.take().context("dpkg-deb stdout")?;
    let mut tar = Command::new("tar");
    tar.arg("-x")
        .arg("-C")
        .arg(dir)
        .arg("--wildcards")
        .arg("./boot");
    for m in LAB_MODULES {
        // Debian compresses modules from 6.x on (.ko.xz); older ones are plain.
        tar.arg(format!("./lib/modules/*/{m}*"));
    }
    let status = tar.stdin(tarfile).status().context("running tar")?;
    let dpkg_status = dpkg.wait()?;
    if !status.success() || !dpkg_status.success() {
        bail!(
            "unpacking {} failed (dpkg-deb {dpkg_status}, tar {status})",
            deb.display()
        );
    }
    for entry in walk(&dir.join("lib"))? {
        let Some(name) = entry.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let tool = match name.rsplit('.').next() {
            Some("xz") => "xz",
            Some("zst") => "zstd",
            Some("gz") => "gzip",
            _ => continue,
        };
        let status = Command::new(tool)
            .args(["-d", "-q", "-f"])
            .arg(&entry)
            .status()
            .with_context(|| format!("running {tool}"))?;
        if !status.success() {
            bail!("{tool} -d {} failed ({status})", entry.display());
        }
    }
    Ok(())
}

/// Every file under `dir`.
fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                todo.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    Ok(files)
}

/// apt with a configuration of its own: one Debian release's sources, with state
/// and cache under `dir`.
struct Apt {
    dir: PathBuf,
    options: Vec<String>,
}

impl Apt {
    fn new(dir: &Path, codename: &str) -> anyhow::Result<Apt> {
        for sub in [
            "state/lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "preferences.d",
        ] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let mirror =
            std::env::var("BREAKER_DEBIAN_MIRROR").unwrap_or_else(|_| DEFAULT_MIRROR.into());
        let mirror = mirror.trim_end_matches('/');
        // Kernel updates land in -security; the point-release ones in -updates.
        let sources = format!(
            "deb [signed-by={KEYRING}] {mirror}/debian {codename} main\n\
             deb [signed-by={KEYRING}] {mirror}/debian {codename}-updates main\n\
             deb [signed-by={KEYRING}] {mirror}/debian-security {codename}-security main\n"
        );
        std::fs::write(dir.join("sources.list"), sources)?;
        // An empty dpkg status: apt must not see (or want to change) the host's packages.
        let status = dir.join("state/status");
        if !status.exists() {
            std::fs::write(&status, "")?;
        }
        let d = |p: &str| dir.join(p).display().to_string();
        let options = [
            ("Dir::Etc::SourceList", d("sources.list")),
            ("Dir::Etc::SourceParts", d("sources.list.d")),
            ("Dir::Etc::Preferences", d("preferences")),
            ("Dir::Etc::PreferencesParts", d("preferences.d")),
            ("Dir::State", d("state")),
            ("Dir::State::status", d("state/status")),
            ("Dir::Cache", d("cache")),
            // Our own state is ours alone: the host's apt lock is not needed.
            ("Debug::NoLocking", "1".into()),
            // Root downloads into target/, which apt's sandbox user may not reach.
            ("APT::Sandbox::User", "root".into()),
            ("APT::Architecture", "amd64".into()),
        ]
        .into_iter()
        .flat_map(|(k, v)| ["-o".to_string(), format!("{k}={v}")])
        .collect();
        Ok(Apt {
            dir: dir.to_path_buf(),
            options,
        })
    }

    fn run(&self, program: &str, args: &[&str], cwd: &Path) -> anyhow::Result<String> {
        let out = Command::new(program)
            .args(&self.options)
            .args(args)
            .current_dir(cwd)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!("{program} {} failed ({})", args.join(" "), out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn update(&self) -> anyhow::Result<()> {
        self.run("apt-get", &["update", "-q"], &self.dir).map(drop)
    }

    /// The kernel image package `meta` depends on, with its version.
    fn image_package(&self, meta: &str) -> anyhow::Result<String> {
        let show = self.run("apt-cache", &["show", "--no-all-versions", meta], &self.dir)?;
        let depends = show
            .lines()
            .find_map(|l| l.strip_prefix("Depends:"))
            .with_context(|| format!("{meta} has no Depends"))?;
        // "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"
        depends
            .split(',')
            .map(str::trim)
            .find(|d| d.starts_with("linux-image-"))
            .and_then(|d| {
                let (name, version) = d.split_once(" (= ")?;
                Some(format!("{name}={}", version.trim_end_matches(')')))
            })
            .with_context(|| format!("no kernel image among {meta}'s Depends: {depends}"))
    }

    /// Downloads `package` (`name=version`) into `dir`; returns the .deb.
    fn download(&self, package: &str, dir: &Path) -> anyhow::Result<PathBuf> {
        self.run("apt-get", &["download", "-q", package], dir)?;
        let name = package.split('=').next().unwrap_or(package);
        std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}_")))
            })
            .with_context(|| format!("apt-get download left no {name}_*.deb"))
    }
}
