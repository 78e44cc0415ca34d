//! The daemon's probe sockets carry its SO_MARK; every hook lets them through
//! untouched and uncounted, so probes see the upstream as it is.
use aya_ebpf::bindings::bpf_sock;
use breaker_common::abi::Settings;

#[inline(always)]
pub fn is_probe_socket(sk: *mut bpf_sock, settings: &Settings) -> bool {
    // SAFETY: a non-null `sk` from the hook's context is the kernel's live socket.
    !sk.is_null() && settings.probe_mark != 0 && unsafe { (*sk).mark } == settings.probe_mark
}
