//! The per-socket record (`SOCKET_RECORDS`, socket storage): written by connect4/6,
//! read by sock_ops and sock_release, which mark it done exactly once.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::bpf_sock, helpers::generated::bpf_sk_storage_get, programs::SockAddrContext,
};
use breaker_common::abi::{SocketRecord, RECORD_DONE, RECORD_TRIAL, RECORD_WATCHED};

use crate::{atomic::cas_u64, maps::SOCKET_RECORDS};

/// The map as the helpers take it (aya keeps its own accessor crate-private).
#[inline(always)]
fn records_map() -> *mut c_void {
    core::ptr::from_ref(&SOCKET_RECORDS).cast_mut().cast()
}

/// Writes `record` as the record of the socket connecting in `ctx`, replacing any
/// record of an earlier connect() on the same socket. `None` when the kernel could
/// not allocate it.
#[inline(always)]
pub fn write(ctx: &SockAddrContext, record: SocketRecord) -> Option<()> {
    let mut initial = record;
    // SAFETY: the connect hook's context always carries its socket.
    let p = unsafe { SOCKET_RECORDS.get_or_insert_ptr_mut(ctx, Some(&mut initial)) };
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null storage of this socket, sized for a SocketRecord; the socket
    // is locked in connect(), so no program reads it meanwhile.
    unsafe { *p = record };
    Some(())
}

/// The record of `sk`, if connect4/6 wrote one.
///
/// # Safety
/// `sk` must be a socket pointer the verifier accepts for `bpf_sk_storage_get`
/// (sock_ops' `sk` after a null check, or a cgroup/sock program's context).
#[inline(always)]
pub unsafe fn of_socket(sk: *mut bpf_sock) -> Option<&'static mut SocketRecord> {
    // SAFETY: per the contract above; flags 0 never creates.
    let p = unsafe { bpf_sk_storage_get(records_map(), sk.cast(), core::ptr::null_mut(), 0) }
        .cast::<SocketRecord>();
    // SAFETY: a non-null result points at this socket's live record.
    unsafe { p.as_mut() }
}

/// The HALF_OPEN epoch of a trial connect; `None` for any other.
#[inline(always)]
pub fn trial_epoch(record: &SocketRecord) -> Option<u8> {
    (record.flags & RECORD_TRIAL != 0).then_some(record.epoch as u8)
}

/// Whether sock_ops reports this connect's outcome.
#[inline(always)]
pub fn is_watched(record: &SocketRecord) -> bool {
    record.flags & RECORD_WATCHED != 0
}

/// Marks the record done. True for the one caller that did it: the outcome (or the
/// abandonment) is counted once, whichever of sock_ops and sock_release comes first.
#[inline(always)]
pub fn claim_done(record: &mut SocketRecord) -> bool {
    let flags = core::ptr::addr_of_mut!(record.flags);
    // SAFETY: `flags` points into the live record; the CAS makes the claim atomic
    // against the other program on another CPU.
    let mut current = unsafe { core::ptr::read_volatile(flags) };
    for _ in 0..4 {
        if current & RECORD_DONE != 0 {
            return false;
        }
        // SAFETY: as above; the record's fields are 8-byte aligned (repr(C), u64 first).
        match unsafe { cas_u64(flags, current, current | RECORD_DONE) } {
            Ok(_) => return true,
            Err(found) => current = found,
        }
    }
    false
}
