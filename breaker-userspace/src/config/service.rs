//! `per_endpoint = true`: an upstream that is a service of several addresses keeps
//! a breaker per endpoint, so one dead endpoint is ejected alone. Each endpoint
//! becomes an upstream of its own, named `service/address`, with the service's
//! policy and probe. While its breaker rejects, its connects go to another
//! endpoint of the service that takes them (steering: one picked at random in
//! the kernel, so that a dead endpoint's connects spread over the healthy),
//! then to the service's own `fallbacks`. An ejection cap
//! (`max_ejected_percent`, `min_healthy_percent`) holds back trips that would
//! take more of the service out of CLOSED than it allows.
use std::net::SocketAddr;

use breaker_common::abi::{MAX_SERVICE_ENDPOINTS, UPSTREAM_NAME_MAX};

use super::{
    fallback::{hop_of, Written},
    Check, Config, ConfigError, Endpoint, Fallback, Probe, RawProbe, RawUpstream, Upstream,
};

/// `max_ejected_percent` when unset: every endpoint may be ejected, so a service
/// whose every endpoint is dead fails fast (or goes to its fallbacks) like any
/// upstream. Envoy's default is 10 % (at least one host); set it to keep part of
/// a service reachable whatever its failures.
pub const MAX_EJECTED_PERCENT: u32 = 100;
/// `min_healthy_percent` when unset (Istio's panic threshold is off at 0 too).
pub const MIN_HEALTHY_PERCENT: u32 = 0;

/// What an endpoint's breaker knows of the service it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// The service's name as configured (`name` of its `[[upstream]]`).
    pub name: String,
    /// Its endpoints' breakers, in the order of `endpoints`.
    pub members: Vec<String>,
    pub max_ejected_percent: u32,
    pub min_healthy_percent: u32,
}

impl Service {
    /// Whether an endpoint's connects may be steered to another endpoint while
    /// its breaker rejects: the service has more than one.
    pub fn steers(&self) -> bool {
        self.members.len() > 1
    }

    /// How many endpoints may be out of CLOSED at once: at most
    /// `max_ejected_percent` of them (rounded down) and no more than leaves
    /// `min_healthy_percent` (rounded up) in; always at least one, as in Envoy,
    /// so a one-endpoint service trips like any upstream.
    pub fn eject_cap(&self) -> u32 {
        let n = self.members.len() as u32;
        let by_percent = n * self.max_ejected_percent / 100;
        let healthy = (n * self.min_healthy_percent).div_ceil(100);
        by_percent.min(n.saturating_sub(healthy)).max(1)
    }

    /// For check-config: "one of 3 endpoints of payments (per_endpoint); ...".
    pub fn describe(&self) -> String {
        let n = self.members.len();
        let cap = self.eject_cap();
        let steering = if n > 1 {
            "while open, its connects go to another endpoint of the service that is \
             CLOSED (one at random among them), then to the service's fallbacks"
        } else {
            "a service of one endpoint: while open, its connects go to the fallbacks or fail \
             fast, as any upstream's"
        };
        format!(
            "one of {n} endpoints of {} (per_endpoint); {steering}; at most {cap} of the {n} \
             out of CLOSED at once (max_ejected_percent {}, min_healthy_percent {}), a trip \
             past that is held back and the endpoint stays CLOSED",
            self.name, self.max_ejected_percent, self.min_healthy_percent
        )
    }

    /// Each endpoint's breaker (found in `upstreams`) and its hop, in order:
    /// the service's row of `SERVICE_ENDPOINTS`.
    pub fn member_hops<'a>(
        &'a self,
        upstreams: &'a [Upstream],
    ) -> impl Iterator<Item = (&'a str, Fallback)> + 'a {
        self.members.iter().filter_map(|m| {
            upstreams
                .iter()
                .find(|u| u.name == *m)
                .map(|u| (m.as_str(), hop_of(u)))
        })
    }

    /// "payments/10.0.1.1:443": the breaker of one endpoint.
    pub fn member_name(service: &str, addr: SocketAddr) -> String {
        format!("{service}/{addr}")
    }
}

impl Check<'_> {
    /// Whether the upstream keeps a breaker per address and port it matches:
    /// `per_endpoint = true` with a CIDR or any-port endpoint, whose addresses
    /// are not known in advance. Each such breaker lives in the kernel's
    /// per-destination maps (shared with the default policy, bounded by
    /// `max_destinations`) with the upstream's policy, and recovers by trial
    /// connects. With the addresses unknown there is nothing to steer to and
    /// no count for a cap, and no probe: the keys for those are refused.
    pub(super) fn per_address(
        &self,
        at: &str,
        up: &RawUpstream,
        endpoints: &[Endpoint],
    ) -> Result<bool, ConfigError> {
        if !up.per_endpoint || endpoints.iter().all(|e| e.single_address().is_some()) {
            return Ok(false);
        }
        let why = "per_endpoint = true over a CIDR or any-port endpoint keeps a breaker per \
                   address, and those addresses are not known in advance:";
        for (key, set, what) in [
            (
                "max_ejected_percent",
                up.max_ejected_percent.is_some(),
                "no ejection cap can count them (list each address to have one)",
            ),
            (
                "min_healthy_percent",
                up.min_healthy_percent.is_some(),
                "no ejection cap can count them (list each address to have one)",
            ),
            (
                "failure_rate_threshold",
                up.failure_rate_threshold.is_some(),
                "each keeps no window; use failure_threshold",
            ),
            (
                "slow_rate_threshold",
                up.slow_rate_threshold.is_some(),
                "each keeps no window; use failure_threshold with \"slow\" in count",
            ),
            (
                "minimum_connects",
                up.minimum_connects.is_some(),
                "each keeps no window",
            ),
            ("window", up.window.is_some(), "each keeps no window"),
            (
                "probe",
                up.probe.is_some(),
                "the daemon does not probe them; each recovers by trial connects \
                 (half_open_max_connections)",
            ),
        ] {
            if set {
                return self.fail(format!("{at}.{key}"), format!("{why} {what}"));
            }
        }
        Ok(true)
    }

    /// A per-address upstream's `probe`: never run (the daemon does not probe
    /// it), kept for the shape of [`Upstream`]: its first single address, else
    /// its first endpoint's network address and port (0 for any port).
    pub(super) fn address_probe(&self, endpoints: &[Endpoint]) -> Probe {
        let address = endpoints
            .iter()
            .find_map(Endpoint::single_address)
            .or_else(|| {
                endpoints
                    .first()
                    .map(|e| SocketAddr::new(e.net.network(), e.port.unwrap_or(0)))
            })
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        Probe {
            address,
            http_path: None,
        }
    }

    /// The service an upstream is, when `per_endpoint` is set; its keys checked.
    pub(super) fn service(
        &self,
        at: &str,
        up: &RawUpstream,
        endpoints: &[Endpoint],
    ) -> Result<Option<Service>, ConfigError> {
        if !up.per_endpoint {
            for (key, set) in [
                ("max_ejected_percent", up.max_ejected_percent.is_some()),
                ("min_healthy_percent", up.min_healthy_percent.is_some()),
            ] {
                if set {
                    return self.fail(
                        format!("{at}.{key}"),
                        "has no effect without per_endpoint = true",
                    );
                }
            }
            return Ok(None);
        }
        let mut members = Vec::with_capacity(endpoints.len());
        for (j, (ep, text)) in endpoints.iter().zip(&up.endpoints).enumerate() {
            let Some(addr) = ep.single_address() else {
                return self.fail(
                    format!("{at}.endpoints[{j}]"),
                    format!(
                        "{text:?} is not a single address with a port: per_endpoint = true \
                         keeps a breaker per listed address, so list each one"
                    ),
                );
            };
            let name = Service::member_name(&up.name, addr);
            if name.len() > UPSTREAM_NAME_MAX {
                return self.fail(
                    format!("{at}.name"),
                    format!(
                        "the breaker of endpoint {addr} would be named {name:?}, longer than \
                         {UPSTREAM_NAME_MAX}: shorten the name"
                    ),
                );
            }
            members.push(name);
        }
        if members.len() > MAX_SERVICE_ENDPOINTS {
            return self.fail(
                format!("{at}.endpoints"),
                format!(
                    "{} endpoints: per_endpoint = true steers among at most \
                     {MAX_SERVICE_ENDPOINTS}; split the service, or keep one breaker for it",
                    members.len()
                ),
            );
        }
        let max_ejected_percent = up.max_ejected_percent.unwrap_or(MAX_EJECTED_PERCENT);
        if !(1..=100).contains(&max_ejected_percent) {
            return self.fail(
                format!("{at}.max_ejected_percent"),
                format!("{max_ejected_percent} must be 1 to 100"),
            );
        }
        let min_healthy_percent = up.min_healthy_percent.unwrap_or(MIN_HEALTHY_PERCENT);
        if min_healthy_percent > 99 {
            return self.fail(
                format!("{at}.min_healthy_percent"),
                format!(
                    "{min_healthy_percent} must be 0 to 99: one endpoint may always be \
                     ejected (a dead one would otherwise hold its connects on a blackhole)"
                ),
            );
        }
        if up.probe.as_ref().is_some_and(|p| p.address.is_some()) {
            return self.fail(
                format!("{at}.probe.address"),
                "per_endpoint = true probes each endpoint at its own address: leave \
                 probe.address out (probe.http_path applies to each)",
            );
        }
        Ok(Some(Service {
            name: up.name.clone(),
            members,
            max_ejected_percent,
            min_healthy_percent,
        }))
    }

    /// One upstream per endpoint of `service` (whose checked form is `up`), each
    /// with the service's policy, its own probe, and the service's fallbacks as
    /// written.
    pub(super) fn members(
        &self,
        at: &str,
        up: Upstream,
        probe: Option<RawProbe>,
        service: Service,
        fallbacks: Vec<Written>,
    ) -> Result<Vec<(Upstream, Vec<Written>)>, ConfigError> {
        let mut out = Vec::with_capacity(service.members.len());
        for (endpoint, name) in up.endpoints.iter().zip(&service.members) {
            let endpoints = vec![*endpoint];
            let member = Upstream {
                name: name.clone(),
                probe: self.probe(at, probe.clone(), &endpoints)?,
                endpoints,
                service: Some(service.clone()),
                ..up.clone()
            };
            out.push((member, fallbacks.clone()));
        }
        Ok(out)
    }
}

impl Config {
    /// The `per_endpoint` services whose endpoints steer to each other (more
    /// than one endpoint), each once, in the order of the config: a service's
    /// place here is its row in the kernel's `SERVICE_ENDPOINTS`.
    pub fn steering_services(&self) -> Vec<&Service> {
        let mut out: Vec<&Service> = Vec::new();
        for service in self.upstreams.iter().filter_map(|u| u.service.as_ref()) {
            if service.steers() && !out.iter().any(|s| s.name == service.name) {
                out.push(service);
            }
        }
        out
    }
}

impl Upstream {
    /// The hops of the other endpoints of its service that its connects are
    /// steered to while its breaker rejects (none unless it steers).
    pub fn steered_to(&self, upstreams: &[Upstream]) -> Vec<Fallback> {
        self.service
            .iter()
            .filter(|s| s.steers())
            .flat_map(|s| s.member_hops(upstreams))
            .filter(|(name, _)| *name != self.name)
            .map(|(_, hop)| hop)
            .collect()
    }
}
