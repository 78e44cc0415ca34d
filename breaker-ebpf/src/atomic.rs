//! Compare-and-swap on map memory. The bpf target's `core` has no atomics; the
//! intrinsic emits the BPF cmpxchg instruction (kernel 5.12+).
use core::intrinsics::{atomic_cxchg, AtomicOrdering::SeqCst};

/// Stores `new` at `p` if it holds `current`; returns the value found otherwise.
///
/// # Safety
/// `p` must be valid, 8-byte aligned map memory (a map value or socket storage).
#[inline(always)]
pub unsafe fn cas_u64(p: *mut u64, current: u64, new: u64) -> Result<u64, u64> {
    // SAFETY: per the contract above.
    let (found, ok) = unsafe { atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(p, current, new) };
    if ok {
        Ok(found)
    } else {
        Err(found)
    }
}
