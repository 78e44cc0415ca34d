//! Types and logic shared by the kernel programs (`breaker-ebpf`) and the daemon
//! (`breaker-userspace`).
//!
//! - [`machine`]: the per-upstream breaker state machine, as pure functions over a
//!   packed 64-bit word, so any hook (connect, sock_ops, later TC/XDP) and the daemon
//!   can update the same state with one compare-and-swap.
//! - [`abi`]: the `#[repr(C)]` map keys, values, counters and events that cross the
//!   kernel boundary.
//! - [`dest`]: the one encoder of destination and endpoint keys.
//! - [`fallback`]: which of an upstream's ordered fallbacks a rejected connect takes.
//! - [`window`]: the failure-rate window, a ring of time buckets per upstream.
//! - [`packet`]: the packet path's flows, answers and the reset it replies with.
#![cfg_attr(not(test), no_std)]

pub mod abi;
pub mod dest;
pub mod fallback;
pub mod machine;
pub mod packet;
pub mod window;

#[cfg(feature = "user")]
mod user;
