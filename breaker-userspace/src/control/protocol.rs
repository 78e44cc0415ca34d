//! The control protocol: one JSON request per line from the CLI, one JSON
//! response per line from the daemon. `--json` prints the response's `status`
//! as it comes, so these types are the documented, stable JSON of `status`.
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Every upstream, or one (with its endpoints, policy and last transitions).
    Status {
        #[serde(default)]
        upstream: Option<String>,
    },
    /// Reject (or redirect) every connect to the upstream, no probing.
    ForceOpen { upstream: String },
    /// Let every connect through; still count and report.
    ForceClose { upstream: String },
    /// Neither count nor enforce.
    Disable { upstream: String },
    /// Back to automatic: CLOSED, the current streak zeroed.
    Reset { upstream: String },
    /// Re-read the config file (as SIGHUP does).
    Reload,
    /// Transitions: the recent ones, or (`follow`) every new one as it happens,
    /// one [`EventView`] per line after the first answer line, until the caller
    /// hangs up.
    Events {
        #[serde(default)]
        follow: bool,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// What went wrong, in one line, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What was done, for verbs that change something.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Recent transitions, oldest first (`events` without `follow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventView>>,
}

impl Response {
    pub fn error(e: impl std::fmt::Display) -> Response {
        Response {
            ok: false,
            error: Some(e.to_string()),
            ..Default::default()
        }
    }

    pub fn done(message: impl Into<String>) -> Response {
        Response {
            ok: true,
            message: Some(message.into()),
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub upstreams: Vec<UpstreamStatus>,
    /// Default-policy destinations by state, when the default policy is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_policy: Option<DestinationCounts>,
    /// `per_endpoint` services, each derived from its endpoints' breakers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceStatus>,
}

/// A service of several endpoints, derived from its endpoints' breakers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// "closed" (no endpoint turns connects away), "degraded" (some do: connects
    /// to them are steered to the others), or "open" (every one does: the
    /// service's connects go to its fallbacks or fail fast); `force_open`
    /// counts, as it turns connects away.
    pub state: String,
    pub endpoints: u32,
    /// Endpoints ejected now (automatic and out of CLOSED: what the cap counts;
    /// an operator's override is outside it).
    pub ejected: u32,
    /// How many may be out of CLOSED at once.
    pub max_ejected: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamStatus {
    pub name: String,
    /// A per-address upstream's breakers (`per_endpoint` over a CIDR or
    /// any-port endpoint), one per address and port, by state; its own
    /// `state` is then its override's word, CLOSED in auto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<DestinationCounts>,
    /// `closed`, `open` or `half_open`.
    pub state: String,
    /// `auto`, `force_open`, `force_closed` or `disabled`.
    pub mode: String,
    /// `true` when the upstream (or the whole daemon) is in dry run.
    pub dry_run: bool,
    /// Milliseconds in the current state (OPEN: since the trip; HALF_OPEN: since
    /// it began or admitted its newest trial), or since the last transition the
    /// daemon saw; `null` when unknown.
    pub since_ms: Option<u64>,
    /// Consecutive failures (CLOSED) or successes (HALF_OPEN).
    pub count: u32,
    /// Failed recovery attempts since the breaker last closed (trials that
    /// reopened it, probes that failed): with `max_open_duration`, each doubles
    /// the open time and the probe interval, up to it.
    #[serde(default)]
    pub reopens: u32,
    /// OPEN: how long this open phase lasts, its growth and jitter included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_ms: Option<u64>,
    pub last_minute: Window,
    /// Counts since the kernel's counters began, for rates: `breaker top` divides
    /// the difference between two answers by the time between them. Absent from
    /// a daemon older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Totals>,
    /// Milliseconds until the next probe can start: OPEN, until `open_duration`
    /// has passed; HALF_OPEN, at most `probe_interval`; `null` when none is due.
    pub next_probe_ms: Option<u64>,
    /// With `status NAME` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Detail>,
}

/// Counts over the last minute (or since the daemon started, if less).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub seconds: u64,
    pub connects: u64,
    pub failures: u64,
    pub rejected: u64,
}

/// Counts since the kernel's counters began (they outlive a restart that keeps
/// the pins).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub connects: u64,
    pub failures: u64,
    pub rejected: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detail {
    pub endpoints: Vec<String>,
    pub fallback: Vec<String>,
    pub policy: PolicyView,
    /// Newest last.
    pub transitions: Vec<TransitionView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyView {
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub half_open_max_connections: u32,
    pub open_duration_ms: u64,
    /// The open time's ceiling as reopens double it (equal to `open_duration_ms`:
    /// no growth).
    #[serde(default)]
    pub max_open_duration_ms: u64,
    #[serde(default)]
    pub jitter_percent: u32,
    pub trial_connect_timeout_ms: u64,
    pub probe_interval_ms: u64,
    pub probe_timeout_ms: u64,
    /// Failure-rate tripping, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<FailureRateView>,
    /// What a slow connect is, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_connects: Option<SlowConnectsView>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowConnectsView {
    pub threshold_ms: u64,
    /// Whether a slow connect counts toward opening as a failure (`count`).
    pub counted: bool,
    /// Slow-rate tripping, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<FailureRateView>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRateView {
    pub threshold_percent: u32,
    pub minimum_connects: u32,
    pub window_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionView {
    /// Unix time in milliseconds.
    pub at_unix_ms: u64,
    pub from: String,
    pub to: String,
    pub cause: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationCounts {
    pub closed: u64,
    pub open: u64,
    pub half_open: u64,
    /// Up to 10 tripped destinations, the most recently changed first.
    #[serde(default)]
    pub tripped: Vec<TrippedDestination>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrippedDestination {
    pub destination: String,
    /// `open` or `half_open`.
    pub state: String,
    /// Milliseconds in that state.
    pub since_ms: u64,
}

/// One transition, as `breaker events` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// Unix time in milliseconds.
    pub at_unix_ms: u64,
    pub upstream: String,
    /// The destination, for a default-policy breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    pub from: String,
    pub to: String,
    pub cause: String,
}

impl std::fmt::Display for EventView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.at_unix_ms);
        write!(
            f,
            "{}  {}",
            humantime::format_rfc3339_millis(at),
            self.upstream
        )?;
        if let Some(dest) = &self.destination {
            write!(f, " {dest}")?;
        }
        write!(f, "  {} -> {}  ({})", self.from, self.to, self.cause)
    }
}
