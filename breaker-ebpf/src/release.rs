//! cgroup/sock_release: a watched connect whose socket is closed before sock_ops saw
//! its outcome was abandoned (the application gave up, or the connect never reached
//! the network: ENETUNREACH, EADDRNOTAVAIL, another program denying it). It counts
//! neither way, and a trial gives its HALF_OPEN slot back at once.
use aya_ebpf::programs::SockContext;
use breaker_common::{abi::CAUSE_FAILURE_OTHER, machine::abandon};

use crate::{
    breaker::{count, Breaker},
    record::{self, claim_done, is_watched, trial_epoch},
};

pub fn try_sock_release(ctx: &SockContext) -> Result<(), i32> {
    // SAFETY: a cgroup/sock program's context is its socket, as bpf_sk_storage_get
    // takes it there.
    let Some(r) = (unsafe { record::of_socket(ctx.sock) }) else {
        return Ok(());
    };
    if !is_watched(r) || !claim_done(r) {
        return Ok(());
    }
    count(r.upstream, |c| c.abandoned += 1);
    if let Some(epoch) = trial_epoch(r) {
        if let Some(breaker) = Breaker::of_record(r.upstream, &r.dest, false) {
            // Never a transition: the cause is only for the type.
            breaker.update(ctx, CAUSE_FAILURE_OTHER, |w| abandon(w, epoch));
        }
    }
    Ok(())
}
