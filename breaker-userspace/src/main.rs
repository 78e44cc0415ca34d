fn main() -> anyhow::Result<()> {
    let mut ebpf = aya::EbpfLoader::new()
        .set_max_entries("POLICIES", 4)
        .load(breaker::kernel::EBPF_OBJECT)?;
    for (name, p) in ebpf.programs_mut() {
        println!("{name}");
        match p {
            aya::programs::Program::CgroupSockAddr(p) => p.load()?,
            aya::programs::Program::SockOps(p) => p.load()?,
            _ => {}
        }
    }
    Ok(())
}
