//! The TOML configuration: parsing, defaults, per-upstream overrides and validation.
//!
//! Errors name the file, the field and why (see [`ConfigError`]); nothing is loaded
//! or attached until a config has passed [`Config::from_file`].
mod count;
mod endpoint;
mod fallback;
mod interface;
mod memory;
mod service;

use std::{
    collections::{HashMap, HashSet},
    io::Read,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use breaker_common::machine::{State, MAX_IN_FLIGHT, MAX_STREAK};
use ipnet::IpNet;
use serde::Deserialize;

pub use count::CountSet;
pub use endpoint::{owner_of, unmap_v4_addr, Endpoint, EndpointParseError};
pub use fallback::Fallback;
pub use interface::{Hook, Interface, PacketAction};
pub use memory::{possible_cpus, MapSizes, PACKET_FLOW_SLOTS};
pub use service::Service;

/// Where a config went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {file}: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "config {file} is larger than {limit} bytes: a breaker config is a few KiB, is it the right file?"
    )]
    TooLarge { file: PathBuf, limit: u64 },
    /// A TOML syntax error, or a value of the wrong type or an unknown key. `at` is
    /// where: the line and column, and the field's path when the parser knows it.
    #[error("config {file}: {at}: {message}")]
    Parse {
        file: PathBuf,
        at: String,
        message: String,
    },
    #[error("config {file}: {field}: {reason}")]
    Invalid {
        file: PathBuf,
        field: String,
        reason: String,
    },
}

/// Defaults, as documented in the README's configuration reference.
/// Longest an alert delivery may wait for its receiver.
pub const MAX_ALERT_TIMEOUT: Duration = Duration::from_secs(60);

pub mod defaults {
    use std::time::Duration;
    pub const FAILURE_THRESHOLD: u32 = 5;
    pub const SUCCESS_THRESHOLD: u32 = 1;
    /// Every configured upstream has a probe, so by default its recovery is
    /// probe-driven: application connects keep failing fast until a probe succeeds.
    pub const UPSTREAM_HALF_OPEN_MAX_CONNECTIONS: u32 = 0;
    /// The default policy has no probe: application trials are its only way back.
    pub const DEFAULT_POLICY_HALF_OPEN_MAX_CONNECTIONS: u32 = 1;
    pub const TRIAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const OPEN_DURATION: Duration = Duration::from_secs(30);
    pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
    pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
    pub const METRICS_LISTEN: &str = "127.0.0.1:9464";
    /// Where bpffs is mounted; pin folders live inside it.
    pub const BPFFS: &str = "/sys/fs/bpf";
    pub const PIN_PATH: &str = "/sys/fs/bpf/breaker";
    pub const CONTROL_SOCKET: &str = "/run/breaker/control.sock";
    pub const ALERT_TIMEOUT: Duration = Duration::from_secs(5);
    /// "brk" in ASCII.
    pub const PROBE_MARK: u32 = 0x0062_726b;
    pub const DEFAULT_POLICY_MAX_DESTINATIONS: u32 = 65_536;
    /// Hystrix's rolling window: 10 s in 10 buckets, and at least 20 requests in
    /// it before the error percentage counts.
    pub const WINDOW: Duration = Duration::from_secs(10);
    pub const MINIMUM_CONNECTS: u32 = 20;
}

/// Largest config file read: real configs are a few KiB (100 000 endpoints are about
/// 2 MiB); anything bigger is the wrong file, or `/dev/zero`.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Largest `default_policy.max_destinations`: about 384 MiB of kernel memory per map (see
/// [`Config::kernel_memory_estimate`]), which no RSS shows; more is a typo, not a plan.
pub const MAX_DESTINATIONS: u32 = 1 << 22;
/// Longest probe_interval: beyond an hour an open breaker effectively never recovers.
const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(3600);
const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// Longest probe_timeout: a probe is one TCP connect or HTTP GET.
const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest open_duration: the kernel keeps trip times as wrapping milliseconds in 32 bits.
const MAX_OPEN_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Bounds of trial_connect_timeout: the kernel fits a trial socket's SYN
/// retransmissions into it, which needs at least a few milliseconds.
const MIN_TRIAL_CONNECT_TIMEOUT: Duration = Duration::from_millis(10);
const MAX_TRIAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bounds of connect_timeout, the initial SYN RTO of watched connects: at least
/// the kernel's TCP_RTO_MIN (a shorter one would count slow but healthy connects
/// as timeouts, and the retransmitted SYNs start connections with a cwnd of 1),
/// and at most its TCP_RTO_MAX.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(120);
/// Bounds of the failure-rate window: buckets of 100 ms to 1 min.
const MIN_WINDOW: Duration = Duration::from_secs(1);
const MAX_WINDOW: Duration = Duration::from_secs(600);
/// Largest minimum_connects: ten buckets of at most 65 535 connects each.
const MAX_MINIMUM_CONNECTS: u32 = 100_000;
/// The kernel's initial SYN RTO: without `connect_timeout`, a connect unanswered
/// this long counts as a timeout.
const KERNEL_SYN_RTO: Duration = Duration::from_secs(1);
/// Shortest slow_connect_threshold: a few ticks of the coarsest kernel clock
/// (100 Hz), which measures connect times.
const MIN_SLOW_CONNECT_THRESHOLD: Duration = Duration::from_millis(10);

/// The thresholds and timings of one breaker, after defaults and overrides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub failure_threshold: u32,
    pub success_threshold: u32,
    /// Application connects HALF_OPEN admits at once as trials; 0: probes only.
    pub half_open_max_connections: u32,
    /// How long a HALF_OPEN trial connect may take before it counts as failed.
    pub trial_connect_timeout: Duration,
    /// How long after its SYN an unanswered connect counts as a `timeout` (its
    /// initial SYN RTO); `None` leaves the kernel's 1 s.
    pub connect_timeout: Option<Duration>,
    pub open_duration: Duration,
    /// Each reopen since the last close doubles the open time, up to this (at
    /// least `open_duration`; equal to it by default: no growth).
    pub max_open_duration: Duration,
    /// Up to this percent more open time, chosen per trip (0 by default).
    pub jitter_pct: u32,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    /// Failure-rate tripping, beside the consecutive count; `None`: off.
    pub rate: Option<RatePolicy>,
    /// Which failures count toward opening (both the streak and the rate).
    pub count: CountSet,
    /// Slow-connect detection; `None`: no connect is slow.
    pub slow: Option<SlowPolicy>,
}

impl Policy {
    /// The window's size and minimum volume, when the upstream keeps one (for the
    /// failure rate, the slow rate or both: they share it).
    pub fn window(&self) -> Option<RatePolicy> {
        self.rate.or(self.slow.and_then(|s| s.rate))
    }

    /// The slow-connect threshold, when a slow connect counts as a failure
    /// (`count` names "slow"): what a probe must beat, as a trial must. (A slow
    /// rate counts no trials, and no probes either.)
    pub fn slow_fails(&self) -> Option<Duration> {
        self.slow.filter(|_| self.count.slow).map(|s| s.threshold)
    }
}

/// A successful connect whose SYN took at least `threshold` to be answered is
/// slow (Resilience4j's slow calls); slow connects are counted, count toward
/// opening where `count` names "slow", and open the breaker when `rate` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowPolicy {
    pub threshold: Duration,
    /// `slow_rate_threshold`: `threshold_pct` percent of the connects in the
    /// window are slow (same `window` and `minimum_connects` as the failure rate).
    pub rate: Option<RatePolicy>,
}

/// The breaker also opens when `threshold_pct` percent of the connects in the
/// last `window` fail, once the window holds at least `minimum_connects`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RatePolicy {
    pub threshold_pct: u32,
    pub minimum_connects: u32,
    pub window: Duration,
}

/// How the daemon checks an upstream while it is open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub address: SocketAddr,
    /// Set: an HTTP GET of this path must answer 2xx. Unset: a TCP connect must succeed.
    pub http_path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    /// Where rejected connects go, in the order tried (see [`Fallback`]).
    pub fallbacks: Vec<Fallback>,
    /// Entries of the chain no connect could reach (an earlier address takes
    /// every connect of their families), for check-config's warnings.
    pub fallbacks_unreached: Vec<String>,
    pub policy: Policy,
    pub probe: Probe,
    /// `mode = "dry_run"`: the breaker runs and reports, but never rejects.
    pub dry_run: bool,
    /// What the packet path does with a SYN this breaker rejects.
    pub packet_action: PacketAction,
    /// Set for one endpoint of a `per_endpoint = true` upstream (a service):
    /// this breaker guards that endpoint alone, named `service/address`.
    pub service: Option<Service>,
    /// `per_endpoint = true` over CIDR or any-port endpoints: each address and
    /// port it matches keeps a breaker of its own (see `service.rs`).
    pub per_address: bool,
    /// Where it was written, for errors found once every upstream is known:
    /// `upstream[i] ("name")` (a service's name for each of its endpoints).
    pub written_at: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultPolicy {
    pub policy: Policy,
    pub max_destinations: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Daemon {
    pub metrics_listen: SocketAddr,
    pub probe_mark: u32,
    /// The bpffs folder that holds every pinned map and link.
    pub pin_path: PathBuf,
    /// Every breaker in dry run (see [`Upstream::dry_run`]).
    pub dry_run: bool,
    /// The control socket (Unix, root only) the CLI talks to.
    pub control_socket: PathBuf,
    /// How the daemon writes its log lines.
    pub log_format: LogFormat,
}

/// `daemon.log_format` (and `breaker --log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// How an alert's body is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertFormat {
    /// The transition as `breaker events --json` prints it.
    Json,
    /// `{"text": "..."}`, what Slack's incoming webhooks (and many chat tools) take.
    Slack,
}

/// An `[[alert]]`: a webhook told of breaker transitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// `alert[i]`, for metrics and logs.
    pub name: String,
    pub url: String,
    pub format: AlertFormat,
    /// Only these upstreams (empty: every configured upstream).
    pub upstreams: Vec<String>,
    /// Only transitions into these states (empty: all).
    pub to: Vec<State>,
    /// For one delivery attempt.
    pub timeout: Duration,
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The cgroup to attach to; `None` is the cgroup2 root (the whole host).
    pub cgroup: Option<PathBuf>,
    pub daemon: Daemon,
    pub upstreams: Vec<Upstream>,
    pub default_policy: Option<DefaultPolicy>,
    pub alerts: Vec<Alert>,
    /// `[[interface]]`: where the packet path watches SYNs and answers.
    pub interfaces: Vec<Interface>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cgroup: Option<PathBuf>,
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    defaults: RawPolicy,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
    default_policy: Option<RawDefaultPolicy>,
    #[serde(default)]
    alert: Vec<RawAlert>,
    #[serde(default)]
    interface: Vec<interface::RawInterface>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlert {
    url: String,
    format: Option<String>,
    upstreams: Option<Vec<String>>,
    transitions: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    metrics_listen: Option<String>,
    probe_mark: Option<u32>,
    pin_path: Option<PathBuf>,
    #[serde(default)]
    dry_run: bool,
    control_socket: Option<PathBuf>,
    #[serde(default)]
    log_format: LogFormat,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    failure_threshold: Option<u32>,
    success_threshold: Option<u32>,
    half_open_max_connections: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    trial_connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    open_duration: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_open_duration: Option<Duration>,
    jitter: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    probe_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    probe_timeout: Option<Duration>,
    failure_rate_threshold: Option<u32>,
    minimum_connects: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    window: Option<Duration>,
    count: Option<CountSet>,
    #[serde(default, with = "humantime_serde")]
    slow_connect_threshold: Option<Duration>,
    slow_rate_threshold: Option<u32>,
}

// The policy keys are spelled out in RawUpstream and RawDefaultPolicy rather than
// `#[serde(flatten)]`ed: flatten loses the position of a bad value, and an error
// would point at the table header instead of the key.
macro_rules! raw_policy_of {
    ($raw:expr) => {
        RawPolicy {
            failure_threshold: $raw.failure_threshold,
            success_threshold: $raw.success_threshold,
            half_open_max_connections: $raw.half_open_max_connections,
            trial_connect_timeout: $raw.trial_connect_timeout,
            connect_timeout: $raw.connect_timeout,
            open_duration: $raw.open_duration,
            max_open_duration: $raw.max_open_duration,
            jitter: $raw.jitter,
            probe_interval: $raw.probe_interval,
            probe_timeout: $raw.probe_timeout,
            failure_rate_threshold: $raw.failure_rate_threshold,
            minimum_connects: $raw.minimum_connects,
            window: $raw.window,
            count: $raw.count,
            slow_connect_threshold: $raw.slow_connect_threshold,
            slow_rate_threshold: $raw.slow_rate_threshold,
        }
    };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    endpoints: Vec<String>,
    #[serde(default)]
    fallback: OneOrMany,
    #[serde(default)]
    fallbacks: OneOrMany,
    probe: Option<RawProbe>,
    #[serde(default)]
    allow_catch_all: bool,
    #[serde(default)]
    allow_loopback: bool,
    mode: Option<String>,
    packet_action: Option<String>,
    failure_threshold: Option<u32>,
    success_threshold: Option<u32>,
    half_open_max_connections: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    trial_connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    open_duration: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_open_duration: Option<Duration>,
    jitter: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    probe_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    probe_timeout: Option<Duration>,
    failure_rate_threshold: Option<u32>,
    minimum_connects: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    window: Option<Duration>,
    count: Option<CountSet>,
    #[serde(default, with = "humantime_serde")]
    slow_connect_threshold: Option<Duration>,
    slow_rate_threshold: Option<u32>,
    #[serde(default)]
    per_endpoint: bool,
    max_ejected_percent: Option<u32>,
    min_healthy_percent: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(
    untagged,
    expecting = "an upstream's name or an address:port, or a list of them"
)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::None => vec![],
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    address: Option<String>,
    http_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaultPolicy {
    #[serde(default = "yes")]
    enabled: bool,
    max_destinations: Option<u32>,
    failure_threshold: Option<u32>,
    success_threshold: Option<u32>,
    half_open_max_connections: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    trial_connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    open_duration: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_open_duration: Option<Duration>,
    jitter: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    probe_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    probe_timeout: Option<Duration>,
    failure_rate_threshold: Option<u32>,
    minimum_connects: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    window: Option<Duration>,
    count: Option<CountSet>,
    #[serde(default, with = "humantime_serde")]
    slow_connect_threshold: Option<Duration>,
    slow_rate_threshold: Option<u32>,
}

fn yes() -> bool {
    true
}

impl RawPolicy {
    /// `self` over `base`.
    fn over(self, base: RawPolicy) -> RawPolicy {
        RawPolicy {
            failure_threshold: self.failure_threshold.or(base.failure_threshold),
            success_threshold: self.success_threshold.or(base.success_threshold),
            half_open_max_connections: self
                .half_open_max_connections
                .or(base.half_open_max_connections),
            trial_connect_timeout: self.trial_connect_timeout.or(base.trial_connect_timeout),
            connect_timeout: self.connect_timeout.or(base.connect_timeout),
            open_duration: self.open_duration.or(base.open_duration),
            max_open_duration: self.max_open_duration.or(base.max_open_duration),
            jitter: self.jitter.or(base.jitter),
            probe_interval: self.probe_interval.or(base.probe_interval),
            probe_timeout: self.probe_timeout.or(base.probe_timeout),
            failure_rate_threshold: self.failure_rate_threshold.or(base.failure_rate_threshold),
            minimum_connects: self.minimum_connects.or(base.minimum_connects),
            window: self.window.or(base.window),
            count: self.count.or(base.count),
            slow_connect_threshold: self.slow_connect_threshold.or(base.slow_connect_threshold),
            slow_rate_threshold: self.slow_rate_threshold.or(base.slow_rate_threshold),
        }
    }
}

/// Collects validation errors against one file.
struct Check<'a> {
    file: &'a Path,
}

/// What earlier upstreams claimed: names and endpoints are unique across the file.
#[derive(Default)]
struct Seen {
    names: HashSet<String>,
    /// Endpoint (v4-mapped ones as IPv4) -> the upstream that has it, and how it was written.
    endpoints: HashMap<Endpoint, (String, String)>,
}

impl Check<'_> {
    fn fail<T>(
        &self,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(ConfigError::Invalid {
            file: self.file.to_path_buf(),
            field: field.into(),
            reason: reason.into(),
        })
    }

    /// `raw` with defaults filled in, validated. `half_open_default` differs between
    /// upstreams and the default policy (see [`defaults`]).
    fn policy(
        &self,
        at: &str,
        raw: RawPolicy,
        half_open_default: u32,
    ) -> Result<Policy, ConfigError> {
        let p = Policy {
            failure_threshold: raw.failure_threshold.unwrap_or(defaults::FAILURE_THRESHOLD),
            success_threshold: raw.success_threshold.unwrap_or(defaults::SUCCESS_THRESHOLD),
            half_open_max_connections: raw.half_open_max_connections.unwrap_or(half_open_default),
            trial_connect_timeout: raw
                .trial_connect_timeout
                .unwrap_or(defaults::TRIAL_CONNECT_TIMEOUT),
            connect_timeout: raw.connect_timeout,
            open_duration: raw.open_duration.unwrap_or(defaults::OPEN_DURATION),
            max_open_duration: raw
                .max_open_duration
                .or(raw.open_duration)
                .unwrap_or(defaults::OPEN_DURATION),
            jitter_pct: raw.jitter.unwrap_or(0),
            probe_interval: raw.probe_interval.unwrap_or(defaults::PROBE_INTERVAL),
            probe_timeout: raw.probe_timeout.unwrap_or(defaults::PROBE_TIMEOUT),
            rate: raw.failure_rate_threshold.map(|threshold_pct| RatePolicy {
                threshold_pct,
                minimum_connects: raw.minimum_connects.unwrap_or(defaults::MINIMUM_CONNECTS),
                window: raw.window.unwrap_or(defaults::WINDOW),
            }),
            count: raw.count.unwrap_or_default(),
            slow: raw.slow_connect_threshold.map(|threshold| SlowPolicy {
                threshold,
                rate: raw.slow_rate_threshold.map(|threshold_pct| RatePolicy {
                    threshold_pct,
                    minimum_connects: raw.minimum_connects.unwrap_or(defaults::MINIMUM_CONNECTS),
                    window: raw.window.unwrap_or(defaults::WINDOW),
                }),
            }),
        };
        let field = |name: &str| format!("{at}{name}");
        if !(1..=MAX_STREAK).contains(&p.failure_threshold) {
            return self.fail(
                field("failure_threshold"),
                format!(
                    "must be between 1 and {MAX_STREAK}, got {}",
                    p.failure_threshold
                ),
            );
        }
        if !(1..=MAX_STREAK).contains(&p.success_threshold) {
            return self.fail(
                field("success_threshold"),
                format!(
                    "must be between 1 and {MAX_STREAK}, got {}",
                    p.success_threshold
                ),
            );
        }
        if p.half_open_max_connections > MAX_IN_FLIGHT {
            return self.fail(
                field("half_open_max_connections"),
                format!(
                    "must be between 0 and {MAX_IN_FLIGHT}, got {}",
                    p.half_open_max_connections
                ),
            );
        }
        if !(MIN_TRIAL_CONNECT_TIMEOUT..=MAX_TRIAL_CONNECT_TIMEOUT)
            .contains(&p.trial_connect_timeout)
        {
            return self.fail(
                field("trial_connect_timeout"),
                format!(
                    "must be between 10ms and 60s, got {:?}",
                    p.trial_connect_timeout
                ),
            );
        }
        if let Some(t) = p.connect_timeout {
            if !(MIN_CONNECT_TIMEOUT..=MAX_CONNECT_TIMEOUT).contains(&t) {
                return self.fail(
                    field("connect_timeout"),
                    format!("must be between 200ms and 2m, got {t:?}"),
                );
            }
        }
        for (key, rate) in [
            ("failure_rate_threshold", p.rate),
            ("slow_rate_threshold", p.slow.and_then(|s| s.rate)),
        ] {
            if let Some(r) = rate {
                if !(1..=100).contains(&r.threshold_pct) {
                    return self.fail(
                        field(key),
                        format!(
                            "must be a percent between 1 and 100, got {}",
                            r.threshold_pct
                        ),
                    );
                }
            }
        }
        if raw.slow_connect_threshold.is_none() {
            if let Some(pct) = raw.slow_rate_threshold {
                return self.fail(
                    field("slow_rate_threshold"),
                    format!("{pct} % of slow connects needs slow_connect_threshold (here or in [defaults]) to say what slow is"),
                );
            }
            if p.count.slow {
                return self.fail(
                    field("count"),
                    "names \"slow\", which needs slow_connect_threshold (here or in [defaults]) to say what slow is",
                );
            }
        }
        if let Some(slow) = p.slow {
            let timeout = p.connect_timeout.unwrap_or(KERNEL_SYN_RTO);
            if slow.threshold < MIN_SLOW_CONNECT_THRESHOLD || slow.threshold >= timeout {
                return self.fail(
                    field("slow_connect_threshold"),
                    format!(
                        "must be at least 10ms and shorter than connect_timeout ({}{}): a connect unanswered that long counts as a timeout, never as slow; got {}",
                        humantime::format_duration(timeout),
                        if p.connect_timeout.is_none() { ", the kernel's" } else { "" },
                        humantime::format_duration(slow.threshold)
                    ),
                );
            }
        }
        if let Some(r) = p.window() {
            if !(1..=MAX_MINIMUM_CONNECTS).contains(&r.minimum_connects) {
                return self.fail(
                    field("minimum_connects"),
                    format!(
                        "must be between 1 and {MAX_MINIMUM_CONNECTS}, got {}",
                        r.minimum_connects
                    ),
                );
            }
            if !(MIN_WINDOW..=MAX_WINDOW).contains(&r.window) {
                return self.fail(
                    field("window"),
                    format!(
                        "must be between 1s and 10m, got {}",
                        humantime::format_duration(r.window)
                    ),
                );
            }
        }
        if p.open_duration < Duration::from_millis(1) || p.open_duration > MAX_OPEN_DURATION {
            return self.fail(
                field("open_duration"),
                format!("must be between 1ms and 24h, got {:?}", p.open_duration),
            );
        }
        if p.max_open_duration < p.open_duration || p.max_open_duration > MAX_OPEN_DURATION {
            return self.fail(
                field("max_open_duration"),
                format!(
                    "must be between open_duration ({}) and 24h, got {} (here or from [defaults])",
                    humantime::format_duration(p.open_duration),
                    humantime::format_duration(p.max_open_duration)
                ),
            );
        }
        if p.jitter_pct > 100 {
            return self.fail(
                field("jitter"),
                format!("must be a percent between 0 and 100, got {}", p.jitter_pct),
            );
        }
        if !(MIN_PROBE_INTERVAL..=MAX_PROBE_INTERVAL).contains(&p.probe_interval) {
            return self.fail(
                field("probe_interval"),
                format!("must be between 10ms and 1h, got {:?}", p.probe_interval),
            );
        }
        if p.probe_timeout.is_zero() || p.probe_timeout > MAX_PROBE_TIMEOUT {
            return self.fail(
                field("probe_timeout"),
                format!(
                    "must be more than 0 and at most 1m, got {:?}",
                    p.probe_timeout
                ),
            );
        }
        Ok(p)
    }

    fn daemon(&self, raw: &RawDaemon) -> Result<Daemon, ConfigError> {
        let metrics_listen = raw
            .metrics_listen
            .as_deref()
            .unwrap_or(defaults::METRICS_LISTEN);
        let metrics_listen = metrics_listen.parse::<SocketAddr>().or_else(|e| {
            self.fail(
                "daemon.metrics_listen",
                format!("{metrics_listen:?} is not an address:port ({e})"),
            )
        })?;
        if metrics_listen.port() == 0 {
            return self.fail(
                "daemon.metrics_listen",
                format!(
                    "{metrics_listen} has port 0: the listener would get a random port nobody knows to scrape"
                ),
            );
        }
        let probe_mark = raw.probe_mark.unwrap_or(defaults::PROBE_MARK);
        if probe_mark == 0 {
            return self.fail(
                "daemon.probe_mark",
                "must not be 0: unmarked sockets would bypass the breaker",
            );
        }
        let pin_path = raw
            .pin_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(defaults::PIN_PATH));
        if !pin_path.is_absolute() || !pin_path.starts_with(defaults::BPFFS) {
            return self.fail(
                "daemon.pin_path",
                format!(
                    "{} must be an absolute path under {}, the bpf filesystem",
                    pin_path.display(),
                    defaults::BPFFS
                ),
            );
        }
        if pin_path.components().any(|c| {
            matches!(
                c,
                std::path::Component::ParentDir | std::path::Component::CurDir
            )
        }) || pin_path == Path::new(defaults::BPFFS)
        {
            return self.fail(
                "daemon.pin_path",
                format!(
                    "{} must name a folder of its own inside {} (no '.' or '..'): uninstall removes all of it",
                    pin_path.display(),
                    defaults::BPFFS
                ),
            );
        }
        let control_socket = raw
            .control_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(defaults::CONTROL_SOCKET));
        if !control_socket.is_absolute() {
            return self.fail(
                "daemon.control_socket",
                format!("{} must be an absolute path", control_socket.display()),
            );
        }
        Ok(Daemon {
            metrics_listen,
            probe_mark,
            pin_path,
            dry_run: raw.dry_run,
            control_socket,
            log_format: raw.log_format,
        })
    }

    fn alert(&self, i: usize, raw: RawAlert, upstreams: &[Upstream]) -> Result<Alert, ConfigError> {
        let at = format!("alert[{i}]");
        let host = raw
            .url
            .strip_prefix("http://")
            .or_else(|| raw.url.strip_prefix("https://"))
            .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
        if host.is_none_or(str::is_empty) || raw.url.chars().any(char::is_whitespace) {
            return self.fail(
                format!("{at}.url"),
                format!("{:?} is not an http:// or https:// URL", raw.url),
            );
        }
        let format = match raw.format.as_deref() {
            None | Some("json") => AlertFormat::Json,
            Some("slack") => AlertFormat::Slack,
            Some(other) => {
                return self.fail(
                    format!("{at}.format"),
                    format!("{other:?} is not a format: \"json\" (the default) or \"slack\""),
                )
            }
        };
        let written = raw.upstreams.unwrap_or_default();
        if let Some(unknown) = written.iter().find(|n| {
            !upstreams
                .iter()
                .any(|u| &u.name == *n || u.service.as_ref().is_some_and(|s| &s.name == *n))
        }) {
            return self.fail(
                format!("{at}.upstreams"),
                format!("no [[upstream]] is named {unknown:?}"),
            );
        }
        // A service's name stands for each of its endpoints' breakers.
        let names: Vec<String> = upstreams
            .iter()
            .filter(|u| {
                written.contains(&u.name)
                    || u.service
                        .as_ref()
                        .is_some_and(|s| written.contains(&s.name))
            })
            .map(|u| u.name.clone())
            .collect();
        let mut to = Vec::new();
        for t in raw.transitions.unwrap_or_default() {
            to.push(match t.as_str() {
                "open" => State::Open,
                "half_open" => State::HalfOpen,
                "closed" => State::Closed,
                other => {
                    return self.fail(
                        format!("{at}.transitions"),
                        format!("{other:?} is not a state: \"open\", \"half_open\" or \"closed\" (the state a transition goes to)"),
                    )
                }
            });
        }
        let timeout = raw.timeout.unwrap_or(defaults::ALERT_TIMEOUT);
        if timeout.is_zero() || timeout > MAX_ALERT_TIMEOUT {
            return self.fail(
                format!("{at}.timeout"),
                format!(
                    "must be between 1ms and {}",
                    humantime::format_duration(MAX_ALERT_TIMEOUT)
                ),
            );
        }
        Ok(Alert {
            name: at,
            url: raw.url,
            format,
            upstreams: names,
            to,
            timeout,
        })
    }

    fn cgroup(&self, cgroup: Option<&Path>) -> Result<(), ConfigError> {
        if cgroup.is_some_and(|c| c.as_os_str().is_empty()) {
            return self.fail(
                "cgroup",
                "must not be empty (leave it out to attach to the cgroup2 root)",
            );
        }
        Ok(())
    }

    /// Upstream `i`, with `base` (the [defaults] table) under its own policy.
    fn upstream(
        &self,
        i: usize,
        up: RawUpstream,
        base: RawPolicy,
        seen: &mut Seen,
    ) -> Result<Vec<(Upstream, Vec<fallback::Written>)>, ConfigError> {
        let at = format!("upstream[{i}] ({:?})", up.name);
        self.upstream_name(i, &at, &up.name, seen)?;
        let endpoints = self.endpoints(&at, &up, seen)?;
        let per_address = self.per_address(&at, &up, &endpoints)?;
        let service = if per_address {
            None
        } else {
            self.service(&at, &up, &endpoints)?
        };
        let fallbacks = self.fallback_targets(&at, up.fallback, up.fallbacks, &endpoints)?;
        let base = if per_address {
            // Each address keeps no window: [defaults]' rates are not its.
            RawPolicy {
                failure_rate_threshold: None,
                slow_rate_threshold: None,
                minimum_connects: None,
                window: None,
                ..base
            }
        } else {
            base
        };
        let policy = self.policy(
            &format!("{at}."),
            raw_policy_of!(up).over(base),
            if per_address {
                // Recovered by trials, as the default policy's destinations.
                defaults::DEFAULT_POLICY_HALF_OPEN_MAX_CONNECTIONS
            } else {
                defaults::UPSTREAM_HALF_OPEN_MAX_CONNECTIONS
            },
        )?;
        if per_address && policy.half_open_max_connections == 0 {
            let mut reason = format!(
                "per_endpoint over CIDR or any-port endpoints has no probe: trial connects are \
                 each address's only way to recover; must be 1..={MAX_IN_FLIGHT}"
            );
            if up.half_open_max_connections.is_none() {
                reason.push_str(" (the 0 comes from [defaults]; set it here)");
            }
            return self.fail(format!("{at}.half_open_max_connections"), reason);
        }
        if policy.window().is_none() {
            for (key, set) in [
                ("minimum_connects", up.minimum_connects.is_some()),
                ("window", up.window.is_some()),
            ] {
                if set {
                    return self.fail(
                        format!("{at}.{key}"),
                        "has no effect without failure_rate_threshold or slow_rate_threshold (here or in [defaults])",
                    );
                }
            }
        }
        let probe = if per_address {
            self.address_probe(&endpoints)
        } else {
            self.probe(&at, up.probe.clone(), &endpoints)?
        };
        let dry_run = match up.mode.as_deref() {
            None | Some("enforce") => false,
            Some("dry_run") => true,
            Some(other) => {
                return self.fail(
                    format!("{at}.mode"),
                    format!("{other:?} is not a mode: \"enforce\" (the default) or \"dry_run\""),
                )
            }
        };
        let packet_action = self.packet_action(&at, up.packet_action.as_deref(), {
            // A service's endpoints fall back to each other.
            let siblings = service.as_ref().is_some_and(|s| s.members.len() > 1);
            !fallbacks.is_empty() || siblings
        })?;
        let upstream = Upstream {
            name: up.name,
            endpoints,
            // Resolved once every upstream is known.
            fallbacks: Vec::new(),
            fallbacks_unreached: Vec::new(),
            policy,
            probe,
            dry_run,
            packet_action,
            service: None,
            per_address,
            written_at: at.clone(),
        };
        match service {
            None => Ok(vec![(upstream, fallbacks)]),
            Some(service) => self.members(&at, upstream, up.probe, service, fallbacks),
        }
    }

    fn upstream_name(
        &self,
        i: usize,
        at: &str,
        name: &str,
        seen: &mut Seen,
    ) -> Result<(), ConfigError> {
        if name.is_empty()
            || name.len() > breaker_common::abi::UPSTREAM_NAME_MAX
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return self.fail(
                format!("upstream[{i}].name"),
                format!(
                    "{name:?} must be 1 to {} ASCII letters, digits, '-', '_' or '.'",
                    breaker_common::abi::UPSTREAM_NAME_MAX
                ),
            );
        }
        if name == "default" {
            return self.fail(
                format!("{at}.name"),
                "\"default\" is reserved for the default policy",
            );
        }
        if fallback::looks_like_address(name) {
            return self.fail(
                format!("{at}.name"),
                format!(
                    "{name:?} reads as an address, which a name must not (`fallbacks` \
                     holds names and addresses alike)"
                ),
            );
        }
        if !seen.names.insert(name.to_string()) {
            return self.fail(format!("{at}.name"), "another upstream has the same name");
        }
        Ok(())
    }

    /// The upstream's endpoints; each may belong to one upstream only.
    fn endpoints(
        &self,
        at: &str,
        up: &RawUpstream,
        seen: &mut Seen,
    ) -> Result<Vec<Endpoint>, ConfigError> {
        let (upstream, texts) = (&up.name, &up.endpoints);
        if texts.is_empty() {
            return self.fail(format!("{at}.endpoints"), "needs at least one endpoint");
        }
        let mut endpoints = Vec::with_capacity(texts.len());
        for (j, text) in texts.iter().enumerate() {
            let ep: Endpoint = text.parse().or_else(|e: EndpointParseError| {
                self.fail(format!("{at}.endpoints[{j}]"), format!("{text:?}: {e}"))
            })?;
            // Checked on the parsed form, so `[::ffff:0.0.0.0/96]` is caught as `0.0.0.0/0`.
            if ep.net.prefix_len() == 0 && !up.allow_catch_all {
                return self.fail(
                    format!("{at}.endpoints[{j}]"),
                    format!(
                        "{text:?} covers every address: a few failures would block all TCP of the cgroup; \
                         set allow_catch_all = true on this upstream if that is meant"
                    ),
                );
            }
            if covers_loopback(&ep.net) && !up.allow_loopback {
                return self.fail(
                    format!("{at}.endpoints[{j}]"),
                    format!(
                        "{text:?} covers loopback addresses: a breaker on local services must be deliberate; \
                         set allow_loopback = true on this upstream if that is meant"
                    ),
                );
            }
            if let Some((other, other_text)) = seen.endpoints.get(&ep) {
                // Name both spellings: `[::ffff:10.0.0.7]:80` and `10.0.0.7:80` look different.
                let reason = if other_text == text {
                    format!("{text:?} is already an endpoint of upstream {other:?}")
                } else {
                    format!(
                        "{text:?} is already an endpoint of upstream {other:?}, as {other_text:?} (both are {ep})"
                    )
                };
                return self.fail(format!("{at}.endpoints[{j}]"), reason);
            }
            seen.endpoints
                .insert(ep, (upstream.to_string(), text.clone()));
            endpoints.push(ep);
        }
        Ok(endpoints)
    }

    /// The probe as configured, or a TCP connect to the first single-address endpoint.
    fn probe(
        &self,
        at: &str,
        raw: Option<RawProbe>,
        endpoints: &[Endpoint],
    ) -> Result<Probe, ConfigError> {
        let first_single = || endpoints.iter().find_map(Endpoint::single_address);
        let probe = match raw {
            Some(RawProbe { address, http_path }) => {
                let address = match address {
                    Some(text) => text.parse::<SocketAddr>().map(unmap_v4_addr).or_else(|e| {
                        self.fail(
                            format!("{at}.probe.address"),
                            format!("{text:?} is not an address:port ({e})"),
                        )
                    })?,
                    None => match first_single() {
                        Some(a) => a,
                        None => {
                            return self.fail(
                                format!("{at}.probe.address"),
                                "needed: no endpoint is a single address with a port",
                            )
                        }
                    },
                };
                if let Some(path) = &http_path {
                    if !path.starts_with('/')
                        || path.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        return self.fail(
                            format!("{at}.probe.http_path"),
                            format!("{path:?} must start with '/' and have no spaces"),
                        );
                    }
                }
                Probe { address, http_path }
            }
            None => {
                match first_single() {
                    Some(address) => Probe {
                        address,
                        http_path: None,
                    },
                    None => return self.fail(
                        format!("{at}.probe"),
                        "needed: no endpoint is a single address with a port, so set probe.address",
                    ),
                }
            }
        };
        if probe.address.port() == 0 {
            return self.fail(format!("{at}.probe.address"), "needs a port");
        }
        Ok(probe)
    }

    /// `[default_policy]`, `None` when absent or disabled.
    fn default_policy(
        &self,
        raw: Option<RawDefaultPolicy>,
        base: RawPolicy,
    ) -> Result<Option<DefaultPolicy>, ConfigError> {
        let Some(d) = raw.filter(|d| d.enabled) else {
            return Ok(None);
        };
        // Each destination has a breaker of its own but no window: one shared
        // window would let a few failing destinations trip healthy ones.
        for (key, set) in [
            ("failure_rate_threshold", d.failure_rate_threshold.is_some()),
            ("slow_rate_threshold", d.slow_rate_threshold.is_some()),
            ("minimum_connects", d.minimum_connects.is_some()),
            ("window", d.window.is_some()),
        ] {
            if set {
                return self.fail(
                    format!("default_policy.{key}"),
                    "is not supported for the default policy (its destinations keep no window); use failure_threshold (with \"slow\" in count for slow connects), or name the upstream",
                );
            }
        }
        let policy = self.policy(
            "default_policy.",
            // Not [defaults].connect_timeout: the default policy covers every
            // destination on the host, so a shorter SYN RTO there is opted into
            // in [default_policy] itself.
            raw_policy_of!(d).over(RawPolicy {
                connect_timeout: None,
                failure_rate_threshold: None,
                // Nor slow connects: a far destination's every connect may be
                // slow, and a default-policy breaker recovers only by trials.
                slow_connect_threshold: None,
                slow_rate_threshold: None,
                count: base.count.map(CountSet::without_slow),
                ..base
            }),
            defaults::DEFAULT_POLICY_HALF_OPEN_MAX_CONNECTIONS,
        )?;
        // Checked after merging: [defaults] may be where the 0 comes from.
        if policy.half_open_max_connections == 0 {
            let mut reason = format!(
                "the default policy has no probe: application trials are its only way to recover; must be 1..={MAX_IN_FLIGHT}"
            );
            if d.half_open_max_connections.is_none() {
                reason.push_str(" (the 0 comes from [defaults]; set it here)");
            }
            return self.fail("default_policy.half_open_max_connections", reason);
        }
        let max_destinations = d
            .max_destinations
            .unwrap_or(defaults::DEFAULT_POLICY_MAX_DESTINATIONS);
        if !(1..=MAX_DESTINATIONS).contains(&max_destinations) {
            return self.fail(
                "default_policy.max_destinations",
                format!(
                    "must be between 1 and {MAX_DESTINATIONS}, got {max_destinations} \
                     (each destination pins about 100 bytes of kernel memory)"
                ),
            );
        }
        Ok(Some(DefaultPolicy {
            policy,
            max_destinations,
        }))
    }
}

impl Config {
    /// Reads at most [`MAX_CONFIG_BYTES`], so a wrong path (`/dev/zero`, a log file)
    /// fails at once instead of filling memory.
    pub fn from_file(file: &Path) -> Result<Config, ConfigError> {
        let read_err = |source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(file)
            .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
            .map_err(read_err)?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                file: file.to_path_buf(),
                limit: MAX_CONFIG_BYTES,
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            read_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not UTF-8 text ({e})"),
            ))
        })?;
        Config::parse(file, &text)
    }

    /// Parses and validates `text`; `file` only names it in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| parse_error(file, text, e))?;
        let check = Check { file };

        let daemon = check.daemon(&raw.daemon)?;
        check.cgroup(raw.cgroup.as_deref())?;

        // The [defaults] table must be valid on its own, even where every upstream overrides it.
        check.policy(
            "defaults.",
            raw.defaults,
            defaults::UPSTREAM_HALF_OPEN_MAX_CONNECTIONS,
        )?;
        let base = raw.defaults;

        let mut seen = Seen::default();
        let (mut upstreams, fallbacks): (Vec<_>, Vec<_>) = raw
            .upstream
            .into_iter()
            .enumerate()
            .map(|(i, up)| check.upstream(i, up, base, &mut seen))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .unzip();
        check.resolve_fallbacks(&mut upstreams, &fallbacks, &seen)?;
        check.redirects_routable(&upstreams)?;
        let default_policy = check.default_policy(raw.default_policy, base)?;
        let alerts = raw
            .alert
            .into_iter()
            .enumerate()
            .map(|(i, a)| check.alert(i, a, &upstreams))
            .collect::<Result<Vec<_>, _>>()?;
        let interfaces = check.interfaces(raw.interface)?;
        check.redirects_on_tc(&upstreams, &interfaces)?;
        Ok(Config {
            cgroup: raw.cgroup,
            daemon,
            upstreams,
            default_policy,
            alerts,
            interfaces,
        })
    }

    /// What is legal but probably unwise, one line each, for `breaker check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.upstreams.is_empty() && self.default_policy.is_none() {
            out.push(
                "no [[upstream]] and no [default_policy]: nothing to protect; the programs \
                 pass every connect until you add one and reload"
                    .to_string(),
            );
        }
        if !self.daemon.metrics_listen.ip().is_loopback() {
            out.push(format!(
                "daemon.metrics_listen = \"{}\" is not a loopback address: whoever can reach it \
                 can read every upstream's state and load the daemon; keep it on 127.0.0.1, \
                 or firewall it to the scrapers",
                self.daemon.metrics_listen
            ));
        }
        for up in &self.upstreams {
            for label in &up.fallbacks_unreached {
                let tried: Vec<&str> = up.fallbacks.iter().map(|f| f.label.as_str()).collect();
                out.push(format!(
                    "upstream {:?}: fallback {label:?} is never reached: {} before it take every \
                     connect of its address family",
                    up.name,
                    tried.join(", ")
                ));
            }
        }
        for up in &self.upstreams {
            if up.packet_action != PacketAction::Redirect {
                continue;
            }
            for (family, is_v4) in [("IPv4", true), ("IPv6", false)] {
                // Both are stored unmapped: a v4-mapped one is IPv4 here.
                let needed = up
                    .endpoints
                    .iter()
                    .any(|e| matches!(e.net, IpNet::V4(_)) == is_v4);
                // Another endpoint of its service that it steers to serves too.
                let covered = up
                    .fallbacks
                    .iter()
                    .chain(&up.steered_to(&self.upstreams))
                    .any(|f| f.serves(is_v4));
                if needed && !covered {
                    out.push(format!(
                        "upstream {:?}: packet_action = \"redirect\", but no {family} fallback: \
                         its {family} endpoints' rejected SYNs get a reset, as with \"reject\"",
                        up.name
                    ));
                }
            }
        }
        out
    }

    /// A human-readable account of what was understood, for `breaker check-config`.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let cgroup = self
            .cgroup
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the cgroup2 root (whole host)".into());
        let _ = writeln!(out, "attach to: {cgroup}");
        let _ = writeln!(
            out,
            "metrics:   http://{}/metrics",
            self.daemon.metrics_listen
        );
        let _ = writeln!(out, "probe mark: {:#x}", self.daemon.probe_mark);
        // Laid out once: map_sizes lays the endpoint table out.
        let destinations = if self.upstreams.iter().any(|u| u.per_address) {
            self.map_sizes().destinations
        } else {
            0
        };
        for up in &self.upstreams {
            let _ = writeln!(out, "upstream {}:", up.name);
            let eps: Vec<String> = up.endpoints.iter().map(|e| e.to_string()).collect();
            let _ = writeln!(out, "  endpoints: {}", eps.join(", "));
            if let Some(service) = &up.service {
                let _ = writeln!(out, "  service:   {}", service.describe());
            }
            if up.per_address {
                let room = destinations;
                let _ = writeln!(
                    out,
                    "  per address: each address and port it matches keeps a breaker of its \
                     own (per_endpoint over a CIDR or any-port endpoint), up to {room} \
                     destinations shared with the default policy; while one is open, connects \
                     to that address alone go to the fallbacks or fail fast (no steering and \
                     no ejection cap: the addresses are not known in advance)"
                );
            }
            if !up.fallbacks.is_empty() {
                let fb: Vec<String> = up.fallbacks.iter().map(Fallback::describe).collect();
                let _ = writeln!(
                    out,
                    "  fallbacks: {} (while open, a connect goes to the first of its family \
                     that takes it: an address always, an upstream while its breaker lets its \
                     own connects through; it fails fast when none does)",
                    fb.join(", then ")
                );
            }
            let _ = writeln!(out, "  {}", describe_policy(&up.policy));
            let how = match &up.probe.http_path {
                _ if up.per_address => format!(
                    "none: each address recovers by trial connects (up to {} at once)",
                    up.policy.half_open_max_connections
                ),
                Some(path) => format!("HTTP GET http://{}{path} answers 2xx", up.probe.address),
                None => format!("TCP connect to {}", up.probe.address),
            };
            let _ = writeln!(out, "  probe:     {how}");
            if !self.interfaces.is_empty() {
                let _ = writeln!(
                    out,
                    "  packets:   a rejected SYN is {}",
                    match up.packet_action {
                        PacketAction::Reject => "answered with the upstream's reset",
                        PacketAction::Drop => "dropped",
                        PacketAction::Icmp => "answered with an ICMP port unreachable",
                        PacketAction::Redirect =>
                            "sent to the first fallback that takes it, its flow \
                             rewritten both ways (a reset when there is none)",
                    }
                );
            }
        }
        match &self.default_policy {
            Some(d) => {
                let _ = writeln!(
                    out,
                    "default policy: on, up to {} destinations",
                    d.max_destinations
                );
                let _ = writeln!(out, "  {}", describe_policy(&d.policy));
            }
            None => {
                let _ = writeln!(
                    out,
                    "default policy: off (unmatched destinations pass untouched)"
                );
            }
        }
        for i in &self.interfaces {
            let _ = writeln!(
                out,
                "packet path on {} (hook {}): SYNs arriving there ask the breakers, answers leaving there end them",
                i.name,
                i.hook.name()
            );
        }
        out
    }
}

/// The upstream, and its endpoint as written, that `addr` (v4-mapped already as
/// IPv4) belongs to: every prefix of `addr`, with its port and with any port, looked
/// up among the configured endpoints (at most 258 lookups, whatever the config's size).
fn endpoint_owner(seen: &Seen, addr: SocketAddr) -> Option<&(String, String)> {
    let ip = addr.ip();
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (0..=max).rev().find_map(|len| {
        let net = IpNet::new(ip, len).ok()?.trunc();
        [Some(addr.port()), None]
            .into_iter()
            .find_map(|port| seen.endpoints.get(&Endpoint { net, port }))
    })
}

/// Whether `net` shares an address with 127.0.0.0/8 or ::1 (v4-mapped loopback is
/// IPv4 by now).
fn covers_loopback(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => {
            let lo = ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(127, 0, 0, 0), 8)
                .expect("8 is a valid IPv4 prefix");
            // Two prefixes overlap exactly when one holds the other's first address.
            n.contains(&lo.network()) || lo.contains(&n.network())
        }
        IpNet::V6(n) => n.contains(&std::net::Ipv6Addr::LOCALHOST),
    }
}

/// One line: where (line, column, and the field's path when known), and what.
fn parse_error(
    file: &Path,
    text: &str,
    e: serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let mut at = Vec::new();
    if let Some(span) = inner.span() {
        let (line, column) = line_column(text, span.start);
        at.push(format!("line {line}, column {column}"));
    }
    // "." is serde_path_to_error's empty path.
    if path != "." && !path.is_empty() {
        at.push(path);
    }
    if at.is_empty() {
        at.push("line ?".into());
    }
    ConfigError::Parse {
        file: file.to_path_buf(),
        at: at.join(", "),
        message: inner.message().replace('\n', " ").trim().to_string(),
    }
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn describe_policy(p: &Policy) -> String {
    let trials = match p.half_open_max_connections {
        0 => "half-open admits no application connects (probes only)".to_string(),
        n => format!(
            "half-open admits {n} application trial(s) at a time, each given {}",
            humantime::format_duration(p.trial_connect_timeout)
        ),
    };
    let timeout = match p.connect_timeout {
        Some(t) => format!(
            "a connect unanswered for {} counts as a timeout",
            humantime::format_duration(t)
        ),
        None => "a connect unanswered for the kernel's 1s counts as a timeout".to_string(),
    };
    let rate = match p.rate {
        Some(r) => format!(
            " or when {} % of at least {} connects in {} fail",
            r.threshold_pct,
            r.minimum_connects,
            humantime::format_duration(r.window)
        ),
        None => String::new(),
    };
    let slow = match p.slow {
        Some(s) => {
            let rate = s.rate.map_or(String::new(), |r| {
                format!(
                    "; opens when {} % of at least {} connects in {} are slow",
                    r.threshold_pct,
                    r.minimum_connects,
                    humantime::format_duration(r.window)
                )
            });
            format!(
                "; a connect answered after {} or more is slow{}{rate}",
                humantime::format_duration(s.threshold),
                if p.count.slow {
                    " and counts as a failure"
                } else {
                    ""
                }
            )
        }
        None => String::new(),
    };
    let failures = CountSet {
        slow: false,
        ..p.count
    };
    let counted = match failures.names().as_slice() {
        _ if failures == CountSet::ALL => String::new(),
        [] => " (counting no failures, slow connects only)".to_string(),
        names => format!(" (counting {} only)", names.join(", ")),
    };
    let growth = if p.max_open_duration > p.open_duration {
        format!(
            ", doubling at each reopen up to {}",
            humantime::format_duration(p.max_open_duration)
        )
    } else {
        String::new()
    };
    let jitter = match p.jitter_pct {
        0 => String::new(),
        j => format!(" plus up to {j} % at random"),
    };
    format!(
        "opens after {} consecutive failures{rate}{counted} ({timeout}{slow}); open {}{growth}{jitter}; {trials}; closes after {} successes; probe every {} (timeout {})",
        p.failure_threshold,
        humantime::format_duration(p.open_duration),
        p.success_threshold,
        humantime::format_duration(p.probe_interval),
        humantime::format_duration(p.probe_timeout),
    )
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod tests;
