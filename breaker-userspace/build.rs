//! Builds the kernel programs (breaker-ebpf) with the nightly toolchain and
//! bpf-linker, for `include_bytes_aligned!` in src/kernel.rs.
fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "breaker-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../breaker-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly)
}
