//! Kernel errors as one line the operator can act on: the config field at fault,
//! or the capability that is missing, instead of a syscall's errno.
use std::error::Error;

use breaker_common::abi::map_names;

use crate::{config::Config, kernel::KernelError};

/// What went wrong, in one line, and whether the config is at fault (exit 2).
#[derive(Debug, PartialEq, Eq)]
pub struct Explained {
    pub message: String,
    pub config_fault: bool,
}

const CAPABILITIES: &str =
    "breaker needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN, to load and attach its programs";

/// `None` when there is nothing to add to the error's own text.
pub fn explain(error: &KernelError, config: &Config) -> Option<Explained> {
    let mut created_map = None;
    let mut errno = None;
    let mut cause: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(aya::maps::MapError::CreateError { name, .. }) = e.downcast_ref() {
            created_map = Some(name.clone());
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            errno = errno.or(io.raw_os_error());
        }
        cause = e.source();
    }
    let errno = errno?;
    if errno == libc::EPERM {
        return Some(Explained {
            message: format!("{CAPABILITIES} (the kernel said EPERM)"),
            config_fault: false,
        });
    }
    if errno != libc::E2BIG && errno != libc::ENOMEM {
        return None;
    }
    let what = if errno == libc::E2BIG {
        "E2BIG"
    } else {
        "ENOMEM"
    };
    let mib = config.kernel_memory_estimate(crate::config::possible_cpus()) >> 20;
    let map = created_map?;
    let (field, config_fault) = match map.as_str() {
        map_names::DEFAULT_STATES => {
            // Sized for per-address upstreams too (without a default policy,
            // at its default size).
            let n = config.map_sizes().destinations;
            (format!("default_policy.max_destinations = {n}"), true)
        }
        map_names::ENDPOINT_TABLE
        | map_names::ENDPOINTS_EXACT
        | map_names::ENDPOINTS_V4
        | map_names::ENDPOINTS_V6 => {
            let n: usize = config.upstreams.iter().map(|u| u.endpoints.len()).sum();
            (format!("upstream endpoints ({n} in all)"), true)
        }
        map_names::POLICIES
        | map_names::UPSTREAM_STATES
        | map_names::COUNTERS
        | map_names::CONNECT_DURATIONS
        | map_names::EXTRA_COUNTERS
        | map_names::RATE_WINDOWS
        | map_names::SERVICE_EJECTIONS
        | map_names::SERVICE_ENDPOINTS => (
            format!("upstream ({} upstreams)", config.upstreams.len()),
            true,
        ),
        _ => (format!("map {map}"), false),
    };
    Some(Explained {
        message: format!(
            "{field}: the kernel could not create map {map} ({what}); the config's maps need about {mib} MiB of kernel memory{}",
            if config_fault { ": lower it" } else { "" }
        ),
        config_fault,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn create_error(name: &str, errno: i32) -> KernelError {
        KernelError::Load(aya::EbpfError::MapError(aya::maps::MapError::CreateError {
            name: name.into(),
            io_error: std::io::Error::from_raw_os_error(errno),
        }))
    }

    fn config() -> Config {
        Config::parse(
            Path::new("t.toml"),
            "[default_policy]\nmax_destinations = 4000000\n",
        )
        .expect("a valid config")
    }

    #[test]
    fn a_map_too_large_names_the_field() {
        for errno in [libc::E2BIG, libc::ENOMEM] {
            let got = explain(&create_error(map_names::DEFAULT_STATES, errno), &config())
                .expect("explained");
            assert!(got.config_fault);
            assert!(
                got.message
                    .starts_with("default_policy.max_destinations = 4000000: "),
                "{}",
                got.message
            );
        }
        // The endpoint table names the endpoints, as the maps it replaced did.
        let got = explain(
            &create_error(map_names::ENDPOINT_TABLE, libc::ENOMEM),
            &config(),
        )
        .expect("explained");
        assert!(got.config_fault);
        assert!(
            got.message.starts_with("upstream endpoints ("),
            "{}",
            got.message
        );
    }

    #[test]
    fn eperm_names_the_capabilities() {
        let got =
            explain(&create_error(map_names::SETTINGS, libc::EPERM), &config()).expect("explained");
        assert!(!got.config_fault);
        assert!(got.message.contains("CAP_BPF"), "{}", got.message);
    }

    #[test]
    fn other_errors_are_left_alone() {
        assert_eq!(
            explain(&create_error(map_names::SETTINGS, libc::EINVAL), &config()),
            None
        );
    }
}
