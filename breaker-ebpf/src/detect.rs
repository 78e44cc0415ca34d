//! sock_ops: the outcome of each watched connect, counted once.
//!
//! TCP_CONNECT_CB turns on the STATE and RTO callbacks for watched sockets only; then
//! ESTABLISHED is a success, SYN_SENT -> CLOSE a refused connect, and an RTO in
//! SYN_SENT a timeout (about 1 s after the SYN, not after the 127 s of retries). The
//! flow entry is removed at the first outcome, so each connect counts at most once.
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RTO_CB, BPF_SOCK_OPS_RTO_CB_FLAG,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE, BPF_TCP_SYN_SENT,
    },
    helpers::bpf_get_socket_cookie,
    programs::SockOpsContext,
    EbpfContext,
};
use breaker_common::{
    abi::{
        Flow, CAUSE_FAILURE_OTHER, CAUSE_FAILURE_REFUSED, CAUSE_FAILURE_TIMEOUT, CAUSE_SUCCESS,
        FLOW_DEFAULT_POLICY, FLOW_TRIAL,
    },
    machine::{record, Outcome},
};

use crate::{
    breaker::{now_ms, Breaker},
    maps::FLOWS,
};

pub fn try_sock_ops(ctx: &SockOpsContext) -> Result<(), i32> {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            if FLOWS.get_ptr(&cookie(ctx)).is_some() {
                let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG;
                ctx.set_cb_flags(flags as i32)?;
            }
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => finish(ctx, CAUSE_SUCCESS)?,
        BPF_SOCK_OPS_STATE_CB => {
            if ctx.arg(0) == BPF_TCP_SYN_SENT && ctx.arg(1) == BPF_TCP_CLOSE {
                let retransmitted = unsafe { (*ctx.ops).total_retrans } > 0;
                let cause = if retransmitted {
                    CAUSE_FAILURE_OTHER
                } else {
                    CAUSE_FAILURE_REFUSED
                };
                finish(ctx, cause)?;
            }
        }
        BPF_SOCK_OPS_RTO_CB => {
            if unsafe { (*ctx.ops).state } == BPF_TCP_SYN_SENT {
                finish(ctx, CAUSE_FAILURE_TIMEOUT)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[inline(always)]
fn cookie(ctx: &SockOpsContext) -> u64 {
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// Counts the watched connect's outcome once and stops watching it.
#[inline(always)]
fn finish(ctx: &SockOpsContext, cause: u32) -> Result<(), i32> {
    let cookie = cookie(ctx);
    let Some(flow) = FLOWS.get_ptr(&cookie) else {
        return Ok(());
    };
    let flow: Flow = unsafe { *flow };
    // Callbacks of one socket run under its lock: no second outcome can race this one.
    FLOWS.remove(&cookie).map_err(|e| e as i32)?;
    // Nothing more to watch: spare the established connection further callbacks.
    let _ = ctx.set_cb_flags(0);

    let breaker = if flow.flags & FLOW_DEFAULT_POLICY != 0 {
        Breaker::for_destination(&flow.dest, false)
    } else {
        Breaker::configured(flow.upstream)
    };
    let Some(breaker) = breaker else {
        return Ok(());
    };
    let success = cause == CAUSE_SUCCESS;
    breaker.count(|c| match cause {
        CAUSE_SUCCESS => c.successes += 1,
        CAUSE_FAILURE_TIMEOUT => c.failures_timeout += 1,
        CAUSE_FAILURE_REFUSED => c.failures_refused += 1,
        _ => c.failures_other += 1,
    });
    let outcome = Outcome {
        success,
        trial_epoch: if flow.flags & FLOW_TRIAL != 0 {
            Some(flow.epoch as u8)
        } else {
            None
        },
    };
    let thresholds = breaker.policy.thresholds();
    let now = now_ms();
    breaker.update(ctx, cause, |w| record(w, outcome, now, &thresholds));
    Ok(())
}
