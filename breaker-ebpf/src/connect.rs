//! cgroup connect4/connect6: find the breaker of the destination, ask it whether the
//! connect may go, and fail it fast or redirect it to the first of its fallbacks
//! that takes it when it may not.
//!
//! The destination is resolved here, once per connect, and the answer kept in the
//! socket's record for sock_ops and sock_release. The common case (CLOSED) costs map
//! lookups and the record: no write to any breaker word.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_prandom_u32, bpf_set_retval},
    programs::SockAddrContext,
};
use breaker_common::{
    abi::{
        DestKey, FallbackHop, Settings, SocketRecord, CAUSE_OPEN_EXPIRED, ECONNREFUSED,
        IPPROTO_TCP, POLICY_DRY_RUN, RECORD_TRIAL, RECORD_WATCHED,
    },
    dest::v4_mapped,
    fallback::HopUse,
    machine::{abandon, Admission},
};

use crate::{
    breaker::{count, count_extra, jiffies, Breaker},
    destination, hops,
    maps::SETTINGS,
    probe_mark::is_probe_socket,
    record,
};

/// What the hook decides for one connect.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Proceed (possibly to a rewritten destination).
    Allow,
    /// Fail connect() with the errno set by `bpf_set_retval`.
    Deny,
}

/// The settings, when this connect is one the breaker looks at: TCP, not a probe.
#[inline(always)]
fn applies(ctx: &SockAddrContext) -> Option<&'static Settings> {
    // SAFETY: the kernel hands connect hooks a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    let settings = SETTINGS.get(0)?;
    // SAFETY: `sk` is the connecting socket, or null (checked in is_probe_socket).
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    (sa.protocol == IPPROTO_TCP && !is_probe_socket(sk, settings)).then_some(settings)
}

pub fn try_connect4(ctx: &SockAddrContext) -> Result<Verdict, i32> {
    let Some(settings) = applies(ctx) else {
        return Ok(Verdict::Allow);
    };
    // SAFETY: as in `applies`.
    let sa = unsafe { &*ctx.sock_addr };
    let dest = DestKey::ipv4(sa.user_ip4, sa.user_port as u16);
    enforce::<false>(ctx, settings, dest)
}

pub fn try_connect6(ctx: &SockAddrContext) -> Result<Verdict, i32> {
    let Some(settings) = applies(ctx) else {
        return Ok(Verdict::Allow);
    };
    // SAFETY: as in `applies`.
    let sa = unsafe { &*ctx.sock_addr };
    let dest = DestKey::ipv6(sa.user_ip6, sa.user_port as u16);
    enforce::<true>(ctx, settings, dest)
}

/// `V6_HOOK`: called from connect6, whose context has `user_ip6` (connect4's has not).
#[inline(always)]
fn enforce<const V6_HOOK: bool>(
    ctx: &SockAddrContext,
    settings: &Settings,
    dest: DestKey,
) -> Result<Verdict, i32> {
    let Some(id) = destination::judged_by(&dest, settings) else {
        return Ok(Verdict::Allow);
    };
    let breaker = match Breaker::of_record(id, &dest, false) {
        Some(b) => b,
        // A destination without failures has no breaker yet: watch it, so
        // its first failure creates one.
        None if Breaker::unfailed(id) => {
            count(id, |c| c.attempts += 1);
            watch(ctx, id, dest, 0, 0);
            return Ok(Verdict::Allow);
        }
        None => return Ok(Verdict::Allow),
    };
    let admission = breaker.admit();
    if admission == Admission::Ignore {
        // Disabled by the operator: as if breaker were not there.
        return Ok(Verdict::Allow);
    }
    breaker.count(|c| c.attempts += 1);
    match admission {
        Admission::Pass => {
            watch(ctx, breaker.upstream, dest, 0, 0);
            Ok(Verdict::Allow)
        }
        Admission::Trial { epoch } => {
            if watch(ctx, breaker.upstream, dest, RECORD_TRIAL, epoch) {
                return Ok(Verdict::Allow);
            }
            // Nobody would see this trial end, and without its SYN budget it could
            // hang on a blackhole: give its slot back and treat it as rejected,
            // as the breaker is not closed.
            breaker.update(CAUSE_OPEN_EXPIRED, |w| abandon(w, epoch));
            if breaker.policy.flags & POLICY_DRY_RUN != 0 {
                breaker.count(|c| c.would_reject += 1);
                return Ok(Verdict::Allow);
            }
            Ok(reject::<V6_HOOK>(ctx, &breaker, &dest))
        }
        Admission::Reject if breaker.policy.flags & POLICY_DRY_RUN != 0 => {
            // Dry run: count what would have happened, and let it go as usual.
            breaker.count(|c| c.would_reject += 1);
            watch(ctx, breaker.upstream, dest, 0, 0);
            Ok(Verdict::Allow)
        }
        Admission::Reject => Ok(reject::<V6_HOOK>(ctx, &breaker, &dest)),
        Admission::Ignore => Ok(Verdict::Allow),
    }
}

/// Writes this connect's record, so sock_ops reports its outcome. Without one
/// (every slot it may use is taken) the connect passes unwatched: fail open.
#[inline(always)]
fn watch(ctx: &SockAddrContext, upstream: u32, dest: DestKey, flags: u64, epoch: u8) -> bool {
    let record = SocketRecord {
        cookie: record::cookie(ctx),
        started_jiffies: jiffies(),
        flags: RECORD_WATCHED | flags,
        dest,
        upstream,
        epoch: epoch as u32,
        cb_flags_set: 0,
    };
    let written = record::write(&record).is_some();
    if !written {
        count(upstream, |c| c.unwatched += 1);
    }
    written
}

/// Rewrites the destination to another endpoint of its service that takes it
/// (a `per_endpoint` service's), else to the first fallback of its family that
/// takes it, or fails the connect with ECONNREFUSED before any SYN leaves.
/// Another upstream (or endpoint) takes it while its breaker lets its own
/// connects through, watched by that breaker; one sent to an address is no
/// breaker's: its outcome is the fallback's.
#[inline(always)]
fn reject<const V6_HOOK: bool>(
    ctx: &SockAddrContext,
    breaker: &Breaker,
    dest: &DestKey,
) -> Verdict {
    let v4 = dest.is_ipv4();
    // connect4's destination is always IPv4; only connect6 sees both.
    if v4 || V6_HOOK {
        // SAFETY: a helper without arguments.
        let spread = unsafe { bpf_get_prandom_u32() };
        if let Some(chosen) = hops::choose(breaker.upstream, v4, spread) {
            if take(ctx, &chosen.hop, chosen.how, v4) {
                redirect::<V6_HOOK>(ctx, &chosen.hop, v4);
                breaker.count(|c| c.redirected += 1);
                count_extra(breaker.upstream, |c| {
                    if let Some(n) = c.redirected_to.get_mut(chosen.slot) {
                        *n += 1;
                    }
                });
                return Verdict::Allow;
            }
        }
    }
    breaker.count(|c| c.rejected += 1);
    // SAFETY: a helper taking a plain integer; allowed in cgroup hooks (5.18+).
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    Verdict::Deny
}

/// The hop's upstream's side of a connect it takes: counted, and watched by
/// its breaker.
#[inline(always)]
fn take(ctx: &SockAddrContext, hop: &FallbackHop, how: HopUse, v4: bool) -> bool {
    let to = hop.dest(v4);
    let upstream = hop.upstream;
    match how {
        // Never chosen: choose passes a skipping hop by.
        HopUse::Skip => false,
        HopUse::Go => true,
        HopUse::GoWatched => {
            count(upstream, |c| c.attempts += 1);
            watch(ctx, upstream, to, 0, 0);
            true
        }
        HopUse::WouldSkip => {
            count(upstream, |c| {
                c.attempts += 1;
                c.would_reject += 1;
            });
            watch(ctx, upstream, to, 0, 0);
            true
        }
    }
}

/// Points the connect at `hop`'s address of its family.
#[inline(always)]
fn redirect<const V6_HOOK: bool>(ctx: &SockAddrContext, hop: &FallbackHop, v4: bool) {
    // SAFETY: the kernel hands connect hooks a valid, writable context.
    let sa = unsafe { &mut *ctx.sock_addr };
    if v4 {
        if V6_HOOK {
            set_user_ip6(sa, v4_mapped(hop.ip4));
        } else {
            sa.user_ip4 = hop.ip4;
        }
        sa.user_port = hop.port_v4;
    } else {
        // Only connect6 may write user_ip6 (the verifier refuses it in connect4);
        // the caller sends no IPv6 connect here from connect4.
        set_user_ip6(sa, hop.ip6);
        sa.user_port = hop.port_v6;
    }
}

/// The verifier takes context writes only as whole 32-bit stores, never a memcpy.
#[inline(always)]
fn set_user_ip6(sa: &mut bpf_sock_addr, addr: [u32; 4]) {
    // SAFETY: in-bounds stores to the context's user_ip6 words.
    unsafe {
        core::ptr::write_volatile(&mut sa.user_ip6[0], addr[0]);
        core::ptr::write_volatile(&mut sa.user_ip6[1], addr[1]);
        core::ptr::write_volatile(&mut sa.user_ip6[2], addr[2]);
        core::ptr::write_volatile(&mut sa.user_ip6[3], addr[3]);
    }
}
