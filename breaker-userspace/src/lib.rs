//! The breaker daemon: configuration, the kernel programs' loader, half-open probing,
//! transition events and Prometheus metrics.
pub mod alerts;
pub mod cgroup;
pub mod config;
pub mod control;
pub mod daemon;
pub mod events;
pub mod explain;
pub mod health;
pub mod kernel;
pub mod metrics;
pub mod probe;
pub mod requirements;
pub mod state;
pub mod top;
