//! `brk_flow_expire`: a flow the daemon found past its timeout, under
//! BPF_PROG_TEST_RUN. The kernel's clock decides, and removing the flow decides
//! who counts it, so a timeout racing an answer counts once. Never attached.
use aya_ebpf::programs::TcContext;
use breaker_common::{
    abi::{CAUSE_FAILURE_TIMEOUT, RESOLVE_QUERY_OFFSET},
    packet::{timed_out, ExpireQuery, EXPIRE_COUNTED, EXPIRE_NOT_YET, FLOW_TRIAL},
};

use super::count;
use crate::{breaker::jiffies, detect::conclude, maps::PACKET_FLOWS};

pub fn try_expire(ctx: &TcContext) -> Result<u32, i64> {
    let q: ExpireQuery = ctx.load(RESOLVE_QUERY_OFFSET)?;
    // SAFETY: the value is copied out at once.
    let Some(flow) = (unsafe { PACKET_FLOWS.get(&q.flow) }).copied() else {
        return Ok(EXPIRE_NOT_YET);
    };
    if !timed_out(flow.started_jiffies, jiffies(), q.timeout_jiffies) {
        return Ok(EXPIRE_NOT_YET);
    }
    if PACKET_FLOWS.remove(&q.flow).is_err() {
        return Ok(EXPIRE_NOT_YET);
    }
    count(|c| c.flows_timed_out += 1);
    let trial = (flow.flags & FLOW_TRIAL != 0).then_some(flow.epoch as u8);
    conclude(ctx, flow.upstream, &flow.dest, CAUSE_FAILURE_TIMEOUT, trial);
    Ok(EXPIRE_COUNTED)
}
