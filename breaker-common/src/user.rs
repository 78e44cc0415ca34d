//! Userspace-only impls: aya reads and writes these types in maps.
use crate::abi::*;

// SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and integer
// arrays with explicit padding fields, so every bit pattern is valid.
unsafe impl aya::Pod for Settings {}
unsafe impl aya::Pod for EndpointV4 {}
unsafe impl aya::Pod for EndpointV6 {}
unsafe impl aya::Pod for UpstreamPolicy {}
unsafe impl aya::Pod for DestKey {}
unsafe impl aya::Pod for EndpointSlot {}
unsafe impl aya::Pod for BreakerCell {}
unsafe impl aya::Pod for SocketRecord {}
unsafe impl aya::Pod for ResolveQuery {}
unsafe impl aya::Pod for Counters {}
unsafe impl aya::Pod for ConnectDurations {}
unsafe impl aya::Pod for ExtraCounters {}
unsafe impl aya::Pod for TransitionEvent {}
unsafe impl aya::Pod for UpstreamName {}
unsafe impl aya::Pod for PinMetadata {}
unsafe impl aya::Pod for ServiceEndpoints {}
unsafe impl aya::Pod for crate::window::RateWindow {}
unsafe impl aya::Pod for crate::packet::FlowKey {}
unsafe impl aya::Pod for crate::packet::FlowRecord {}
// SAFETY: repr(C), integers only (the closing flags are plain bytes), no
// implicit padding.
unsafe impl aya::Pod for crate::packet::NatTarget {}
unsafe impl aya::Pod for crate::packet::ExpireQuery {}
unsafe impl aya::Pod for crate::packet::PacketCounters {}
