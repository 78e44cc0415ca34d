//! Privileged tests need root and BPF. Outside CI they skip with a reason; under
//! `CI=true` a missing privilege is a failure, never a silent skip.

/// `Ok(())` when the lab can run; otherwise the reason it cannot.
pub fn check() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (network namespaces, cgroups, BPF)".into());
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists()
        && !std::path::Path::new("/sys/fs/bpf").exists()
    {
        return Err(
            "this kernel shows no BPF support (/sys/kernel/btf/vmlinux, /sys/fs/bpf)".into(),
        );
    }
    Ok(())
}

/// Whether to run a privileged test: panics under CI when it cannot, prints why and
/// returns false elsewhere.
pub fn should_run(test: &str) -> bool {
    match check() {
        Ok(()) => true,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("{test}: {why}; under CI=true privileged tests must run, not skip")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}
