//! sock_ops: the outcome of each watched connect, counted once, for the breaker the
//! connect hook recorded in the socket's storage (not for whatever the destination
//! looks like by then).
//!
//! - TCP_CONNECT_CB: a socket with a watched record gets the STATE and RTO
//!   callbacks, only those this program needs, and only if not already on; a trial
//!   also gets its SYN retry budget.
//! - TIMEOUT_INIT: a trial's initial SYN RTO, so a trial into a blackhole fails
//!   within `trial_connect_timeout`.
//! - STATE_CB SYN_SENT -> ESTABLISHED is a success; SYN_SENT -> CLOSE refused (or
//!   other, after a retransmission); RTO_CB in SYN_SENT a timeout, about one RTO
//!   after the SYN rather than after the kernel's 127 s of retries.
//!
//! The record, not the callback flags, remembers that the outcome was counted:
//! another sock_ops program may share the flags. Once counted, the record goes.
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_RTO_CB, BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TIMEOUT_INIT,
        BPF_TCP_CLOSE, BPF_TCP_ESTABLISHED, BPF_TCP_SYN_SENT,
    },
    helpers::generated::bpf_setsockopt,
    programs::SockOpsContext,
};
use breaker_common::{
    abi::{
        SocketRecord, CAUSE_FAILURE_OTHER, CAUSE_FAILURE_REFUSED, CAUSE_FAILURE_TIMEOUT,
        CAUSE_SUCCESS,
    },
    machine::{record as record_outcome, Outcome},
};

use crate::{
    breaker::{count, now_ms, Breaker},
    maps::POLICIES,
    record::{self, claim_done, is_open, trial_epoch},
};

const WATCH_FLAGS: u32 = BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG;
const SOL_TCP: i32 = 6;
const TCP_SYNCNT: i32 = 7;

pub fn try_sock_ops(ctx: &SockOpsContext) -> Result<(), i32> {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => watch(ctx),
        BPF_SOCK_OPS_TIMEOUT_INIT => trial_rto(ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(0) == BPF_TCP_SYN_SENT => match ctx.arg(1) {
            BPF_TCP_ESTABLISHED => finish(ctx, CAUSE_SUCCESS),
            BPF_TCP_CLOSE => {
                // SAFETY: the kernel hands sock_ops a valid context.
                let retransmitted = unsafe { (*ctx.ops).total_retrans } > 0;
                finish(
                    ctx,
                    if retransmitted {
                        CAUSE_FAILURE_OTHER
                    } else {
                        CAUSE_FAILURE_REFUSED
                    },
                )
            }
            _ => Ok(()),
        },
        // SAFETY: as above.
        BPF_SOCK_OPS_RTO_CB if unsafe { (*ctx.ops).state } == BPF_TCP_SYN_SENT => {
            finish(ctx, CAUSE_FAILURE_TIMEOUT)
        }
        _ => Ok(()),
    }
}

/// Turns on the callbacks a watched connect needs.
#[inline(always)]
fn watch(ctx: &SockOpsContext) -> Result<(), i32> {
    let Some((r, p)) = record::read(record::cookie(ctx)) else {
        return Ok(());
    };
    if !is_open(&r) {
        return Ok(());
    }
    let current = ctx.cb_flags();
    let missing = WATCH_FLAGS & !current;
    // SAFETY: `p` is this socket's live record; sock_ops runs under the socket lock.
    unsafe { (*p).cb_flags_set = missing };
    if missing != 0 {
        ctx.set_cb_flags((current | missing) as i32)?;
    }
    if trial_epoch(&r).is_some() {
        let retries = POLICIES.get(r.upstream).map_or(0, |p| p.trial_syn_retries);
        if retries > 0 {
            let mut value = retries as i32;
            // SAFETY: a sock_ops context and a pointer to an int of the given size.
            unsafe {
                bpf_setsockopt(
                    ctx.ops.cast(),
                    SOL_TCP,
                    TCP_SYNCNT,
                    core::ptr::from_mut(&mut value).cast(),
                    core::mem::size_of::<i32>() as i32,
                )
            };
        }
    }
    Ok(())
}

/// A trial's initial SYN RTO. Asked again at each SYN retransmission (to judge
/// when the connect has timed out), so it answers for the whole life of a trial
/// socket, not only before its outcome.
#[inline(always)]
fn trial_rto(ctx: &SockOpsContext) -> Result<(), i32> {
    // Only sockets this program watches can be trials: skip the lookup otherwise.
    if ctx.cb_flags() & BPF_SOCK_OPS_RTO_CB_FLAG == 0 {
        return Ok(());
    }
    let Some((r, _)) = record::read(record::cookie(ctx)) else {
        return Ok(());
    };
    if trial_epoch(&r).is_none() {
        return Ok(());
    }
    if let Some(p) = POLICIES.get(r.upstream) {
        if p.trial_rto_jiffies > 0 {
            ctx.set_reply(p.trial_rto_jiffies);
        }
    }
    Ok(())
}

/// Turns off the callbacks this program turned on, and only those.
#[inline(always)]
fn stop_watching(ctx: &SockOpsContext, r: &SocketRecord) {
    if r.cb_flags_set != 0 {
        let _ = ctx.set_cb_flags((ctx.cb_flags() & !r.cb_flags_set) as i32);
    }
}

/// Counts the watched connect's outcome once, on the breaker its record names.
#[inline(always)]
fn finish(ctx: &SockOpsContext, cause: u32) -> Result<(), i32> {
    let cookie = record::cookie(ctx);
    let Some((r, p)) = record::read(cookie) else {
        return Ok(());
    };
    if !is_open(&r) {
        return Ok(());
    }
    let success = cause == CAUSE_SUCCESS;
    let trial_epoch = trial_epoch(&r);
    // A failed trial keeps its record and its RTO callback: TIMEOUT_INIT must keep
    // answering until the kernel gives up on the SYN (see `trial_rto`);
    // sock_release removes the record.
    let keep = trial_epoch.is_some() && !success;
    if !keep {
        stop_watching(ctx, &r);
    }
    if !claim_done(p) {
        // Already ended: abandoned by the application, or counted before.
        return Ok(());
    }
    if !keep {
        record::remove(cookie, p);
    }
    count(r.upstream, |c| match cause {
        CAUSE_SUCCESS => c.successes += 1,
        CAUSE_FAILURE_TIMEOUT => c.failures_timeout += 1,
        CAUSE_FAILURE_REFUSED => c.failures_refused += 1,
        _ => c.failures_other += 1,
    });
    // Only a failure creates a default-policy breaker: healthy destinations stay out
    // of the LRU map.
    let Some(breaker) = Breaker::of_record(r.upstream, &r.dest, !success) else {
        return Ok(());
    };
    let outcome = Outcome {
        success,
        trial_epoch,
    };
    let thresholds = breaker.policy.thresholds();
    // Only a failure reads the clock (it may trip the breaker at `now`).
    let now = if success { 0 } else { now_ms() };
    breaker.update(ctx, cause, |w| record_outcome(w, outcome, now, &thresholds));
    Ok(())
}
