//! `brk_test_resolve`: the connect hooks' destination lookup, run on a crafted
//! query under BPF_PROG_TEST_RUN, so tests (and `breaker explain`) exercise the
//! kernel's own code over the daemon's real maps. Never attached.
use aya_ebpf::programs::TcContext;
use breaker_common::abi::{DestKey, ResolveQuery, AF_INET, RESOLVE_NONE, RESOLVE_QUERY_OFFSET};

use crate::{destination, maps::SETTINGS};

/// The upstream id the query's destination resolves to, or `RESOLVE_NONE`.
pub fn try_resolve(ctx: &TcContext) -> Result<u32, i64> {
    let q: ResolveQuery = ctx.load(RESOLVE_QUERY_OFFSET)?;
    let port = q.port as u16;
    let dest = if q.family == AF_INET as u32 {
        DestKey::ipv4(q.addr[0], port)
    } else {
        DestKey::ipv6(q.addr, port)
    };
    let Some(settings) = SETTINGS.get(0) else {
        return Ok(RESOLVE_NONE);
    };
    Ok(destination::upstream(&dest, settings).unwrap_or(RESOLVE_NONE))
}
