//! cgroup connect4/connect6: find the breaker of the destination, ask it whether the
//! connect may go, and fail it fast or redirect it to the fallback when it may not.
//!
//! The common case (CLOSED) costs map lookups only: no clock, no write. A HALF_OPEN
//! trial is the one admission that leaves a note for sock_ops (in `TRIALS`).
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
    EbpfContext,
};
use breaker_common::{
    abi::{
        v4_mapped, Settings, Trial, CAUSE_OPEN_EXPIRED, ECONNREFUSED, IPPROTO_TCP,
        POLICY_FALLBACK_V4, POLICY_FALLBACK_V6,
    },
    machine::{admit, Admission, BreakerWord, State},
};

use crate::{
    breaker::{now_ms, Breaker},
    destination::Destination,
    maps::{SETTINGS, TRIALS},
    probe_mark::is_probe_socket,
};

/// What the hook decides for one connect.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Proceed (possibly to a rewritten destination).
    Allow,
    /// Fail connect() with the errno set by `bpf_set_retval`.
    Deny,
}

pub fn try_connect4(ctx: &SockAddrContext) -> Result<Verdict, i32> {
    let sa = unsafe { &*ctx.sock_addr };
    let Some(settings) = SETTINGS.get(0) else {
        return Ok(Verdict::Allow);
    };
    if sa.protocol != IPPROTO_TCP || is_probe_socket(unsafe { sa.__bindgen_anon_1.sk }, settings) {
        return Ok(Verdict::Allow);
    }
    let dest = Destination::V4 {
        addr: sa.user_ip4,
        port: sa.user_port as u16,
    };
    enforce::<false>(ctx, settings, dest)
}

pub fn try_connect6(ctx: &SockAddrContext) -> Result<Verdict, i32> {
    let sa = unsafe { &*ctx.sock_addr };
    let Some(settings) = SETTINGS.get(0) else {
        return Ok(Verdict::Allow);
    };
    if sa.protocol != IPPROTO_TCP || is_probe_socket(unsafe { sa.__bindgen_anon_1.sk }, settings) {
        return Ok(Verdict::Allow);
    }
    let dest = Destination::from_v6(sa.user_ip6, sa.user_port as u16);
    enforce::<true>(ctx, settings, dest)
}

/// `V6_HOOK`: called from connect6, whose context has `user_ip6` (connect4's has not).
fn enforce<const V6_HOOK: bool>(
    ctx: &SockAddrContext,
    settings: &Settings,
    dest: Destination,
) -> Result<Verdict, i32> {
    let Some(breaker) = dest.breaker(settings, true) else {
        return Ok(Verdict::Allow);
    };
    breaker.count(|c| c.attempts += 1);
    let thresholds = breaker.policy.thresholds();
    // CLOSED, the common case, needs no clock: admit reads it only when not CLOSED.
    let clock = |w: BreakerWord| {
        if w.state() == State::Closed {
            0
        } else {
            now_ms()
        }
    };
    // Contention beyond the retry bound: fail open.
    let admission = breaker
        .update(ctx, CAUSE_OPEN_EXPIRED, |w| admit(w, clock(w), &thresholds))
        .unwrap_or(Admission::Pass);
    match admission {
        Admission::Pass => Ok(Verdict::Allow),
        Admission::Trial { epoch } => {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let trial = Trial {
                epoch: epoch as u32,
                _pad: 0,
            };
            // Without the note the trial's outcome would not count and its slot would
            // stay taken until the next reopen; fail it rather than leak the slot.
            if TRIALS.insert(cookie, trial, 0).is_err() {
                return Ok(reject::<V6_HOOK>(ctx, &breaker, dest));
            }
            Ok(Verdict::Allow)
        }
        Admission::Reject => Ok(reject::<V6_HOOK>(ctx, &breaker, dest)),
    }
}

/// Rewrites the destination to the fallback of the same family, or fails the connect
/// with ECONNREFUSED before any SYN leaves.
#[inline(always)]
fn reject<const V6_HOOK: bool>(
    ctx: &SockAddrContext,
    breaker: &Breaker,
    dest: Destination,
) -> Verdict {
    let p = breaker.policy;
    let sa = unsafe { &mut *ctx.sock_addr };
    match dest {
        Destination::V4 { .. } if p.flags & POLICY_FALLBACK_V4 != 0 => {
            if V6_HOOK {
                set_user_ip6(sa, v4_mapped(p.fallback_ip4));
            } else {
                sa.user_ip4 = p.fallback_ip4;
            }
            sa.user_port = p.fallback_port_v4;
            breaker.count(|c| c.redirected += 1);
            Verdict::Allow
        }
        Destination::V6 { .. } if p.flags & POLICY_FALLBACK_V6 != 0 => {
            set_user_ip6(sa, p.fallback_ip6);
            sa.user_port = p.fallback_port_v6;
            breaker.count(|c| c.redirected += 1);
            Verdict::Allow
        }
        _ => {
            breaker.count(|c| c.rejected += 1);
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            Verdict::Deny
        }
    }
}

/// The verifier takes context writes only as whole 32-bit stores, never a memcpy.
#[inline(always)]
fn set_user_ip6(sa: &mut bpf_sock_addr, addr: [u32; 4]) {
    unsafe {
        core::ptr::write_volatile(&mut sa.user_ip6[0], addr[0]);
        core::ptr::write_volatile(&mut sa.user_ip6[1], addr[1]);
        core::ptr::write_volatile(&mut sa.user_ip6[2], addr[2]);
        core::ptr::write_volatile(&mut sa.user_ip6[3], addr[3]);
    }
}
