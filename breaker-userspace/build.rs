//! Builds the kernel programs (breaker-ebpf) with the nightly toolchain and
//! bpf-linker, for `include_bytes_aligned!` in src/kernel.rs.
fn main() -> anyhow::Result<()> {
    // aya-build watches only breaker-ebpf's folder; the programs also compile
    // breaker-common (the ABI), and a stale object fails at load on a size mismatch.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../breaker-common")
    );
    let ebpf = aya_build::Package {
        name: "breaker-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../breaker-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly)
}
