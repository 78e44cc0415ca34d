//! sock_ops: the outcome of each watched connect, counted once.
//!
//! TCP_CONNECT_CB watches a connect whose destination has a breaker by turning on
//! the STATE and RTO callbacks. Then ESTABLISHED is a success, SYN_SENT -> CLOSE a
//! refused connect, and an RTO in SYN_SENT a timeout (about 1 s after the SYN, not
//! after the 127 s of retries). The callback flags are the per-socket memory: the
//! first outcome clears them, so each connect counts at most once and an
//! established connection costs nothing more. A connect redirected to a fallback is
//! not watched (its destination is the fallback's).
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
        AF_INET, CAUSE_FAILURE_OTHER, CAUSE_FAILURE_REFUSED, CAUSE_FAILURE_TIMEOUT, CAUSE_SUCCESS,
    },
    machine::{record, Outcome, State},
};

use crate::{
    breaker::now_ms,
    destination::Destination,
    maps::{SETTINGS, TRIALS},
    probe_mark::is_probe_socket,
};

const WATCH_FLAGS: u32 = BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG;

pub fn try_sock_ops(ctx: &SockOpsContext) -> Result<(), i32> {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => watch(ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            // Fires for every active connection; only a watched one counts.
            if ctx.cb_flags() & WATCH_FLAGS != 0 {
                finish(ctx, CAUSE_SUCCESS)?;
            }
            Ok(())
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(0) == BPF_TCP_SYN_SENT && ctx.arg(1) == BPF_TCP_CLOSE => {
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
        BPF_SOCK_OPS_RTO_CB if unsafe { (*ctx.ops).state } == BPF_TCP_SYN_SENT => {
            finish(ctx, CAUSE_FAILURE_TIMEOUT)
        }
        _ => Ok(()),
    }
}

#[inline(always)]
fn destination(ctx: &SockOpsContext) -> Destination {
    // remote_port holds the network-order port in its upper 16 bits.
    let port = (ctx.remote_port() >> 16) as u16;
    if ctx.family() == AF_INET as u32 {
        Destination::V4 {
            addr: ctx.remote_ip4(),
            port,
        }
    } else {
        Destination::from_v6(ctx.remote_ip6(), port)
    }
}

/// Watches this connect if a breaker guards its destination.
#[inline(always)]
fn watch(ctx: &SockOpsContext) -> Result<(), i32> {
    let Some(settings) = SETTINGS.get(0) else {
        return Ok(());
    };
    if is_probe_socket(unsafe { (*ctx.ops).__bindgen_anon_2.sk }, settings) {
        return Ok(());
    }
    let dest = destination(ctx);
    if dest.upstream(settings).is_none() && settings.default_policy_enabled == 0 {
        return Ok(());
    }
    ctx.set_cb_flags((ctx.cb_flags() | WATCH_FLAGS) as i32)
}

/// Counts the watched connect's outcome once and stops watching it.
#[inline(always)]
fn finish(ctx: &SockOpsContext, cause: u32) -> Result<(), i32> {
    // Watching ends here, whatever follows: at most one outcome per connect.
    ctx.set_cb_flags((ctx.cb_flags() & !WATCH_FLAGS) as i32)?;
    let Some(settings) = SETTINGS.get(0) else {
        return Ok(());
    };
    let Some(breaker) = destination(ctx).breaker(settings, false) else {
        return Ok(());
    };
    let success = cause == CAUSE_SUCCESS;
    breaker.count(|c| match cause {
        CAUSE_SUCCESS => c.successes += 1,
        CAUSE_FAILURE_TIMEOUT => c.failures_timeout += 1,
        CAUSE_FAILURE_REFUSED => c.failures_refused += 1,
        _ => c.failures_other += 1,
    });
    // Trials exist only while the breaker is not CLOSED; skip the lookup otherwise.
    let trial_epoch = if breaker.state() == State::Closed {
        None
    } else {
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // Copied out at once: the entry is removed just below.
        let epoch = TRIALS.get_ptr(cookie).map(|t| unsafe { (*t).epoch } as u8);
        if epoch.is_some() {
            let _ = TRIALS.remove(cookie);
        }
        epoch
    };
    let outcome = Outcome {
        success,
        trial_epoch,
    };
    let thresholds = breaker.policy.thresholds();
    // Only a failure reads the clock (it may trip the breaker at `now`).
    let now = if success { 0 } else { now_ms() };
    breaker.update(ctx, cause, |w| record(w, outcome, now, &thresholds));
    Ok(())
}
