//! cgroup connect4/connect6: find the breaker of the destination, ask it whether the
//! connect may go, and fail it fast or redirect it to the fallback when it may not.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_socket_cookie, bpf_set_retval},
    maps::lpm_trie::Key,
    programs::SockAddrContext,
    EbpfContext,
};
use breaker_common::{
    abi::{
        unmap_v4, v4_mapped, DestKey, EndpointV4, EndpointV6, Flow, AF_INET, AF_INET6,
        CAUSE_OPEN_EXPIRED, ECONNREFUSED, FLOW_DEFAULT_POLICY, FLOW_TRIAL, IPPROTO_TCP,
        POLICY_FALLBACK_V4, POLICY_FALLBACK_V6, PORT_PREFIX_BITS,
    },
    machine::{admit, Admission},
};

use crate::{
    breaker::{now_ms, Breaker},
    maps::{ENDPOINTS_V4, ENDPOINTS_V6, FLOWS, SETTINGS},
};

/// What the hook decides for one connect.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Proceed (possibly to a rewritten destination).
    Allow,
    /// Fail connect() with the errno set by `bpf_set_retval`.
    Deny,
}
use Verdict::{Allow as ALLOW, Deny as DENY};

/// Where a connect is going, as the hook saw it (network byte order).
#[derive(Clone, Copy)]
enum Destination {
    V4 { addr: u32, port: u16 },
    V6 { addr: [u32; 4], port: u16 },
}

pub fn try_connect4(ctx: &SockAddrContext) -> Result<Verdict, i32> {
    let sa = unsafe { &*ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP || is_probe_socket(ctx) {
        return Ok(ALLOW);
    }
    let dest = Destination::V4 {
        addr: sa.user_ip4,
        port: sa.user_port as u16,
    };
    enforce::<false>(ctx, dest)
}

pub fn try_connect6(ctx: &SockAddrContext) -> Result<Verdict, i32> {
    let sa = unsafe { &*ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP || is_probe_socket(ctx) {
        return Ok(ALLOW);
    }
    let addr = sa.user_ip6;
    let port = sa.user_port as u16;
    let dest = match unmap_v4(addr) {
        Some(v4) => Destination::V4 { addr: v4, port },
        None => Destination::V6 { addr, port },
    };
    enforce::<true>(ctx, dest)
}

/// The daemon's probe sockets carry its mark and are never held back.
#[inline(always)]
fn is_probe_socket(ctx: &SockAddrContext) -> bool {
    let Some(settings) = SETTINGS.get(0) else {
        return false;
    };
    if settings.probe_mark == 0 {
        return false;
    }
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    if sk.is_null() {
        return false;
    }
    unsafe { (*sk).mark == settings.probe_mark }
}

/// `V6_HOOK`: called from connect6, whose context has `user_ip6` (connect4's has not).
fn enforce<const V6_HOOK: bool>(ctx: &SockAddrContext, dest: Destination) -> Result<Verdict, i32> {
    let (breaker, key) = match lookup(dest) {
        Some(upstream) => (Breaker::configured(upstream).ok_or(-1)?, None),
        None => {
            let enabled = SETTINGS
                .get(0)
                .map(|s| s.default_policy_enabled != 0)
                .unwrap_or(false);
            if !enabled {
                return Ok(ALLOW);
            }
            let key = dest_key(dest);
            (Breaker::for_destination(&key, true).ok_or(-1)?, Some(key))
        }
    };
    breaker.count(|c| c.attempts += 1);
    let thresholds = breaker.policy.thresholds();
    let now = now_ms();
    // Contention beyond the retry bound: fail open, the connect is still watched.
    let admission = breaker
        .update(ctx, CAUSE_OPEN_EXPIRED, |w| admit(w, now, &thresholds))
        .unwrap_or(Admission::Pass);
    let (flags, epoch) = match admission {
        Admission::Pass => (0, 0),
        Admission::Trial { epoch } => (FLOW_TRIAL, epoch as u32),
        Admission::Reject => return Ok(reject::<V6_HOOK>(ctx, &breaker, dest)),
    };
    let flow = Flow {
        upstream: breaker.upstream,
        flags: flags
            | if key.is_some() {
                FLOW_DEFAULT_POLICY
            } else {
                0
            },
        epoch,
        _pad: 0,
        dest: key.unwrap_or_default(),
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    FLOWS.insert(&cookie, &flow, 0).map_err(|e| e as i32)?;
    Ok(ALLOW)
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
            if !V6_HOOK {
                sa.user_ip4 = p.fallback_ip4;
            } else {
                set_user_ip6(sa, v4_mapped(p.fallback_ip4));
            }
            sa.user_port = p.fallback_port_v4;
            breaker.count(|c| c.redirected += 1);
            ALLOW
        }
        Destination::V6 { .. } if p.flags & POLICY_FALLBACK_V6 != 0 => {
            set_user_ip6(sa, p.fallback_ip6);
            sa.user_port = p.fallback_port_v6;
            breaker.count(|c| c.redirected += 1);
            ALLOW
        }
        _ => {
            breaker.count(|c| c.rejected += 1);
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            DENY
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

/// The configured upstream of `dest`: an endpoint with the exact port first, then an
/// any-port endpoint; the longest prefix wins within each.
#[inline(always)]
fn lookup(dest: Destination) -> Option<u32> {
    match dest {
        Destination::V4 { addr, port } => {
            let addr = addr.to_ne_bytes();
            let exact = Key::new(
                PORT_PREFIX_BITS + 32,
                EndpointV4 {
                    port: port.to_ne_bytes(),
                    addr,
                },
            );
            if let Some(id) = ENDPOINTS_V4.get(&exact) {
                return Some(*id);
            }
            let any = Key::new(PORT_PREFIX_BITS + 32, EndpointV4 { port: [0; 2], addr });
            ENDPOINTS_V4.get(&any).copied()
        }
        Destination::V6 { addr, port } => {
            let addr = ipv6_bytes(addr);
            let exact = Key::new(
                PORT_PREFIX_BITS + 128,
                EndpointV6 {
                    port: port.to_ne_bytes(),
                    addr,
                },
            );
            if let Some(id) = ENDPOINTS_V6.get(&exact) {
                return Some(*id);
            }
            let any = Key::new(PORT_PREFIX_BITS + 128, EndpointV6 { port: [0; 2], addr });
            ENDPOINTS_V6.get(&any).copied()
        }
    }
}

#[inline(always)]
fn ipv6_bytes(addr: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = addr[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

#[inline(always)]
fn dest_key(dest: Destination) -> DestKey {
    match dest {
        Destination::V4 { addr, port } => DestKey {
            addr: v4_mapped(addr),
            port,
            family: AF_INET,
        },
        Destination::V6 { addr, port } => DestKey {
            addr,
            port,
            family: AF_INET6,
        },
    }
}
