//! Where a connect (or a packet-path flow) goes while its breaker rejects: for
//! an endpoint of a `per_endpoint` service, another endpoint of the service
//! that takes it (steering, over every endpoint in a `bpf_loop`); else, or when
//! none does, the first of the upstream's fallbacks that takes it. Used by the
//! connect hooks and the packet ingress alike.
use aya_ebpf::{cty::c_void, helpers::generated::bpf_loop};
use breaker_common::{
    abi::{FallbackHop, MAX_SERVICE_ENDPOINTS, STEERED_SLOT},
    fallback::{self, HopUse, Steer},
};

use crate::{
    breaker::hop_use,
    maps::{POLICIES, SERVICE_ENDPOINTS},
};

/// The hop chosen, what it does with the connect, and the slot of
/// `ExtraCounters.redirected_to` that counts it.
pub struct Chosen {
    pub hop: FallbackHop,
    pub how: HopUse,
    pub slot: usize,
}

/// [`chosen_packed`]'s answer for no hop.
const NO_HOP: u32 = u32::MAX;
/// [`chosen_packed`]: the index is among the service's endpoints.
const STEERED: u32 = 1 << 16;

/// The hop a rejected connect of upstream `upstream` (family `v4`) goes to, a
/// steered one picked with `spread`; None: the connect fails fast.
#[inline(always)]
pub fn choose(upstream: u32, v4: bool, spread: u32) -> Option<Chosen> {
    let packed = chosen_packed(upstream, v4 as u32, spread);
    if packed == NO_HOP {
        return None;
    }
    let index = (packed & 0xff) as usize;
    let how = HopUse::from_u32((packed >> 8) & 0xff);
    let p = POLICIES.get(upstream)?;
    if packed & STEERED != 0 {
        let service = SERVICE_ENDPOINTS.get(p.steer_row.checked_sub(1)?)?;
        let hop = *service.hops.get(index)?;
        Some(Chosen {
            hop,
            how,
            slot: STEERED_SLOT,
        })
    } else {
        let hop = *p.fallbacks.get(index)?;
        Some(Chosen {
            hop,
            how,
            slot: index,
        })
    }
}

/// [`choose`] as one integer: the index in the low byte, the [`HopUse`] above
/// it, [`STEERED`] for an endpoint of the service; [`NO_HOP`] for none. Out
/// of line, with scalar arguments: the verifier walks the hops once, not once
/// per path into a reject.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn chosen_packed(upstream: u32, v4: u32, spread: u32) -> u32 {
    let Some(p) = POLICIES.get(upstream) else {
        return NO_HOP;
    };
    if p.steer_row != 0 {
        let mut walk = Walk {
            row: p.steer_row - 1,
            _pad: 0,
            steer: Steer::new(upstream, v4 != 0, spread),
        };
        // SAFETY: the callback is a function of this program taking the
        // context given here, a live stack value; bpf_loop bounds the calls.
        unsafe {
            bpf_loop(
                MAX_SERVICE_ENDPOINTS as u32,
                consider_endpoint as *mut c_void,
                (&mut walk as *mut Walk).cast(),
                0,
            )
        };
        if let Some((j, how)) = walk.steer.picked() {
            return (j as u32 & 0xff) | how.to_u32() << 8 | STEERED;
        }
    }
    match fallback::choose(p, v4 != 0, hop_use) {
        Some((i, how)) => (i as u32 & 0xff) | how.to_u32() << 8,
        None => NO_HOP,
    }
}

/// What [`consider_endpoint`] works on: the service's row, and the pick so far.
#[repr(C)]
struct Walk {
    row: u32,
    _pad: u32,
    steer: Steer,
}

const _: () = assert!(MAX_SERVICE_ENDPOINTS.is_power_of_two());

/// One endpoint of the service, called by `bpf_loop` with its index: 0 to go
/// on, 1 to stop (past the service's endpoints).
extern "C" fn consider_endpoint(j: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` `chosen_packed` handed to bpf_loop.
    let walk = unsafe { &mut *ctx.cast::<Walk>() };
    let Some(service) = SERVICE_ENDPOINTS.get(walk.row) else {
        return 1;
    };
    if j >= service.count {
        return 1;
    }
    // Masked, not only compared: the verifier must see the index it adds bounded.
    let Some(hop) = service.hops.get(j as usize & (MAX_SERVICE_ENDPOINTS - 1)) else {
        return 1;
    };
    walk.steer.consider(j, hop, hop_use);
    0
}
