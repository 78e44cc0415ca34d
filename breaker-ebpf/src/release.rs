//! cgroup/sock_release, and abandonment wherever it is seen. A watched connect that
//! ends without an answer from the network was abandoned: the application closed
//! or cancelled it (close, shutdown, connect(AF_UNSPEC)), or it never reached the
//! network (ENETUNREACH, EADDRNOTAVAIL, another program denying it). It counts
//! neither way, so no local user can open a breaker by giving up on connects, and a
//! trial gives its HALF_OPEN slot back at once.
use aya_ebpf::{
    bindings::{BPF_TCP_CLOSE, BPF_TCP_SYN_SENT},
    programs::SockContext,
};
use breaker_common::{
    abi::{CAUSE_ABANDONED, IPPROTO_TCP},
    machine::abandon,
};

use crate::{
    breaker::{count, Breaker},
    record::{self, Found},
};

pub fn try_sock_release(ctx: &SockContext) -> Result<(), i32> {
    // SAFETY: a cgroup/sock program's context is its live socket.
    let (protocol, state) = unsafe { ((*ctx.sock).protocol, (*ctx.sock).state) };
    // Only a TCP socket still connecting (SYN_SENT), or one whose connect failed or
    // never left (CLOSE), can hold a record: an established connection's record went
    // at its outcome. Every other close returns here, before any lookup.
    if protocol != IPPROTO_TCP || (state != BPF_TCP_SYN_SENT && state != BPF_TCP_CLOSE) {
        return Ok(());
    }
    let Some(found) = record::read(record::cookie(ctx)) else {
        return Ok(());
    };
    if found.is_open() && found.claim_end() {
        count_abandoned(&found);
    }
    found.free();
    Ok(())
}

/// Counts an abandoned connect whose end the caller has claimed, and gives a
/// trial's HALF_OPEN slot back.
#[inline(always)]
pub fn count_abandoned(found: &Found) {
    let r = &found.record;
    count(r.upstream, |c| c.abandoned += 1);
    if let Some(epoch) = found.trial_epoch() {
        if let Some(breaker) = Breaker::of_record(r.upstream, &r.dest, false) {
            // Never a transition: the cause is only for the type.
            breaker.update(CAUSE_ABANDONED, |w| abandon(w, epoch));
        }
    }
}
