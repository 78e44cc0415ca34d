//! Prometheus metrics: kernel counters (read at scrape time), breaker states,
//! transitions and probes; served over HTTP.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
};

use breaker_common::{
    abi::Counters,
    machine::{Mode, State},
};
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

// Not `events`: events feed metrics, so the dependency goes one way only.
use crate::{
    kernel::{CounterTable, DefaultDestinations},
    state::StateTable,
};

pub mod server;
pub use server::serve;

const STATES: [State; 3] = [State::Closed, State::Open, State::HalfOpen];

pub struct Metrics {
    registry: Registry,
    /// Upstream id -> name, sorted by id; id 0 is "default". Replaced at a reload.
    names: RwLock<Vec<(u32, String)>>,
    state: IntGaugeVec,
    transitions: IntCounterVec,
    attempts: IntCounterVec,
    successes: IntCounterVec,
    failures: IntCounterVec,
    rejected: IntCounterVec,
    redirected: IntCounterVec,
    contention: IntCounterVec,
    abandoned: IntCounterVec,
    unwatched: IntCounterVec,
    would_reject: IntCounterVec,
    mode: IntGaugeVec,
    probes: IntCounterVec,
    default_open: IntGaugeVec,
    /// Kernel counters as of the last scrape, to turn totals into increments.
    last: Mutex<HashMap<u32, Counters>>,
    /// Default-policy destinations currently not CLOSED, from transition events.
    /// The default policy's destinations in the kernel, counted at each scrape.
    destinations: Mutex<Option<Arc<DefaultDestinations>>>,
    cgroup_attached: prometheus::IntGauge,
    reloads: IntCounterVec,
    last_reload: prometheus::Gauge,
    history: crate::control::History,
    kernel_memory: prometheus::IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Metrics {
    /// `names`: each configured upstream's id and name.
    pub fn new(names: &[(u32, String)]) -> Metrics {
        let registry = Registry::new();
        let mut names: Vec<(u32, String)> = std::iter::once((0, "default".to_string()))
            .chain(names.iter().cloned())
            .collect();
        names.sort_unstable_by_key(|(id, _)| *id);
        let m = Metrics {
            names: RwLock::new(Vec::new()),
            reloads: counter(&registry, "breaker_config_reloads_total", "Config reloads (SIGHUP), by result: success, or failure (the running config stays).", &["result"]),
            last_reload: {
                let g = prometheus::Gauge::new("breaker_config_last_reload_success_timestamp_seconds", "When the config was last loaded successfully (start or reload), in seconds since the Unix epoch.")
                    .expect("a valid metric");
                registry.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            state: gauge(&registry, "breaker_state", "1 for the state each configured upstream's breaker is in, 0 for the others.", &["upstream", "state"]),
            transitions: counter(&registry, "breaker_transitions_total", "Breaker state transitions.", &["upstream", "from", "to"]),
            attempts: counter(&registry, "breaker_connect_attempts_total", "TCP connects to the upstream seen by the connect hooks.", &["upstream"]),
            successes: counter(&registry, "breaker_connect_successes_total", "Watched connects that reached ESTABLISHED.", &["upstream"]),
            failures: counter(&registry, "breaker_connect_failures_total", "Watched connects that failed, by reason: refused (RST or hard ICMP error), timeout (SYN retransmission timeout), other.", &["upstream", "reason"]),
            rejected: counter(&registry, "breaker_connects_rejected_total", "Connects failed fast with ECONNREFUSED while the breaker rejected.", &["upstream"]),
            redirected: counter(&registry, "breaker_connects_redirected_total", "Connects rewritten to the fallback while the breaker rejected.", &["upstream"]),
            contention: counter(&registry, "breaker_state_contention_total", "Kernel state updates given up after repeated compare-and-swap races.", &["upstream"]),
            abandoned: counter(&registry, "breaker_connects_abandoned_total", "Watched connects the application closed before they reached an outcome; they count neither as a success nor as a failure.", &["upstream"]),
            unwatched: counter(&registry, "breaker_connects_unwatched_total", "Connects passed without watching their outcome, because too many connects were in flight at once to keep a record for each.", &["upstream"]),
            would_reject: counter(&registry, "breaker_connects_would_reject_total", "Connects a dry-run breaker would have rejected or redirected, and let through.", &["upstream"]),
            mode: gauge(&registry, "breaker_mode", "1 for the mode each configured upstream's breaker is in (auto, force_open, force_closed, disabled), 0 for the others.", &["upstream", "mode"]),
            probes: counter(&registry, "breaker_probes_total", "Half-open probes by the daemon, by result.", &["upstream", "result"]),
            default_open: gauge(&registry, "breaker_default_policy_destinations", "Default-policy destinations in the kernel's maps, by state: closed (with failures), open, half_open.", &["state"]),
            cgroup_attached: {
                let g = prometheus::IntGauge::new("breaker_cgroup_attached", "1 while the programs are attached to the configured cgroup, 0 while that cgroup does not exist.")
                    .expect("a valid metric");
                registry.register(Box::new(g.clone())).expect("metric registered once");
                g.set(1);
                g
            },
            kernel_memory: {
                let g = prometheus::IntGauge::new("breaker_kernel_memory_estimate_bytes", "Kernel memory the config's BPF maps pin, estimated as check-config prints it; no process's RSS shows it.")
                    .expect("a valid metric");
                registry.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            registry,
            last: Mutex::new(HashMap::new()),
            destinations: Mutex::new(None),
            history: Default::default(),
        };
        for result in ["success", "failure"] {
            m.reloads.with_label_values(&[result]);
        }
        m.loaded();
        for (_, name) in &names {
            m.precreate(name);
        }
        *m.names.write().unwrap_or_else(|e| e.into_inner()) = names;
        m
    }

    /// Series that exist before anything happens, so dashboards and alerts see zeros.
    fn precreate(&self, name: &str) {
        for reason in ["refused", "timeout"] {
            self.failures.with_label_values(&[name, reason]);
        }
        if name != "default" {
            for result in ["success", "failure"] {
                self.probes.with_label_values(&[name, result]);
            }
        }
        for c in self.per_upstream() {
            c.with_label_values(&[name]);
        }
    }

    fn per_upstream(&self) -> [&IntCounterVec; 8] {
        [
            &self.would_reject,
            &self.attempts,
            &self.successes,
            &self.rejected,
            &self.redirected,
            &self.contention,
            &self.abandoned,
            &self.unwatched,
        ]
    }

    /// A reload's upstreams (id and name): series of upstreams that left go, new
    /// ones start at zero, and an id that changed hands counts from its new owner.
    pub fn set_upstreams(&self, upstreams: &[(u32, String)]) {
        let mut names = self.names.write().unwrap_or_else(|e| e.into_inner());
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for (id, name) in names.iter().filter(|(id, _)| *id != 0) {
            if upstreams.contains(&(*id, name.clone())) {
                continue;
            }
            last.remove(id);
            for c in self.per_upstream() {
                let _ = c.remove_label_values(&[name]);
            }
            for reason in ["refused", "timeout"] {
                let _ = self.failures.remove_label_values(&[name, reason]);
            }
            for result in ["success", "failure"] {
                let _ = self.probes.remove_label_values(&[name, result]);
            }
            for mode in Mode::ALL {
                let _ = self.mode.remove_label_values(&[name, mode.name()]);
            }
            for from in STATES {
                let _ = self.state.remove_label_values(&[name, from.name()]);
                for to in STATES {
                    let _ = self
                        .transitions
                        .remove_label_values(&[name, from.name(), to.name()]);
                }
            }
        }
        let mut next: Vec<(u32, String)> = std::iter::once((0, "default".to_string()))
            .chain(upstreams.iter().cloned())
            .collect();
        next.sort_unstable_by_key(|(id, _)| *id);
        for (_, name) in &next {
            self.precreate(name);
        }
        *names = next;
    }

    /// Recent transitions and counter snapshots, for `breaker status`.
    pub fn history(&self) -> &crate::control::History {
        &self.history
    }

    /// The default policy's destinations by state, when it is on.
    pub fn destination_counts(&self) -> Option<crate::kernel::DestinationCounts> {
        let destinations = self
            .destinations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        destinations.map(|d| d.counts())
    }

    /// Counts a reload that failed (the running config stays).
    pub fn reload_failed(&self) {
        self.reloads.with_label_values(&["failure"]).inc();
    }

    /// Counts a reload that took effect.
    pub fn reloaded(&self) {
        self.reloads.with_label_values(&["success"]).inc();
        self.loaded();
    }

    fn loaded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_reload.set(now);
    }

    pub fn upstream_name(&self, id: u32) -> String {
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        names
            .binary_search_by_key(&id, |(id, _)| *id)
            .map_or_else(|_| "unknown".to_string(), |i| names[i].1.clone())
    }

    /// Counts one transition; `dest` is set for default-policy breakers.
    pub fn transition(&self, upstream: u32, from: State, to: State) {
        let name = self.upstream_name(upstream);
        self.transitions
            .with_label_values(&[&name, from.name(), to.name()])
            .inc();
    }

    /// Where the default policy's destinations are counted from (at start, and
    /// again after a reload).
    pub fn count_destinations_in(&self, destinations: Arc<DefaultDestinations>) {
        *self.destinations.lock().unwrap_or_else(|e| e.into_inner()) = Some(destinations);
    }

    /// Whether the programs are attached to the configured cgroup right now.
    pub fn set_cgroup_attached(&self, attached: bool) {
        self.cgroup_attached.set(attached as i64);
    }

    /// The kernel memory the config's maps pin, estimated (set once, at start).
    pub fn set_kernel_memory_estimate(&self, bytes: u64) {
        self.kernel_memory.set(bytes.min(i64::MAX as u64) as i64);
    }

    /// `/healthz`: the daemon protects what it was told to, or why not.
    pub fn health(&self) -> Result<(), &'static str> {
        if self.cgroup_attached.get() == 1 {
            Ok(())
        } else {
            Err("the configured cgroup does not exist: nothing is protected until it is created again")
        }
    }

    pub fn probe(&self, upstream: u32, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.probes
            .with_label_values(&[&self.upstream_name(upstream), result])
            .inc();
    }

    /// Brings every series up to date with the kernel, then renders the text format.
    pub fn render(&self, counters: &CounterTable, states: &StateTable) -> String {
        self.refresh(counters, states);
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    fn refresh(&self, counters: &CounterTable, states: &StateTable) {
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for (id, name) in names.iter() {
            let id = *id;
            if id != 0 {
                if let Some(word) = states.load(id) {
                    for s in STATES {
                        self.state
                            .with_label_values(&[name, s.name()])
                            .set((word.state() == s) as i64);
                    }
                    for m in Mode::ALL {
                        self.mode
                            .with_label_values(&[name, m.name()])
                            .set((word.mode() == m) as i64);
                    }
                }
            }
            let now = match counters.get(id) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(upstream = name.as_str(), error = %e, "reading kernel counters failed");
                    continue;
                }
            };
            let prev = last.insert(id, now).unwrap_or_default();
            let inc = |c: &IntCounterVec, labels: &[&str], new: u64, old: u64| {
                c.with_label_values(labels).inc_by(new.saturating_sub(old));
            };
            inc(&self.attempts, &[name], now.attempts, prev.attempts);
            inc(&self.successes, &[name], now.successes, prev.successes);
            inc(
                &self.failures,
                &[name, "refused"],
                now.failures_refused,
                prev.failures_refused,
            );
            inc(
                &self.failures,
                &[name, "timeout"],
                now.failures_timeout,
                prev.failures_timeout,
            );
            inc(&self.rejected, &[name], now.rejected, prev.rejected);
            inc(&self.redirected, &[name], now.redirected, prev.redirected);
            inc(
                &self.contention,
                &[name],
                now.contention_misses,
                prev.contention_misses,
            );
            inc(&self.abandoned, &[name], now.abandoned, prev.abandoned);
            inc(&self.unwatched, &[name], now.unwatched, prev.unwatched);
            inc(
                &self.would_reject,
                &[name],
                now.would_reject,
                prev.would_reject,
            );
        }
        let destinations = self
            .destinations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(destinations) = destinations {
            let counts = destinations.counts();
            for (state, n) in [
                (State::Closed, counts.closed),
                (State::Open, counts.open),
                (State::HalfOpen, counts.half_open),
            ] {
                self.default_open
                    .with_label_values(&[state.name()])
                    .set(n as i64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Series that exist before any scrape: dashboards and tests can rely on them.
    #[test]
    fn every_upstream_has_its_counters_from_the_start() {
        let m = Metrics::new(&[(1, "api".to_string())]);
        let families = m.registry.gather();
        let has = |name: &str, upstream: &str| {
            families.iter().any(|f| {
                f.name() == name
                    && f.get_metric().iter().any(|s| {
                        s.get_label()
                            .iter()
                            .any(|l| l.name() == "upstream" && l.value() == upstream)
                    })
            })
        };
        for upstream in ["api", "default"] {
            for name in [
                "breaker_connect_attempts_total",
                "breaker_connect_successes_total",
                "breaker_connect_failures_total",
                "breaker_connects_rejected_total",
                "breaker_connects_redirected_total",
                "breaker_state_contention_total",
                "breaker_connects_abandoned_total",
                "breaker_connects_unwatched_total",
            ] {
                assert!(has(name, upstream), "{name}{{upstream={upstream:?}}}");
            }
        }
        assert!(has("breaker_probes_total", "api"));
        assert!(
            !has("breaker_probes_total", "default"),
            "the default policy is never probed"
        );
    }
}
