//! Prometheus metrics: kernel counters (read at scrape time), breaker states,
//! transitions and probes; served over HTTP.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
};

use breaker_common::{
    abi::{Counters, ExtraCounters, STEERED_SLOT},
    machine::{Mode, State},
};
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

// Not `events`: events feed metrics, so the dependency goes one way only.
use crate::{
    kernel::{CounterTable, DefaultDestinations, DestinationOwner},
    state::StateTable,
};

pub mod durations;
pub mod packet;
pub mod server;
pub use server::serve;

const STATES: [State; 3] = [State::Closed, State::Open, State::HalfOpen];

/// A collector the registry and [`Metrics`] share.
struct SharedCollector<C>(Arc<C>);

impl<C: prometheus::core::Collector> prometheus::core::Collector for SharedCollector<C> {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

/// An upstream's name, its fallback hops' labels in the kernel's order
/// (`ExtraCounters.redirected_to`), and for an endpoint of a `per_endpoint`
/// service that steers, the service's name: the `to` of its steered connects
/// (counted at `STEERED_SLOT`).
type FallbackLabels = (String, Vec<String>, Option<String>);

/// The per-destination breakers, whose each is, and the per-address
/// upstreams (id, name).
type Destinations = (
    Arc<DefaultDestinations>,
    DestinationOwner,
    Vec<(u32, String)>,
);

pub struct Metrics {
    registry: Registry,
    /// Upstream id -> name, sorted by id; id 0 is "default". Replaced at a reload.
    names: RwLock<Vec<(u32, String)>>,
    /// Upstream id -> its name, its fallback hops' labels, and the service it
    /// steers within ([`FallbackLabels`]). Replaced at a reload.
    fallbacks: RwLock<HashMap<u32, FallbackLabels>>,
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
    slow: IntCounterVec,
    aborted: IntCounterVec,
    abort_raced: IntCounterVec,
    steered: IntCounterVec,
    ejection_overflow: IntCounterVec,
    mode: IntGaugeVec,
    probes: IntCounterVec,
    default_open: IntGaugeVec,
    /// Connect-time histograms, read from the kernel at each scrape.
    durations: Arc<durations::DurationHistograms>,
    /// Kernel counters (extra ones too) as of the last scrape, to turn totals
    /// into increments.
    last: Mutex<HashMap<u32, (Counters, ExtraCounters)>>,
    /// The per-destination breakers in the kernel (the default policy's and
    /// per-address upstreams'), counted at each scrape, and whose each is.
    destinations: Mutex<Option<Destinations>>,
    /// Per-address upstreams' breakers by state.
    addresses: IntGaugeVec,
    cgroup_attached: prometheus::IntGauge,
    reloads: IntCounterVec,
    last_reload: prometheus::Gauge,
    history: crate::control::History,
    /// Whether every program's link is pinned (attached), as last checked.
    links_pinned: std::sync::atomic::AtomicBool,
    map_entries: IntGaugeVec,
    map_capacity: IntGaugeVec,
    alerts: IntCounterVec,
    program_runs: IntCounterVec,
    program_seconds: prometheus::CounterVec,
    /// The attached programs' ids, by name, and their stats at the last scrape.
    programs: Mutex<Vec<(String, u32)>>,
    program_last: Mutex<HashMap<u32, (u64, std::time::Duration)>>,
    kernel_memory: prometheus::IntGauge,
    packet: packet::PacketMetrics,
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
            durations: {
                let d = Arc::new(
                    durations::DurationHistograms::new().expect("static metric definition"),
                );
                registry
                    .register(Box::new(SharedCollector(d.clone())))
                    .expect("metric registered once");
                d
            },
            names: RwLock::new(Vec::new()),
            fallbacks: RwLock::new(HashMap::new()),
            reloads: counter(&registry, "breaker_config_reloads_total", "Config reloads (SIGHUP), by result: success, or failure (the running config stays).", &["result"]),
            last_reload: {
                let g = prometheus::Gauge::new("breaker_config_last_reload_success_timestamp_seconds", "When the config was last loaded successfully (start or reload), in seconds since the Unix epoch.")
                    .expect("a valid metric");
                registry.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            state: gauge(&registry, "breaker_state", "1 for the state each configured upstream's breaker is in, 0 for the others.", &["upstream", "state"]),
            transitions: counter(&registry, "breaker_transitions_total", "Breaker state transitions.", &["upstream", "from", "to"]),
            attempts: counter(&registry, "breaker_connect_attempts_total", "TCP connects to the upstream seen by the connect hooks or, as SYNs, by the packet path.", &["upstream"]),
            successes: counter(&registry, "breaker_connect_successes_total", "Watched connects that reached ESTABLISHED (on the packet path: answered by a SYN-ACK).", &["upstream"]),
            failures: counter(&registry, "breaker_connect_failures_total", "Watched connects that failed, by reason: refused (an RST), unreachable (an ICMP error), timeout (a SYN retransmission timeout).", &["upstream", "reason"]),
            rejected: counter(&registry, "breaker_connects_rejected_total", "Connects failed fast with ECONNREFUSED while the breaker rejected.", &["upstream"]),
            redirected: counter(&registry, "breaker_connects_redirected_total", "Connects (and packet-path flows) sent to a fallback while the breaker rejected, by the fallback they went to: another upstream's name, or an address.", &["upstream", "to"]),
            contention: counter(&registry, "breaker_state_contention_total", "Kernel state updates given up after repeated compare-and-swap races.", &["upstream"]),
            abandoned: counter(&registry, "breaker_connects_abandoned_total", "Watched connects the application closed before they reached an outcome; they count neither as a success nor as a failure.", &["upstream"]),
            unwatched: counter(&registry, "breaker_connects_unwatched_total", "Connects passed without watching their outcome, because too many connects were in flight at once to keep a record for each.", &["upstream"]),
            would_reject: counter(&registry, "breaker_connects_would_reject_total", "Connects a dry-run breaker would have rejected or redirected, and let through.", &["upstream"]),
            slow: counter(&registry, "breaker_connects_slow_total", "Watched connects that succeeded but whose SYN took at least slow_connect_threshold to be answered (also in breaker_connect_successes_total).", &["upstream"]),
            aborted: counter(&registry, "breaker_connects_aborted_total", "Watched connects in flight when their breaker turned connects away, whose SYN had gone unanswered for connect_timeout: failed at once (ETIMEDOUT) instead of retransmitting into a dead upstream.", &["upstream"]),
            abort_raced: counter(&registry, "breaker_connects_abort_raced_total", "Connects set to be failed (see breaker_connects_aborted_total) whose last SYN was answered first: they went through, given their own TCP_USER_TIMEOUT back.", &["upstream"]),
            steered: counter(&registry, "breaker_connects_steered_total", "Connects (and packet-path flows) to this endpoint of a per_endpoint service, while its breaker rejected, sent to another endpoint of the service that was CLOSED (a part of breaker_connects_redirected_total).", &["upstream"]),
            ejection_overflow: counter(&registry, "breaker_ejection_overflow_total", "Trips of this endpoint of a per_endpoint service held back by the service's ejection cap (max_ejected_percent, min_healthy_percent): it stayed CLOSED.", &["upstream"]),
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
            last: Mutex::new(HashMap::new()),
            destinations: Mutex::new(None),
            addresses: gauge(&registry, "breaker_addresses", "Breakers of a per-address upstream (per_endpoint over a CIDR or any-port endpoint) in the kernel's maps, by state: closed (with failures), open, half_open.", &["upstream", "state"]),
            history: Default::default(),
            links_pinned: std::sync::atomic::AtomicBool::new(true),
            map_entries: gauge(&registry, "breaker_map_entries", "Entries in each kernel map whose fill varies (endpoint maps, default-policy destinations, upstream names).", &["map"]),
            alerts: counter(&registry, "breaker_alerts_total", "Webhook alerts by result: sent (a 2xx answer), failed (after retries), dropped (the receiver fell too far behind).", &["alert", "result"]),
            map_capacity: gauge(&registry, "breaker_map_capacity", "Each kernel map's capacity (max entries).", &["map"]),
            program_runs: counter(&registry, "breaker_program_runs_total", "Runs of each attached program, while the kernel's BPF stats are on (sysctl kernel.bpf_stats_enabled=1).", &["program"]),
            program_seconds: {
                let c = prometheus::CounterVec::new(Opts::new("breaker_program_run_seconds_total", "Time spent in each attached program, while the kernel's BPF stats are on."), &["program"]).expect("static metric definition");
                registry.register(Box::new(c.clone())).expect("metric registered once");
                c
            },
            programs: Mutex::new(Vec::new()),
            program_last: Mutex::new(HashMap::new()),
            packet: packet::PacketMetrics::register(&registry),
            registry,
        };
        {
            let info = IntGaugeVec::new(
                Opts::new(
                    "breaker_build_info",
                    "1, labelled with the binary's version and the ABI of its maps.",
                ),
                &["version", "abi"],
            )
            .expect("static metric definition");
            m.registry
                .register(Box::new(info.clone()))
                .expect("metric registered once");
            info.with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                &breaker_common::abi::ABI_VERSION.to_string(),
            ])
            .set(1);
        }
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
        for reason in ["refused", "timeout", "unreachable"] {
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
        // The state machine's own transitions at zero, so that `increase()` sees
        // a breaker's first trip too (a series born at 1 has no increase).
        for (from, to) in [
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed),
            (State::HalfOpen, State::Open),
        ] {
            self.transitions
                .with_label_values(&[name, from.name(), to.name()]);
        }
    }

    fn per_upstream(&self) -> [&IntCounterVec; 12] {
        [
            &self.would_reject,
            &self.slow,
            &self.aborted,
            &self.abort_raced,
            &self.steered,
            &self.ejection_overflow,
            &self.attempts,
            &self.successes,
            &self.rejected,
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
            for reason in ["refused", "timeout", "unreachable"] {
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

    /// A loaded config's fallbacks (upstream id, name, hop labels in order, the
    /// service it steers within): a series per `to` from zero, and those of
    /// hops that left go.
    pub fn set_fallbacks(&self, upstreams: &[(u32, String, Vec<String>, Option<String>)]) {
        let mut current = self.fallbacks.write().unwrap_or_else(|e| e.into_inner());
        let next: HashMap<u32, FallbackLabels> = upstreams
            .iter()
            .map(|(id, name, hops, service)| (*id, (name.clone(), hops.clone(), service.clone())))
            .collect();
        let targets = |(_, hops, service): &FallbackLabels| -> Vec<String> {
            hops.iter().chain(service).cloned().collect()
        };
        for labels in current.values() {
            for hop in targets(labels) {
                let kept = next
                    .values()
                    .any(|l| l.0 == labels.0 && targets(l).contains(&hop));
                if !kept {
                    let _ = self.redirected.remove_label_values(&[&labels.0, &hop]);
                }
            }
        }
        for labels in next.values() {
            for hop in targets(labels) {
                self.redirected.with_label_values(&[&labels.0, &hop]);
            }
        }
        *current = next;
    }

    /// A loaded config's maps: each one's capacity, and the entries of those
    /// whose fill the config decides.
    pub fn set_maps(&self, capacities: &[(String, u32)], entries: &[(&str, u64)]) {
        self.map_capacity.reset();
        for (name, capacity) in capacities {
            self.map_capacity
                .with_label_values(&[name])
                .set(i64::from(*capacity));
        }
        for (name, n) in entries {
            self.map_entries.with_label_values(&[name]).set(*n as i64);
        }
    }

    /// Counts `n` alerts of `alert` with `result` (sent, failed, dropped).
    pub fn alert(&self, alert: &str, result: &str, n: u64) {
        self.alerts.with_label_values(&[alert, result]).inc_by(n);
    }

    /// A loaded config's alerts: their series exist from the start (counts of
    /// an alert kept by a reload carry on).
    pub fn set_alerts(&self, names: &[String]) {
        for name in names {
            for result in ["sent", "failed", "dropped"] {
                self.alerts.with_label_values(&[name, result]);
            }
        }
    }

    /// The attached programs (after a start or a reload), for their run stats.
    /// The packet path's metrics.
    pub fn packet(&self) -> &packet::PacketMetrics {
        &self.packet
    }

    pub fn set_programs(&self, ids: &[(&str, u32)]) {
        *self.programs.lock().unwrap_or_else(|e| e.into_inner()) =
            ids.iter().map(|(n, id)| (n.to_string(), *id)).collect();
    }

    /// Adds what each attached program ran since the last scrape, when the
    /// kernel's BPF stats are on (they cost a clock read per run, so they are off
    /// unless an operator turns them on).
    fn refresh_programs(&self) {
        let on = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .is_ok_and(|v| v.trim() == "1");
        if !on {
            return;
        }
        let programs = self
            .programs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut last = self.program_last.lock().unwrap_or_else(|e| e.into_inner());
        for info in aya::programs::loaded_programs().filter_map(Result::ok) {
            let Some((name, _)) = programs.iter().find(|(_, id)| *id == info.id()) else {
                continue;
            };
            let (runs, time) = (info.run_count(), info.run_time());
            let (runs0, time0) = last.insert(info.id(), (runs, time)).unwrap_or_default();
            self.program_runs
                .with_label_values(&[name])
                .inc_by(runs.saturating_sub(runs0));
            self.program_seconds
                .with_label_values(&[name])
                .inc_by(time.saturating_sub(time0).as_secs_f64());
        }
    }

    /// Recent transitions and counter snapshots, for `breaker status`.
    pub fn history(&self) -> &crate::control::History {
        &self.history
    }

    /// `/status`: each configured upstream's state and mode, and overall
    /// `healthy` (all closed), `degraded` (some not closed) or `critical` (none
    /// closed: each open or half-open). A forced-open upstream counts as open.
    pub fn status_json(&self, states: &StateTable) -> String {
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        let mut upstreams = Vec::new();
        let mut breakers = Vec::new();
        for (id, name) in names.iter().filter(|(id, _)| *id != 0) {
            let Some(word) = states.load(*id) else {
                continue;
            };
            breakers.push((word.mode(), word.state()));
            upstreams.push(serde_json::json!({
                "name": name,
                "state": word.state().name(),
                "mode": word.mode().name(),
            }));
        }
        let overall = crate::health::Health::of(breakers).name();
        let mut text = serde_json::json!({ "status": overall, "upstreams": upstreams }).to_string();
        text.push('\n');
        text
    }

    /// Breaker `of`'s tripped destinations (the default policy's, or a
    /// per-address upstream's addresses), most recent first (`status`).
    pub fn tripped_destinations(
        &self,
        limit: usize,
        of: u32,
    ) -> Vec<(std::net::SocketAddr, breaker_common::machine::BreakerWord)> {
        let destinations = self
            .destinations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        destinations.map_or_else(Vec::new, |(d, owner, _)| {
            d.tripped(limit, crate::state::now_ms(), &owner, of)
        })
    }

    /// The per-destination breakers by state, by whose they are (the default
    /// policy's under its id, each per-address upstream's under its own).
    pub fn destination_counts(
        &self,
    ) -> std::collections::BTreeMap<u32, crate::kernel::DestinationCounts> {
        let destinations = self
            .destinations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        destinations.map_or_else(Default::default, |(d, owner, _)| d.counts(&owner))
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

    /// Where the per-destination breakers are counted from, and whose each is
    /// (at start, and again after a reload); `per_address`: the per-address
    /// upstreams, each with its name.
    pub fn count_destinations_in(
        &self,
        destinations: Arc<DefaultDestinations>,
        owner: DestinationOwner,
        per_address: Vec<(u32, String)>,
    ) {
        *self.destinations.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((destinations, owner, per_address));
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
        if self.cgroup_attached.get() != 1 {
            return Err("the configured cgroup does not exist: nothing is protected until it is created again");
        }
        if !self.links_pinned.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("the programs' pinned links are gone: nothing is protected until they are attached again");
        }
        Ok(())
    }

    /// Whether every program's link is pinned (and so attached) right now.
    pub fn set_links_pinned(&self, pinned: bool) {
        self.links_pinned
            .store(pinned, std::sync::atomic::Ordering::Relaxed);
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
        let fallbacks = self.fallbacks.read().unwrap_or_else(|e| e.into_inner());
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
            let (prev, prev_extra) = last.get(&id).copied().unwrap_or_default();
            let extra = match counters.extra(id) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(upstream = name.as_str(), error = %e, "reading kernel counters failed");
                    prev_extra
                }
            };
            last.insert(id, (now, extra));
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
            inc(
                &self.failures,
                &[name, "unreachable"],
                now.failures_unreachable,
                prev.failures_unreachable,
            );
            inc(&self.slow, &[name], extra.slow, prev_extra.slow);
            inc(&self.aborted, &[name], extra.aborted, prev_extra.aborted);
            inc(
                &self.abort_raced,
                &[name],
                extra.abort_raced,
                prev_extra.abort_raced,
            );
            inc(&self.rejected, &[name], now.rejected, prev.rejected);
            if let Some((_, hops, service)) = fallbacks.get(&id) {
                let slot = |i: usize| (extra.redirected_to.get(i), prev_extra.redirected_to.get(i));
                for (i, hop) in hops.iter().enumerate() {
                    if let (Some(new), Some(old)) = slot(i) {
                        inc(&self.redirected, &[name, hop], *new, *old);
                    }
                }
                if let (Some(service), (Some(new), Some(old))) = (service, slot(STEERED_SLOT)) {
                    inc(&self.redirected, &[name, service], *new, *old);
                    inc(&self.steered, &[name], *new, *old);
                }
            }
            inc(
                &self.ejection_overflow,
                &[name],
                extra.ejection_overflow,
                prev_extra.ejection_overflow,
            );
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
        let histograms = names
            .iter()
            .filter_map(|(id, name)| match counters.durations(*id) {
                Ok(d) => Some((name.clone(), d)),
                Err(e) => {
                    tracing::warn!(upstream = name.as_str(), error = %e, "reading connect durations failed");
                    None
                }
            })
            .collect();
        self.durations.set(counters.hz(), histograms);
        let destinations = self
            .destinations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        drop(names);
        drop(last);
        self.refresh_programs();
        if let Some((destinations, owner, per_address)) = destinations {
            let by = destinations.counts(&owner);
            let total = |f: fn(&crate::kernel::DestinationCounts) -> u64| {
                by.values().map(f).sum::<u64>() as i64
            };
            self.map_entries
                .with_label_values(&["DEFAULT_STATES"])
                .set(total(|c| c.failing_entries));
            self.map_entries
                .with_label_values(&["DEFAULT_TRIPPED"])
                .set(total(|c| c.tripped_entries));
            let default = by
                .get(&breaker_common::abi::DEFAULT_UPSTREAM_ID)
                .copied()
                .unwrap_or_default();
            for (state, n) in [
                (State::Closed, default.closed),
                (State::Open, default.open),
                (State::HalfOpen, default.half_open),
            ] {
                self.default_open
                    .with_label_values(&[state.name()])
                    .set(n as i64);
            }
            // Every per-address upstream, those with no breaker yet at 0.
            self.addresses.reset();
            for (id, name) in per_address {
                let c = by.get(&id).copied().unwrap_or_default();
                for (state, n) in [
                    (State::Closed, c.closed),
                    (State::Open, c.open),
                    (State::HalfOpen, c.half_open),
                ] {
                    self.addresses
                        .with_label_values(&[name.as_str(), state.name()])
                        .set(n as i64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each fallback hop has its series from zero; a reload that drops a hop (or
    /// its upstream) removes that hop's series and keeps the others'.
    #[test]
    fn redirected_series_follow_the_fallback_hops_across_a_reload() {
        let m = Metrics::new(&[(1, "api".to_string()), (2, "db".to_string())]);
        let hops = |v: &[&str]| v.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        let series = |m: &Metrics| {
            let mut out: Vec<(String, String)> = m
                .registry
                .gather()
                .iter()
                .filter(|f| f.name() == "breaker_connects_redirected_total")
                .flat_map(|f| f.get_metric().to_vec())
                .map(|s| {
                    let label = |n: &str| {
                        s.get_label()
                            .iter()
                            .find(|l| l.name() == n)
                            .map(|l| l.value().to_string())
                            .unwrap_or_default()
                    };
                    (label("upstream"), label("to"))
                })
                .collect();
            out.sort();
            out
        };
        m.set_fallbacks(&[
            (1, "api".into(), hops(&["db", "10.0.9.1:80"]), None),
            (2, "db".into(), hops(&["10.0.9.2:80"]), Some("svc".into())),
        ]);
        let own = |u: &str, t: &str| (u.to_string(), t.to_string());
        assert_eq!(
            series(&m),
            [
                own("api", "10.0.9.1:80"),
                own("api", "db"),
                own("db", "10.0.9.2:80"),
                own("db", "svc")
            ]
        );
        m.set_fallbacks(&[(1, "api".into(), hops(&["10.0.9.1:80"]), None)]);
        assert_eq!(series(&m), [own("api", "10.0.9.1:80")]);
    }

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
                "breaker_state_contention_total",
                "breaker_connects_abandoned_total",
                "breaker_connects_unwatched_total",
                "breaker_connects_slow_total",
                "breaker_connects_aborted_total",
                "breaker_connects_abort_raced_total",
                "breaker_connects_steered_total",
                "breaker_ejection_overflow_total",
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
