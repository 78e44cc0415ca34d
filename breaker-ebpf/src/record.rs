//! The per-socket record: a slot of `SOCKET_RECORDS` owned by the socket's cookie,
//! written by connect4/6, read by sock_ops and sock_release, marked done exactly
//! once, and given back when the socket no longer needs it.
//!
//! Why an array of slots rather than socket storage or a hash: both of those take
//! a lock with interrupts off, and socket storage also allocates on every connect
//! and frees through RCU at close. On the bench machine (a paravirtualised guest,
//! where turning interrupts off traps) that cost 0.6 to 0.9 µs per connect in
//! connect4 alone. An array slot is taken and given back with compare-and-swap: no
//! lock, no allocation.
use aya_ebpf::{helpers::bpf_get_socket_cookie, EbpfContext};
use breaker_common::abi::{
    Settings, SocketRecord, RECORD_DONE, RECORD_PROBES, RECORD_TRIAL, RECORD_WATCHED,
};

use crate::{
    atomic::cas_u64,
    maps::{SETTINGS, SOCKET_RECORDS},
};

/// The cookie of the socket of `ctx` (connect hooks, sock_ops, sock_release alike).
#[inline(always)]
pub fn cookie<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: every context these programs get carries its socket.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The slots `cookie` may own, in probe order. Cookies grow by one per socket, so
/// consecutive sockets take consecutive slots.
#[inline(always)]
fn slot(settings: &Settings, cookie: u64, probe: u32) -> Option<*mut SocketRecord> {
    let mask = settings.record_slots_mask as u64;
    SOCKET_RECORDS.get_ptr_mut(((cookie + probe as u64) & mask) as u32)
}

/// The owner field of the slot at `p`.
#[inline(always)]
fn owner(p: *mut SocketRecord) -> *mut u64 {
    // SAFETY: `p` is a live map value; only the field's address is taken.
    unsafe { core::ptr::addr_of_mut!((*p).cookie) }
}

/// Takes a slot for `record.cookie` and writes `record` there: a free one, this
/// socket's own (from an earlier connect() on it), or a stale one. `None` when
/// every slot it may use belongs to another live socket: the connect then goes
/// unwatched.
#[inline(always)]
pub fn write(record: &SocketRecord) -> Option<()> {
    let settings = SETTINGS.get(0)?;
    for probe in 0..RECORD_PROBES {
        let p = slot(settings, record.cookie, probe)?;
        // SAFETY: array values are 8-byte aligned; the owner is the first u64.
        let taken = match unsafe { cas_u64(owner(p), 0, record.cookie) } {
            Ok(_) => true,
            Err(found) if found == record.cookie => true,
            Err(found) => {
                // SAFETY: a live map value; a torn read only makes it look fresh.
                let since = unsafe { core::ptr::read_volatile(p) }.started_jiffies;
                let stale = record.started_jiffies.saturating_sub(since)
                    >= settings.record_stale_jiffies as u64;
                // SAFETY: as above.
                stale && unsafe { cas_u64(owner(p), found, record.cookie) }.is_ok()
            }
        };
        if taken {
            // SAFETY: the slot is ours now; nobody reads it before this connect
            // returns, since every reader looks for its own socket's cookie.
            unsafe { *p = *record };
            return Some(());
        }
    }
    None
}

/// A copy of the record of socket `cookie`, and its slot. Copied first, then the
/// owner checked: a slot given back and taken again has another owner.
#[inline(always)]
pub fn read(cookie: u64) -> Option<(SocketRecord, *mut SocketRecord)> {
    let settings = SETTINGS.get(0)?;
    for probe in 0..RECORD_PROBES {
        let p = slot(settings, cookie, probe)?;
        // SAFETY: a live map value, read while this program runs.
        let copy = unsafe { core::ptr::read_volatile(p) };
        if copy.cookie == cookie {
            return Some((copy, p));
        }
    }
    None
}

/// Gives the slot at `p` back, if `cookie` still owns it.
#[inline(always)]
pub fn remove(cookie: u64, p: *mut SocketRecord) {
    // SAFETY: as in `write`.
    let _ = unsafe { cas_u64(owner(p), cookie, 0) };
}

/// The HALF_OPEN epoch of a trial connect; `None` for any other.
#[inline(always)]
pub fn trial_epoch(record: &SocketRecord) -> Option<u8> {
    (record.flags & RECORD_TRIAL != 0).then_some(record.epoch as u8)
}

/// Whether sock_ops reports this connect's outcome (and it has not ended yet).
#[inline(always)]
pub fn is_open(record: &SocketRecord) -> bool {
    record.flags & RECORD_WATCHED != 0 && record.flags & RECORD_DONE == 0
}

/// Marks the record at `p` done. True for the one caller that did it: the outcome
/// (or the abandonment) is counted once, whichever of sock_ops and sock_release
/// comes first.
#[inline(always)]
pub fn claim_done(p: *mut SocketRecord) -> bool {
    // SAFETY: `p` points at a live map value; only the field's address is taken.
    let flags = unsafe { core::ptr::addr_of_mut!((*p).flags) };
    // SAFETY: as above.
    let mut current = unsafe { core::ptr::read_volatile(flags) };
    for _ in 0..4 {
        if current & RECORD_DONE != 0 {
            return false;
        }
        // SAFETY: as above; `flags` is an aligned u64 of a repr(C) map value.
        match unsafe { cas_u64(flags, current, current | RECORD_DONE) } {
            Ok(_) => return true,
            Err(found) => current = found,
        }
    }
    false
}
