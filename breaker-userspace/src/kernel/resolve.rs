//! The kernel's own destination lookup (`brk_test_resolve`), run under
//! BPF_PROG_TEST_RUN over the loaded maps: which configured upstream a destination
//! belongs to, as connect4/6 would decide it.
use std::net::SocketAddr;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use breaker_common::abi::{
    program_names, ResolveQuery, AF_INET, AF_INET6, RESOLVE_NONE, RESOLVE_QUERY_OFFSET,
};

use breaker_common::{abi::DestKey, dest::bytes_to_words};

use super::{prog_err, program, Kernel, KernelError};

impl Kernel {
    /// The upstream id the kernel resolves `dest` to, `None` for no configured upstream.
    pub fn resolve(&mut self, dest: SocketAddr) -> Result<Option<u32>, KernelError> {
        let name = program_names::TEST_RESOLVE;
        let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        if prog.fd().is_err() {
            prog.load().map_err(prog_err(name))?;
        }
        let query = query(dest);
        let mut data = [0u8; RESOLVE_QUERY_OFFSET + std::mem::size_of::<ResolveQuery>()];
        // SAFETY: ResolveQuery is repr(C) plain integers; its bytes are its wire form.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&query).cast::<u8>(),
                std::mem::size_of::<ResolveQuery>(),
            )
        };
        data[RESOLVE_QUERY_OFFSET..].copy_from_slice(bytes);
        let run = prog
            .test_run(TestRunOptions {
                data_in: Some(&data),
                ..TestRunOptions::new()
            })
            .map_err(prog_err(name))?;
        match run.return_value {
            RESOLVE_NONE => Ok(None),
            id if id == -2i32 as u32 => Err(KernelError::TestRun(format!(
                "{name} could not read the query for {dest}"
            ))),
            id => Ok(Some(id)),
        }
    }
}

/// The query as the connect hooks would see `dest`: IPv4 from connect4
/// (`user_ip4`), IPv6 (v4-mapped included) from connect6 (`user_ip6`).
fn query(dest: SocketAddr) -> ResolveQuery {
    let key = DestKey::from_socket_addr(dest);
    match dest {
        SocketAddr::V4(_) => ResolveQuery {
            addr: [key.addr[3], 0, 0, 0],
            port: key.port as u32,
            family: AF_INET as u32,
        },
        SocketAddr::V6(v6) => ResolveQuery {
            addr: bytes_to_words(v6.ip().octets()),
            port: key.port as u32,
            family: AF_INET6 as u32,
        },
    }
}
