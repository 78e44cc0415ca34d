//! `fallbacks`: where an upstream's rejected connects go, in order. Each entry is
//! another upstream's name or an address; a connect goes to the first entry of
//! its family that takes it (an address always does, an upstream while its
//! breaker lets its own connects through), and fails fast when none does.
//!
//! The kernel tries a flat list of at most [`MAX_FALLBACKS`] hops, so a chain is
//! resolved here: an upstream named as a fallback brings its own fallbacks right
//! after it (the connects it would send on), loops are refused, and a hop that can
//! never be reached (after an address of its family) is left out.
use std::{collections::HashMap, net::SocketAddr};

use breaker_common::abi::{MAX_FALLBACKS, STEERED_SLOT};

use super::{
    endpoint_owner, unmap_v4_addr, Check, ConfigError, Endpoint, OneOrMany, Seen, Upstream,
};

/// One hop of an upstream's fallback chain, as the kernel tries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fallback {
    /// As written: an upstream's name, or an address.
    pub label: String,
    /// The upstream whose breaker decides whether the hop is taken, and whose
    /// connects the redirected ones become. None: an address, always taken.
    pub upstream: Option<String>,
    /// Where an IPv4 connect goes (an upstream's first single-address endpoint).
    pub v4: Option<SocketAddr>,
    /// Where an IPv6 connect goes.
    pub v6: Option<SocketAddr>,
}

impl Fallback {
    fn address(addr: SocketAddr) -> Fallback {
        Fallback {
            label: addr.to_string(),
            upstream: None,
            v4: addr.is_ipv4().then_some(addr),
            v6: addr.is_ipv6().then_some(addr),
        }
    }

    /// Whether the hop takes connects of this family.
    pub fn serves(&self, v4: bool) -> bool {
        if v4 {
            self.v4.is_some()
        } else {
            self.v6.is_some()
        }
    }

    /// Where the hop sends connects, per family.
    pub fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.v4.iter().chain(self.v6.iter()).copied()
    }

    /// "secondary (10.0.2.1:80, [fd00::2]:80)", or the address.
    pub fn describe(&self) -> String {
        match &self.upstream {
            Some(name) => {
                let to: Vec<String> = self.addresses().map(|a| a.to_string()).collect();
                format!("{name} ({})", to.join(", "))
            }
            None => self.label.clone(),
        }
    }
}

/// A fallback as written, before the upstreams it names are known.
#[derive(Clone)]
pub(super) enum Target {
    Upstream(String),
    Address(SocketAddr),
}

/// One entry as written, with the field it came from (for errors).
#[derive(Clone)]
pub(super) struct Written {
    field: String,
    target: Target,
}

impl Check<'_> {
    /// The entries of `fallbacks` (or of `fallback`, its older spelling), parsed
    /// as far as they can be without the other upstreams.
    pub(super) fn fallback_targets(
        &self,
        at: &str,
        fallback: OneOrMany,
        fallbacks: OneOrMany,
        endpoints: &[Endpoint],
    ) -> Result<Vec<Written>, ConfigError> {
        let (key, texts) = match (fallback.into_vec(), fallbacks.into_vec()) {
            (old, new) if old.is_empty() => ("fallbacks", new),
            (old, new) if new.is_empty() => ("fallback", old),
            _ => {
                return self.fail(
                    format!("{at}.fallbacks"),
                    "set `fallbacks` or its older spelling `fallback`, not both",
                )
            }
        };
        let mut written: Vec<Written> = Vec::new();
        for (j, text) in texts.iter().enumerate() {
            let field = format!("{at}.{key}[{j}]");
            let target = if !looks_like_address(text) {
                Target::Upstream(text.clone())
            } else {
                let addr = self.fallback_address(&field, text, endpoints)?;
                let earlier = written.iter().find_map(|w| match w.target {
                    Target::Address(a) if a.is_ipv4() == addr.is_ipv4() => Some(a),
                    _ => None,
                });
                if let Some(earlier) = earlier {
                    return self.fail(
                        field,
                        format!(
                            "never tried: {earlier} comes first and takes every connect of \
                             its family (an address has no breaker to skip it); at most one \
                             fallback per address family, unless the earlier is an upstream's name"
                        ),
                    );
                }
                Target::Address(addr)
            };
            written.push(Written { field, target });
        }
        Ok(written)
    }

    fn fallback_address(
        &self,
        field: &str,
        text: &str,
        endpoints: &[Endpoint],
    ) -> Result<SocketAddr, ConfigError> {
        let bare = text.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<std::net::IpAddr>().is_ok() {
            return self.fail(field, format!("{text:?} needs a port"));
        }
        let addr = text.parse::<SocketAddr>().map(unmap_v4_addr).or_else(|e| {
            self.fail(
                field,
                format!("{text:?} is not an address:port ({e}), nor an upstream's name"),
            )
        })?;
        if addr.port() == 0 {
            return self.fail(field, format!("{text:?} needs a port"));
        }
        if endpoints.iter().any(|e| e.matches(addr)) {
            return self.fail(
                field,
                format!("{text:?} is one of the upstream's own endpoints"),
            );
        }
        Ok(addr)
    }

    /// Resolves every upstream's chain once all upstreams are known: names exist,
    /// chains do not loop or grow past what the kernel tries, and addresses stay
    /// out of other upstreams' endpoints.
    pub(super) fn resolve_fallbacks(
        &self,
        upstreams: &mut [Upstream],
        written: &[Vec<Written>],
        seen: &Seen,
    ) -> Result<(), ConfigError> {
        let index = Names::of(upstreams);
        for (i, entries) in written.iter().enumerate() {
            for w in entries {
                match &w.target {
                    Target::Upstream(name) => {
                        self.named_fallback(&w.field, &upstreams[i], name, &index, upstreams)?
                    }
                    Target::Address(addr) => self.address_outside_others(&w.field, *addr, seen)?,
                }
            }
        }
        // Each upstream is walked once (done), so a config of many upstreams
        // naming each other costs linear time, never one walk per path.
        let mut done = vec![false; upstreams.len()];
        for (i, entries) in written.iter().enumerate() {
            let mut path = vec![index.node(i, upstreams)];
            self.no_loop(entries, written, &index, upstreams, &mut path, &mut done)?;
        }
        let chains: Vec<(Vec<Fallback>, Vec<String>)> = (0..upstreams.len())
            .map(|i| {
                let mut hops = Vec::new();
                flatten(i, written, &index, upstreams, &mut hops);
                reachable(hops)
            })
            .collect();
        for (i, (hops, unreached)) in chains.into_iter().enumerate() {
            // An endpoint that steers to the others of its service counts those
            // connects in a slot of its own, after its fallbacks'.
            let steers = upstreams[i].service.as_ref().is_some_and(|s| s.steers());
            let most = if steers { STEERED_SLOT } else { MAX_FALLBACKS };
            if hops.len() > most {
                let shown = most + 2;
                let labels: Vec<&str> = hops.iter().take(shown).map(|h| h.label.as_str()).collect();
                // The key as written: `fallbacks`, or its older spelling.
                let key = written[i]
                    .first()
                    .and_then(|w| w.field.rsplit_once('[').map(|(key, _)| key.to_string()))
                    .unwrap_or_else(|| format!("{}.fallbacks", upstreams[i].written_at));
                let more = if hops.len() > shown { ", ..." } else { "" };
                let why = if steers {
                    " for a per_endpoint service's, whose connects also go to its other endpoints"
                } else {
                    ""
                };
                return self.fail(
                    key,
                    format!(
                        "with the fallbacks of the upstreams it names, the chain is {}{more} \
                         ({} hops): at most {most}{why}",
                        labels.join(", "),
                        hops.len(),
                    ),
                );
            }
            upstreams[i].fallbacks = hops;
            upstreams[i].fallbacks_unreached = unreached;
        }
        Ok(())
    }

    fn named_fallback(
        &self,
        field: &str,
        own: &Upstream,
        name: &str,
        index: &Names,
        upstreams: &[Upstream],
    ) -> Result<(), ConfigError> {
        if name == own.name || own.service.as_ref().is_some_and(|s| s.name == name) {
            return self.fail(field, "an upstream cannot be its own fallback");
        }
        if index.services.contains_key(name) {
            return Ok(());
        }
        let Some(&k) = index.upstreams.get(name) else {
            return self.fail(
                field,
                format!("{name:?} is neither an upstream's name nor an address:port"),
            );
        };
        if upstreams[k].per_address {
            return self.fail(
                field,
                format!(
                    "upstream {name:?} keeps a breaker per address (per_endpoint over a CIDR \
                     or any-port endpoint): no one breaker says whether it takes connects; \
                     give another upstream or an address outside its endpoints"
                ),
            );
        }
        if hop_of(&upstreams[k]).addresses().next().is_none() {
            return self.fail(
                field,
                format!(
                    "upstream {name:?} has no endpoint of a single address and port to send \
                     connects to"
                ),
            );
        }
        Ok(())
    }

    /// A fallback address inside another upstream's endpoints would let connects
    /// redirected there bypass that upstream's breaker (a redirected connect is not
    /// matched again): name the upstream instead.
    fn address_outside_others(
        &self,
        field: &str,
        addr: SocketAddr,
        seen: &Seen,
    ) -> Result<(), ConfigError> {
        let Some((owner, owner_text)) = endpoint_owner(seen, addr) else {
            return Ok(());
        };
        self.fail(
            field,
            format!(
                "{addr} is inside endpoint {owner_text:?} of upstream {owner:?}: connects \
                 redirected there would bypass {owner:?}'s breaker; name {owner:?} as the \
                 fallback instead"
            ),
        )
    }

    /// Depth-first along named fallbacks; `path` holds the upstreams on the way,
    /// `done` those whose every chain was walked already and found no loop.
    fn no_loop(
        &self,
        entries: &[Written],
        written: &[Vec<Written>],
        index: &Names,
        upstreams: &[Upstream],
        path: &mut Vec<usize>,
        done: &mut [bool],
    ) -> Result<(), ConfigError> {
        for w in entries {
            let Target::Upstream(name) = &w.target else {
                continue;
            };
            let k = index.node_of(name, upstreams);
            if path.contains(&k) {
                let mut names: Vec<&str> =
                    path.iter().map(|&p| index.shown(&upstreams[p])).collect();
                names.push(name);
                return self.fail(
                    w.field.clone(),
                    format!(
                        "{name:?} leads back ({}): a chain of fallbacks may not loop",
                        names.join(" -> ")
                    ),
                );
            }
            if done[k] {
                continue;
            }
            path.push(k);
            self.no_loop(&written[k], written, index, upstreams, path, done)?;
            path.pop();
            done[k] = true;
        }
        Ok(())
    }
}

/// Names are ASCII letters, digits, '-', '_' and '.', and never an IP address
/// (`upstream_name` refuses those); an address has ':' (IPv6, or a port), a
/// bracket, or is an IP address without its port.
pub(super) fn looks_like_address(text: &str) -> bool {
    text.contains(':') || text.starts_with('[') || text.parse::<std::net::IpAddr>().is_ok()
}

/// The hop of upstream `up`: its first single-address endpoint of each family.
pub(crate) fn hop_of(up: &Upstream) -> Fallback {
    let first = |v4: bool| {
        up.endpoints
            .iter()
            .filter_map(Endpoint::single_address)
            .find(|a| a.is_ipv4() == v4)
    };
    Fallback {
        label: up.name.clone(),
        upstream: Some(up.name.clone()),
        v4: first(true),
        v6: first(false),
    }
}

/// Upstream `i`'s chain, each named upstream followed by its own (loops refused).
/// An upstream met again is not walked again (its hops are in already), so the
/// walk is as long as the config, whatever names what.
fn flatten(
    i: usize,
    written: &[Vec<Written>],
    index: &Names,
    upstreams: &[Upstream],
    out: &mut Vec<Fallback>,
) {
    for w in &written[i] {
        match &w.target {
            Target::Address(addr) => out.push(Fallback::address(*addr)),
            Target::Upstream(name) => {
                // A service stands for its endpoints, in order, then its fallbacks.
                let hops: Vec<usize> = match index.services.get(name.as_str()) {
                    Some(members) => members.clone(),
                    None => vec![index.upstreams[name.as_str()]],
                };
                let Some(&head) = hops.first() else {
                    continue;
                };
                if out
                    .iter()
                    .any(|h| h.upstream.as_deref() == Some(upstreams[head].name.as_str()))
                {
                    continue;
                }
                for k in hops {
                    out.push(hop_of(&upstreams[k]));
                }
                flatten(head, written, index, upstreams, out);
            }
        }
    }
}

/// The names a fallback may give: upstreams (a service's endpoints by their
/// own names too) and services (standing for their endpoints).
struct Names<'a> {
    upstreams: HashMap<&'a str, usize>,
    /// Service name -> its endpoints' upstreams, in order.
    services: HashMap<&'a str, Vec<usize>>,
}

impl<'a> Names<'a> {
    fn of(upstreams: &'a [Upstream]) -> Names<'a> {
        let mut services: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, up) in upstreams.iter().enumerate() {
            if let Some(s) = &up.service {
                services.entry(s.name.as_str()).or_default().push(i);
            }
        }
        Names {
            upstreams: upstreams
                .iter()
                .enumerate()
                .map(|(i, up)| (up.name.as_str(), i))
                .collect(),
            services,
        }
    }

    /// The node a loop is looked for on: a service's first endpoint stands for
    /// every one of them (they share the service's fallbacks).
    fn node(&self, i: usize, upstreams: &[Upstream]) -> usize {
        match &upstreams[i].service {
            Some(s) => self.services[s.name.as_str()][0],
            None => i,
        }
    }

    fn node_of(&self, name: &str, upstreams: &[Upstream]) -> usize {
        match self.services.get(name) {
            Some(members) => members[0],
            None => self.node(self.upstreams[name], upstreams),
        }
    }

    /// How a loop's message names a node.
    fn shown<'u>(&self, up: &'u Upstream) -> &'u str {
        up.service
            .as_ref()
            .map_or(up.name.as_str(), |s| s.name.as_str())
    }
}

/// The hops a connect can reach: the first of each label, and none of a family
/// an earlier address already takes every connect of; with the labels of those
/// left out for that reason (check-config warns about them).
fn reachable(hops: Vec<Fallback>) -> (Vec<Fallback>, Vec<String>) {
    let mut taken = [false, false];
    let mut out: Vec<Fallback> = Vec::new();
    let mut unreached: Vec<String> = Vec::new();
    for hop in hops {
        let open = [
            hop.serves(true) && !taken[0],
            hop.serves(false) && !taken[1],
        ];
        if out.iter().any(|h| h.label == hop.label) {
            continue;
        }
        if open == [false, false] {
            if !unreached.contains(&hop.label) {
                unreached.push(hop.label);
            }
            continue;
        }
        if hop.upstream.is_none() {
            taken = [taken[0] || open[0], taken[1] || open[1]];
        }
        out.push(hop);
    }
    (out, unreached)
}
