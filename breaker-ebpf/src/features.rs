//! What the programs need of the kernel, one feature a program, so that the
//! daemon can name the one an old kernel lacks (its verifier refuses the program).
use aya_ebpf::helpers::generated::bpf_set_retval;

use crate::{atomic::cas_u64, maps::DAEMON_HEARTBEAT};

/// A compare-and-swap on a map value (BPF atomics, Linux 5.12). Swaps 0 for 0,
/// never running anyway.
#[inline(always)]
pub fn compare_and_swap() -> i32 {
    if let Some(word) = DAEMON_HEARTBEAT.get_ptr_mut(0) {
        // SAFETY: an 8-byte aligned map value of this array.
        let _ = unsafe { cas_u64(word, 0, 0) };
    }
    0
}

/// `bpf_set_retval` from a cgroup connect hook (Linux 5.18).
#[inline(always)]
pub fn set_retval() -> i32 {
    // SAFETY: a helper taking an integer; this program is never attached.
    unsafe { bpf_set_retval(0) };
    1
}
