//! Control: the socket the CLI talks to, and what each verb does.
//!
//! - [`protocol`]: the requests and answers (and the JSON of `status --json`).
//! - [`server`]: the root-only Unix socket in the daemon.
//! - [`client`]: the CLI side.
//! - [`history`]: recent transitions and counter snapshots for `status`.
pub mod client;
mod history;
pub mod protocol;
pub mod server;

use std::time::Instant;

use breaker_common::machine::{self, Mode, State};
pub use history::{History, SAMPLE_EVERY};
use protocol::{
    DestinationCounts, Detail, FailureRateView, PolicyView, Request, Response, ServiceStatus,
    SlowConnectsView, Status, TrippedDestination, UpstreamStatus,
};

/// Tripped default-policy destinations `status` lists.
const TRIPPED_SHOWN: usize = 10;

use crate::{
    config::Upstream,
    events::Transition,
    kernel::CounterTable,
    metrics::Metrics,
    state::{now_ms, StateTable},
};

/// What the verbs read and change: the running config's upstreams and the
/// kernel's words and counters.
pub struct View<'a> {
    pub upstreams: &'a [(u32, Upstream)],
    pub states: &'a StateTable,
    pub counters: &'a CounterTable,
    pub metrics: &'a Metrics,
    /// `[daemon] dry_run`.
    pub dry_run_all: bool,
    /// Whether the config has a `[default_policy]`.
    pub default_policy: bool,
}

impl View<'_> {
    /// Answers a verb that reads or changes breakers (not `reload`, which the
    /// daemon's main loop does itself).
    pub fn answer(&self, request: &Request) -> Response {
        match request {
            Request::Status { upstream } => self.status(upstream.as_deref()),
            Request::ForceOpen { upstream } => self.set_mode(upstream, Some(Mode::ForceOpen)),
            Request::ForceClose { upstream } => self.set_mode(upstream, Some(Mode::ForceClosed)),
            Request::Disable { upstream } => self.set_mode(upstream, Some(Mode::Disabled)),
            Request::Reset { upstream } => self.set_mode(upstream, None),
            Request::Reload => Response::error("reload is answered by the daemon"),
            Request::Events { follow: true } => {
                Response::error("events --follow is answered by the socket")
            }
            Request::Events { follow: false } => Response {
                ok: true,
                events: Some(
                    self.metrics
                        .history()
                        .recent(|id| self.metrics.upstream_name(id)),
                ),
                ..Default::default()
            },
        }
    }

    /// The upstream called `name`, or the error line naming the ones there are.
    fn find(&self, name: &str) -> Result<&(u32, Upstream), String> {
        let members = self.members(name);
        if !members.is_empty() {
            let names: Vec<&str> = members.iter().map(|(_, u)| u.name.as_str()).collect();
            return Err(format!(
                "{name:?} is a service (per_endpoint) with a breaker per endpoint: name one of {}",
                names.join(", ")
            ));
        }
        self.upstreams
            .iter()
            .find(|(_, u)| u.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self
                    .upstreams
                    .iter()
                    .map(|(_, u)| u.name.as_str())
                    .collect();
                format!(
                    "no upstream named {name:?} (configured: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )
            })
    }

    /// The endpoints' breakers of service `name` (none: not a service).
    fn members(&self, name: &str) -> Vec<&(u32, Upstream)> {
        self.upstreams
            .iter()
            .filter(|(_, u)| u.service.as_ref().is_some_and(|s| s.name == name))
            .collect()
    }

    /// Each `per_endpoint` service of `chosen`, derived from its endpoints' words.
    /// Each `per_endpoint` service with an endpoint in `chosen`, derived from
    /// all of its endpoints' words: how many are ejected (what its cap counts),
    /// and its state by how many turn connects away (an override too).
    fn services(&self, chosen: &[&(u32, Upstream)]) -> Vec<ServiceStatus> {
        let mut names: Vec<&str> = Vec::new();
        for (_, up) in chosen {
            if let Some(service) = &up.service {
                if !names.contains(&service.name.as_str()) {
                    names.push(&service.name);
                }
            }
        }
        names
            .into_iter()
            .filter_map(|name| {
                let members = self.members(name);
                let service = members.first()?.1.service.as_ref()?;
                let words: Vec<_> = members
                    .iter()
                    .filter_map(|(id, _)| self.states.load(*id))
                    .collect();
                let ejected = words.iter().filter(|w| machine::ejected(**w)).count();
                let away = words.iter().filter(|w| machine::turns_away(**w)).count();
                let state = match away {
                    0 => "closed",
                    n if n >= service.members.len() => "open",
                    _ => "degraded",
                };
                Some(ServiceStatus {
                    name: name.to_string(),
                    state: state.to_string(),
                    endpoints: service.members.len() as u32,
                    ejected: ejected as u32,
                    max_ejected: service.eject_cap(),
                })
            })
            .collect()
    }

    fn status(&self, name: Option<&str>) -> Response {
        let chosen: Vec<&(u32, Upstream)> = match name {
            // A service's name shows each of its endpoints in full.
            Some(name) if !self.members(name).is_empty() => self.members(name),
            Some(name) => match self.find(name) {
                Ok(found) => vec![found],
                Err(e) => return Response::error(e),
            },
            None => self.upstreams.iter().collect(),
        };
        let services = self.services(&chosen);
        let per_address_ids: std::collections::HashMap<&str, u32> = chosen
            .iter()
            .filter(|(_, u)| u.per_address)
            .map(|(id, u)| (u.name.as_str(), *id))
            .collect();
        let now = Instant::now();
        let upstreams: Vec<UpstreamStatus> = chosen
            .into_iter()
            .filter_map(|(id, up)| {
                let word = self.states.load(*id)?;
                let counters = self.counters.get(*id).unwrap_or_default();
                let history = self.metrics.history();
                let phase = u64::from(word.phase_ms(now_ms()));
                let since_ms = match word.state() {
                    State::Closed => history
                        .since_last_transition(*id)
                        .map(|d| d.as_millis() as u64),
                    _ => Some(phase),
                };
                let open_ms = up.policy.open_duration.as_millis() as u64;
                let this_open = (word.state() == State::Open).then(|| {
                    u64::from(breaker_common::machine::open_duration_ms(
                        word,
                        &crate::kernel::thresholds(&up.policy),
                    ))
                });
                let next_probe_ms = match (word.mode(), word.state(), this_open) {
                    (Mode::Auto, State::Open, Some(open)) => Some(open.saturating_sub(phase)),
                    // The probe interval, grown by failed attempts (the scheduler's
                    // own last probe time is not shared: at most this long).
                    (Mode::Auto, State::HalfOpen, _) => {
                        Some(u64::from(breaker_common::machine::probe_interval_ms(
                            word,
                            up.policy.probe_interval.as_millis() as u32,
                            &crate::kernel::thresholds(&up.policy),
                        )))
                    }
                    _ => None,
                };
                let detail = name.map(|_| Detail {
                    endpoints: up.endpoints.iter().map(|e| e.to_string()).collect(),
                    fallback: up.fallbacks.iter().map(|f| f.describe()).collect(),
                    policy: PolicyView {
                        failure_threshold: up.policy.failure_threshold,
                        success_threshold: up.policy.success_threshold,
                        half_open_max_connections: up.policy.half_open_max_connections,
                        open_duration_ms: open_ms,
                        max_open_duration_ms: up.policy.max_open_duration.as_millis() as u64,
                        jitter_percent: up.policy.jitter_pct,
                        trial_connect_timeout_ms: up.policy.trial_connect_timeout.as_millis()
                            as u64,
                        probe_interval_ms: up.policy.probe_interval.as_millis() as u64,
                        probe_timeout_ms: up.policy.probe_timeout.as_millis() as u64,
                        failure_rate: up.policy.rate.map(|r| FailureRateView {
                            threshold_percent: r.threshold_pct,
                            minimum_connects: r.minimum_connects,
                            window_ms: r.window.as_millis() as u64,
                        }),
                        slow_connects: up.policy.slow.map(|s| SlowConnectsView {
                            threshold_ms: s.threshold.as_millis() as u64,
                            counted: up.policy.count.slow,
                            rate: s.rate.map(|r| FailureRateView {
                                threshold_percent: r.threshold_pct,
                                minimum_connects: r.minimum_connects,
                                window_ms: r.window.as_millis() as u64,
                            }),
                        }),
                    },
                    transitions: history.transitions(*id),
                });
                Some(UpstreamStatus {
                    name: up.name.clone(),
                    state: word.state().name().to_string(),
                    mode: word.mode().name().to_string(),
                    dry_run: up.dry_run || self.dry_run_all,
                    since_ms,
                    count: word.streak(),
                    reopens: word.reopens(),
                    open_ms: this_open,
                    last_minute: history.window(now, *id, &counters),
                    total: Some(history::totals(&counters)),
                    next_probe_ms,
                    detail,
                    addresses: None,
                })
            })
            .collect();
        let by_owner = self.metrics.destination_counts();
        let now = now_ms();
        let counts_of = |id: u32| {
            let c = by_owner.get(&id).copied().unwrap_or_default();
            DestinationCounts {
                closed: c.closed,
                open: c.open,
                half_open: c.half_open,
                tripped: self
                    .metrics
                    .tripped_destinations(TRIPPED_SHOWN, id)
                    .into_iter()
                    .map(|(dest, w)| TrippedDestination {
                        destination: dest.to_string(),
                        state: w.state().name().to_string(),
                        since_ms: u64::from(w.phase_ms(now)),
                    })
                    .collect(),
            }
        };
        let default_policy = self
            .default_policy
            .then(|| counts_of(breaker_common::abi::DEFAULT_UPSTREAM_ID));
        let upstreams = upstreams
            .into_iter()
            .map(|mut u| {
                if let Some(id) = per_address_ids.get(u.name.as_str()) {
                    u.addresses = Some(counts_of(*id));
                }
                u
            })
            .collect();
        Response {
            ok: true,
            status: Some(Status {
                upstreams,
                default_policy,
                services,
            }),
            ..Default::default()
        }
    }

    /// An override (`Some`) or a reset to automatic (`None`), with the same
    /// compare-and-swap the kernel uses.
    fn set_mode(&self, name: &str, mode: Option<Mode>) -> Response {
        let (id, _) = match self.find(name) {
            Ok(found) => found,
            Err(e) => return Response::error(e),
        };
        let step = self.states.update(*id, |w| match mode {
            Some(mode) => machine::set_mode(w, mode),
            None => machine::reset(w),
        });
        let Some((prev, step)) = step else {
            return Response::error(format!(
                "upstream {name:?}: its breaker word could not be changed (contention); try again"
            ));
        };
        let now = step.next.mode();
        tracing::info!(
            upstream = name,
            from = prev.mode().name(),
            to = now.name(),
            state = step.next.state().name(),
            "operator set the breaker's mode"
        );
        if let Some((from, to)) = step.transition(prev) {
            crate::events::record(
                self.metrics,
                &Transition {
                    upstream: *id,
                    from,
                    to,
                    cause: "operator_reset",
                    dest: None,
                },
            );
        }
        Response::done(match mode {
            Some(mode) => format!(
                "{name}: mode {} (until `breaker reset {name}`)",
                mode.name()
            ),
            None => format!("{name}: back to auto, {}", step.next.state().name()),
        })
    }
}

/// `status` as a table: one line per upstream, and with one upstream its
/// endpoints, policy and last transitions.
pub fn render_status(status: &Status) -> String {
    // Exact below a minute, whole seconds above.
    let ms = |v: Option<u64>| {
        v.map_or("-".to_string(), |ms| {
            let ms = if ms < 60_000 { ms } else { ms / 1000 * 1000 };
            humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
        })
    };
    let mut rows = vec![[
        "UPSTREAM".to_string(),
        "STATE".into(),
        "MODE".into(),
        "SINCE".into(),
        "COUNT".into(),
        "CONNECTS/1m".into(),
        "FAILURES/1m".into(),
        "REJECTED/1m".into(),
        "NEXT PROBE".into(),
    ]];
    for u in &status.upstreams {
        let mode = if u.dry_run && u.mode == "auto" {
            "dry_run".to_string()
        } else {
            u.mode.clone()
        };
        rows.push([
            u.name.clone(),
            u.state.clone(),
            mode,
            ms(u.since_ms),
            u.count.to_string(),
            u.last_minute.connects.to_string(),
            u.last_minute.failures.to_string(),
            u.last_minute.rejected.to_string(),
            ms(u.next_probe_ms),
        ]);
    }
    let mut widths = [0usize; 9];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for s in &status.services {
        out.push_str(&format!(
            "service {}: {}, {} of {} endpoints ejected (at most {} at once)\n",
            s.name, s.state, s.ejected, s.endpoints, s.max_ejected
        ));
    }
    for u in &status.upstreams {
        let Some(a) = &u.addresses else { continue };
        out.push_str(&format!(
            "upstream {} per address: {} open, {} half_open, {} closed with failures\n",
            u.name, a.open, a.half_open, a.closed
        ));
        for t in &a.tripped {
            out.push_str(&format!(
                "  {}  {} for {}\n",
                t.destination,
                t.state,
                ms(Some(t.since_ms))
            ));
        }
    }
    if let Some(d) = &status.default_policy {
        out.push_str(&format!(
            "default policy: {} open, {} half_open, {} closed with failures\n",
            d.open, d.half_open, d.closed
        ));
        for t in &d.tripped {
            out.push_str(&format!(
                "  {}  {} for {}\n",
                t.destination,
                t.state,
                ms(Some(t.since_ms))
            ));
        }
    }
    for u in &status.upstreams {
        let Some(detail) = &u.detail else { continue };
        let p = &detail.policy;
        out.push_str(&format!(
            "\n{}\n  endpoints: {}\n  fallback:  {}\n  policy:    failure_threshold {}{}, success_threshold {}, half_open_max_connections {}, open_duration {}{}, trial_connect_timeout {}, probe every {} (timeout {})\n{}{}  transitions:\n",
            u.name,
            detail.endpoints.join(", "),
            if detail.fallback.is_empty() { "none".to_string() } else { detail.fallback.join(", ") },
            p.failure_threshold,
            p.failure_rate.map_or(String::new(), |r| format!(
                ", failure_rate_threshold {} % of at least {} in {}",
                r.threshold_percent,
                r.minimum_connects,
                ms(Some(r.window_ms))
            )),
            p.success_threshold,
            p.half_open_max_connections,
            ms(Some(p.open_duration_ms)),
            match (p.max_open_duration_ms > p.open_duration_ms, p.jitter_percent) {
                (false, 0) => String::new(),
                (true, 0) => format!(" doubling to {}", ms(Some(p.max_open_duration_ms))),
                (false, j) => format!(" (jitter {j} %)"),
                (true, j) => format!(
                    " doubling to {} (jitter {j} %)",
                    ms(Some(p.max_open_duration_ms))
                ),
            },
            ms(Some(p.trial_connect_timeout_ms)),
            ms(Some(p.probe_interval_ms)),
            ms(Some(p.probe_timeout_ms)),
            match (u.open_ms, u.reopens) {
                (Some(open), 0) => format!("  open:      {} this time\n", ms(Some(open))),
                (Some(open), n) => format!(
                    "  open:      {} this time, after {n} failed recovery attempt(s) since it last closed\n",
                    ms(Some(open))
                ),
                (None, 0) => String::new(),
                (None, n) => format!("  recovery:  {n} failed attempt(s) since it last closed\n"),
            },
            p.slow_connects.map_or(String::new(), |s| format!(
                "  slow:      a connect answered after {} or more{}{}\n",
                ms(Some(s.threshold_ms)),
                if s.counted { ", counted as a failure" } else { "" },
                s.rate.map_or(String::new(), |r| format!(
                    ", slow_rate_threshold {} % of at least {} in {}",
                    r.threshold_percent,
                    r.minimum_connects,
                    ms(Some(r.window_ms))
                )),
            )),
        ));
        if detail.transitions.is_empty() {
            out.push_str("    none since the daemon started\n");
        }
        for t in &detail.transitions {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(t.at_unix_ms);
            out.push_str(&format!(
                "    {}  {} -> {}  ({})\n",
                humantime::format_rfc3339_seconds(at),
                t.from,
                t.to,
                t.cause
            ));
        }
    }
    out
}
