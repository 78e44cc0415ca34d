//! What the daemon needs of the kernel. Checked at `breaker run` start, so an old
//! kernel gets one clear line naming what it lacks, not a verifier or attach error
//! halfway through: a release from 5.18 on has it all; an older one is asked
//! feature by feature (a backported kernel runs).

/// Linux 5.18 brought `bpf_set_retval` to cgroup hooks, which the connect hooks use
/// to fail a connect with ECONNREFUSED; every other feature the daemon uses is older
/// (see the README's Requirements).
pub const MIN_KERNEL: (u32, u32) = (5, 18);
const MIN_KERNEL_REASON: &str = "bpf_set_retval in cgroup connect hooks";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelVersionError {
    #[error(
        "kernel {release} lacks {feature}, which came in Linux {since}: breaker cannot run on it"
    )]
    Missing {
        release: String,
        feature: &'static str,
        since: &'static str,
    },
    #[error(
        "kernel {release} is too old: breaker needs Linux {}.{} or newer ({MIN_KERNEL_REASON})",
        MIN_KERNEL.0,
        MIN_KERNEL.1
    )]
    TooOld { release: String },
    #[error("cannot read the kernel release (uname): {0}")]
    Uname(String),
}

/// `(major, minor)` of a kernel release such as `6.18.44-fc-v669` or `6.1-rc3`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let (major, rest) = release.trim().split_once('.')?;
    let minor_len = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    Some((major.parse().ok()?, rest[..minor_len].parse().ok()?))
}

/// Whether `release` is new enough. A release that does not parse is let through:
/// refusing a kernel over its naming would be worse than a later, clear load error.
pub fn check_release(release: &str) -> Result<(), KernelVersionError> {
    match parse_release(release) {
        Some(version) if version < MIN_KERNEL => Err(KernelVersionError::TooOld {
            release: release.to_string(),
        }),
        Some(_) => Ok(()),
        None => {
            tracing::warn!(
                release,
                "cannot tell the kernel version; assuming it is new enough"
            );
            Ok(())
        }
    }
}

/// Checks the running kernel: a release from 5.18 on has everything; an older
/// one is asked, feature by feature, and the first it lacks is named (a kernel
/// with the features backported runs).
pub fn check_running_kernel() -> Result<(), KernelVersionError> {
    let release = running_release()?;
    match check_release(&release) {
        Ok(()) => Ok(()),
        Err(KernelVersionError::TooOld { release }) => probe(&release),
        Err(e) => Err(e),
    }
}

/// Loads the object (its maps need the ring buffer, 5.8, and mmapable arrays,
/// 5.5), then a program per later feature, without attaching anything.
fn probe(release: &str) -> Result<(), KernelVersionError> {
    use aya::programs::{CgroupSockAddr, SchedClassifier};
    use breaker_common::abi::program_names;
    crate::kernel::raise_memlock_limit();
    let missing = |feature, since| KernelVersionError::Missing {
        release: release.to_string(),
        feature,
        since,
    };
    let mut ebpf = aya::EbpfLoader::new()
        .load(crate::kernel::EBPF_OBJECT)
        .map_err(|_| missing("the BPF ring buffer map", "5.8"))?;
    let atomics = ebpf
        .program_mut(program_names::NEED_ATOMICS)
        .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
        .is_some_and(|p| p.load().is_ok());
    if !atomics {
        return Err(missing(
            "BPF atomics (compare-and-swap on a map value)",
            "5.12",
        ));
    }
    let retval = ebpf
        .program_mut(program_names::NEED_RETVAL)
        .and_then(|p| <&mut CgroupSockAddr>::try_from(p).ok())
        .is_some_and(|p| p.load().is_ok());
    if !retval {
        return Err(missing("bpf_set_retval in cgroup connect hooks", "5.18"));
    }
    tracing::warn!(
        release,
        "an older kernel than 5.18, but with every feature breaker needs (backported?)"
    );
    Ok(())
}

fn running_release() -> Result<String, KernelVersionError> {
    // SAFETY: utsname is plain bytes; uname fills it in.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes only into the struct we pass.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(KernelVersionError::Uname(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    // SAFETY: uname NUL-terminates every field.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) };
    Ok(release.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_release_strings() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("5.10.0-28-cloud-amd64"), Some((5, 10)));
        assert_eq!(parse_release("4.19.0"), Some((4, 19)));
        assert_eq!(parse_release("6.1-rc3"), Some((6, 1)));
        assert_eq!(parse_release("5.18"), Some((5, 18)));
        assert_eq!(parse_release("6"), None);
        assert_eq!(parse_release("linux"), None);
        assert_eq!(parse_release(""), None);
    }

    #[test]
    fn refuses_kernels_before_5_18() {
        assert_eq!(check_release("6.18.44-fc-v669"), Ok(()));
        assert_eq!(check_release("5.18.0"), Ok(()));
        assert_eq!(check_release("10.0.0"), Ok(()), "compared as numbers");
        let err = check_release("5.10.0-28-cloud-amd64").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel 5.10.0-28-cloud-amd64 is too old: breaker needs Linux 5.18 or newer (bpf_set_retval in cgroup connect hooks)"
        );
        assert!(check_release("4.19.0").is_err());
        assert!(check_release("5.17.15").is_err());
    }

    #[test]
    fn the_running_kernel_has_a_release() {
        let release = running_release().unwrap();
        assert!(parse_release(&release).is_some(), "{release}");
    }
}
