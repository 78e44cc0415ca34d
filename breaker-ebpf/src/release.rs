//! cgroup/sock_release: the end of every socket's record. A watched connect whose
//! socket is closed before sock_ops saw its outcome was abandoned (the application
//! gave up, or the connect never reached the network: ENETUNREACH, EADDRNOTAVAIL,
//! another program denying it). It counts neither way, and a trial gives its
//! HALF_OPEN slot back at once.
use aya_ebpf::{
    bindings::{BPF_TCP_CLOSE, BPF_TCP_SYN_SENT},
    programs::SockContext,
};
use breaker_common::{
    abi::{CAUSE_FAILURE_OTHER, IPPROTO_TCP},
    machine::abandon,
};

use crate::{
    breaker::{count, Breaker},
    record::{self, claim_done, is_open, trial_epoch},
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
    let cookie = record::cookie(ctx);
    let Some((r, p)) = record::read(cookie) else {
        return Ok(());
    };
    let abandoned = is_open(&r) && claim_done(p);
    record::remove(cookie, p);
    if !abandoned {
        return Ok(());
    }
    count(r.upstream, |c| c.abandoned += 1);
    if let Some(epoch) = trial_epoch(&r) {
        if let Some(breaker) = Breaker::of_record(r.upstream, &r.dest, false) {
            // Never a transition: the cause is only for the type.
            breaker.update(ctx, CAUSE_FAILURE_OTHER, |w| abandon(w, epoch));
        }
    }
    Ok(())
}
