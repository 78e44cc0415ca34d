//! `brk_flow_expire`: a flow the daemon found past its timeout, under
//! BPF_PROG_TEST_RUN. The kernel's clock decides, and removing the flow decides
//! who counts it, so a timeout racing an answer counts once. Never attached.
use aya_ebpf::{bindings::BPF_NOEXIST, programs::TcContext};
use breaker_common::{
    abi::{CAUSE_FAILURE_TIMEOUT, RESOLVE_QUERY_OFFSET},
    packet::{
        timed_out, ExpireQuery, FlowRecord, EXPIRE_COUNTED, EXPIRE_NOT_YET, FLOW_ENDED, FLOW_TRIAL,
    },
};

use super::count;
use crate::{breaker::jiffies, detect::conclude, maps::PACKET_FLOWS};

pub fn try_expire(ctx: &TcContext) -> Result<u32, i64> {
    let q: ExpireQuery = ctx.load(RESOLVE_QUERY_OFFSET)?;
    // SAFETY: the value is copied out at once.
    let Some(flow) = (unsafe { PACKET_FLOWS.get(q.flow) }).copied() else {
        return Ok(EXPIRE_NOT_YET);
    };
    if !timed_out(flow.started_jiffies, jiffies(), q.timeout_jiffies) {
        return Ok(EXPIRE_NOT_YET);
    }
    // Removing the flow is what makes this run the one that counts it.
    if PACKET_FLOWS.remove(q.flow).is_err() {
        return Ok(EXPIRE_NOT_YET);
    }
    // An ended flow kept past its time: forgotten, nothing counted.
    if flow.flags & FLOW_ENDED != 0 {
        return Ok(EXPIRE_NOT_YET);
    }
    // Kept, ended, for the client's retransmitted SYNs. A new SYN of the same
    // ports that came in between keeps its own flow (NOEXIST).
    let ended = FlowRecord {
        flags: flow.flags | FLOW_ENDED,
        started_jiffies: jiffies(),
        ..flow
    };
    let _ = PACKET_FLOWS.insert(q.flow, ended, BPF_NOEXIST as u64);
    count(|c| c.flows_timed_out += 1);
    let trial = (flow.flags & FLOW_TRIAL != 0).then_some(flow.epoch as u8);
    conclude(
        flow.upstream,
        &flow.dest,
        CAUSE_FAILURE_TIMEOUT,
        trial,
        flow.started_jiffies,
    );
    Ok(EXPIRE_COUNTED)
}
