//! `breaker run`: load, attach, then serve probes, events and metrics until a signal.
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::{
    cgroup,
    config::Config,
    control::{
        protocol::{Request, Response},
        View,
    },
    kernel::{
        watch::{watch, CgroupChange, Identity},
        Kernel, PinFolder,
    },
    metrics::Metrics,
};

pub async fn run(path: PathBuf, config: Config) -> anyhow::Result<()> {
    raise_fd_limit();
    let cgroup =
        cgroup::resolve(config.cgroup.as_deref()).context("choosing the cgroup to attach to")?;
    // Before attaching: from then on no signal a daemon is expected to get kills it with
    // the default action, and a failure here leaves nothing attached.
    let mut signals = Signals::register().context("installing the signal handlers")?;
    // One daemon per pin folder: a second one fails here, naming the first.
    let pins = PinFolder::new(&config.daemon.pin_path);
    let _lock = pins.prepare_and_lock()?;
    // Whatever ends the daemon, an empty pin folder (a start that failed before
    // pinning anything) is not left behind; one in use is kept.
    let _tidy = TidyPins(pins.clone());
    // Bind before attaching, so a busy port leaves nothing attached.
    let listen = config.daemon.metrics_listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics listener on {listen}"))?;
    if !listen.ip().to_canonical().is_loopback() {
        tracing::warn!(
            metrics_listen = %listen,
            "the metrics listener is not on loopback: anyone who can reach it can read upstream names and states (see README, Security model)"
        );
    }
    let listener = Arc::new(listener);
    let control_path = config.daemon.control_socket.clone();
    let control = crate::control::server::bind(&control_path)?;

    // A restart with the same binary and config resumes what is pinned as it is;
    // anything else loads (and the kernel verifies) the programs anew.
    let (mut kernel, resumed) = match Kernel::resume(&config, &pins, &cgroup)? {
        Some(kernel) => (kernel, true),
        None => (Kernel::load(&config, &pins)?, false),
    };
    kernel.attach(&cgroup)?;
    // A resumed config is the one the pinned maps were written for.
    if !resumed {
        forget_unread_destinations(&mut kernel, &config);
    }
    tracing::info!(
        cgroup = %cgroup.display(),
        upstreams = config.upstreams.len(),
        default_policy = config.default_policy.is_some(),
        metrics = %format!("http://{listen}/metrics"),
        pins = %pins.root().display(),
        "breaker attached"
    );
    if config.upstreams.is_empty() && config.default_policy.is_none() {
        tracing::warn!(config = %path.display(), "no [[upstream]] and no [default_policy]: nothing to protect; the programs pass every connect until one is added and the config reloaded");
    }

    // What happens when each task ends (ARCHITECTURE.md, "What ends the daemon").
    let metrics = Arc::new(Metrics::new(&names_of(&kernel, &config)));
    metrics.set_fallbacks(&fallbacks_of(&kernel, &config));
    let mut tasks = tokio::task::JoinSet::new();
    // A service restart removes the cgroup and makes a new one: attach again.
    let (cgroup_changes, mut cgroup_changed) = tokio::sync::mpsc::channel(4);
    // The cgroup our links are on, and a new one we still have to attach to (an
    // attach that failed is tried again every RETRY_ATTACH until it works).
    let mut attached_to = Identity::of(&cgroup);
    let mut to_attach: Option<Identity> = None;
    let mut retry = tokio::time::interval(RETRY_ATTACH);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Pins removed by hand detach the programs: notice it, and attach again.
    let mut pin_check = tokio::time::interval(RETRY_ATTACH);
    pin_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    match attached_to {
        Some(attached) => {
            let path = cgroup.clone();
            tasks.spawn(optional("cgroup watch", async move {
                watch(path, attached, cgroup_changes).await;
                Ok(())
            }));
        }
        None => {
            tracing::warn!(cgroup = %cgroup.display(), "the cgroup vanished as it was attached to: a new one will not be noticed")
        }
    }
    // The kept maps (states, counters) are the same kernel objects whatever
    // reloads happen, so the server and the control verbs read them through these
    // handles for good.
    let (counters, states) = (kernel.counters(), kernel.states());
    let (counters_view, states_view) = (counters.clone(), states.clone());
    let server_metrics = metrics.clone();
    tasks.spawn(restarting("metrics server", None, move || {
        let serve = crate::metrics::serve(
            listener.clone(),
            server_metrics.clone(),
            counters.clone(),
            states.clone(),
        );
        async move {
            serve.await;
            Ok(())
        }
    }));
    let (calls, mut requests) = tokio::sync::mpsc::channel(16);
    let live = metrics.history().follow();
    tasks.spawn(optional("control socket", async move {
        crate::control::server::serve(control, calls, live).await;
        Ok(())
    }));
    let mut current = Generation::start(kernel, config, &metrics, &mut tasks, None)?;
    // An interface that cannot take the packet path as configured (`hook =
    // "xdp"` where another XDP program sits) stops the start, in one line.
    if let Some(why) = sync_interfaces(&mut current) {
        anyhow::bail!("{why}");
    }
    observe_packet_path(&current, &metrics);
    // Interfaces come and go (a VM's tap with the VM): look again every second.
    let mut interface_check = tokio::time::interval(RETRY_ATTACH);
    interface_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Flows past their timeout, ended in the kernel.
    let mut flow_sweep = tokio::time::interval(FLOW_SWEEP);
    flow_sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let outcome = loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Received::Stop(why) => {
                    tracing::info!("{why}: stopping");
                    break Ok(());
                }
                Received::Reload => {
                    match apply_reload(&path, &mut current, &pins, &cgroup, &metrics, &mut tasks) {
                        Ok(()) => {}
                        Err(e) if e.is::<GenerationFailed>() => break Err(e),
                        Err(_) => {}
                    }
                }
            },
            Some((request, reply)) = requests.recv() => {
                let answer = match request {
                    Request::Reload => {
                        match apply_reload(&path, &mut current, &pins, &cgroup, &metrics, &mut tasks) {
                            Ok(()) => Response::done(format!("config {} reloaded", path.display())),
                            Err(e) if e.is::<GenerationFailed>() => {
                                let _ = reply.send(Response::error(format!("{e:#}")));
                                break Err(e);
                            }
                            Err(e) => Response::error(format!("reload failed, the running config stays: {e:#}")),
                        }
                    }
                    other => View {
                        upstreams: &current.upstreams,
                        states: &states_view,
                        counters: &counters_view,
                        metrics: &metrics,
                        dry_run_all: current.config.daemon.dry_run,
                        default_policy: current.config.default_policy.is_some(),
                    }
                    .answer(&other),
                };
                let _ = reply.send(answer);
            }
            Some(change) = cgroup_changed.recv() => match change {
                CgroupChange::Gone => {
                    metrics.set_cgroup_attached(false);
                    to_attach = None;
                    tracing::warn!(cgroup = %cgroup.display(), "the cgroup is gone (a service stopped or restarting?): nothing to protect until it is created again");
                }
                // Back to the cgroup our links are on: nothing to do.
                CgroupChange::Recreated(id) if Some(id) == attached_to => {
                    metrics.set_cgroup_attached(true);
                    to_attach = None;
                }
                CgroupChange::Recreated(id) => {
                    to_attach = Some(id);
                    reattach(&mut current.kernel, &cgroup, &metrics, &mut to_attach, &mut attached_to);
                }
            },
            _ = pin_check.tick(), if to_attach.is_none() && attached_to.is_some() => {
                if !current.kernel.links_attached() && Identity::of(&cgroup) == attached_to {
                    metrics.set_links_pinned(false);
                    tracing::error!(pins = %pins.root().display(), "the pinned links are gone or detached (by hand?), and with them the programs: attaching again");
                    match current.kernel.attach(&cgroup) {
                        Ok(()) => {
                            metrics.set_links_pinned(true);
                            metrics.set_programs(&current.kernel.program_ids());
                            tracing::info!(cgroup = %cgroup.display(), "attached again, every breaker's state kept");
                        }
                        Err(e) => tracing::error!(cgroup = %cgroup.display(), error = %e, "attaching again failed: nothing is protected; trying again every {RETRY_ATTACH:?}"),
                    }
                }
            }
            _ = interface_check.tick(), if !current.config.interfaces.is_empty() => {
                sync_interfaces(&mut current);
                observe_packet_path(&current, &metrics);
            }
            _ = flow_sweep.tick(), if !current.config.interfaces.is_empty() => {
                if let Err(e) = current.kernel.expire_flows() {
                    tracing::warn!(error = %e, "ending the packet path's flows past their timeout failed; trying again");
                }
            }
            _ = retry.tick(), if to_attach.is_some() => {
                // Only if the path still names the cgroup the attach was for.
                if Identity::of(&cgroup) == to_attach {
                    reattach(&mut current.kernel, &cgroup, &metrics, &mut to_attach, &mut attached_to);
                } else {
                    to_attach = None;
                }
            }
            Some(done) = tasks.join_next() => match done {
                // An optional task ended; it said so where it ended.
                Ok(Ok(())) => {}
                Ok(Err(e)) => break Err(e),
                // A task of a replaced config, stopped on purpose.
                Err(e) if e.is_cancelled() => {}
                Err(e) => break Err(anyhow::Error::new(e).context("a daemon task's supervisor failed")),
            },
        }
    };
    tasks.abort_all();
    drop(current);
    let _ = std::fs::remove_file(&control_path);
    tracing::info!(pins = %pins.root().display(), "daemon stopped; the programs stay attached and keep enforcing (pinned): `breaker uninstall` removes them");
    outcome
}

/// Removes the pin folder when dropped, if nothing is pinned in it.
struct TidyPins(PinFolder);

impl Drop for TidyPins {
    fn drop(&mut self) {
        self.0.remove_if_empty();
    }
}

/// Each configured upstream's id and name.
fn names_of(kernel: &Kernel, config: &Config) -> Vec<(u32, String)> {
    kernel
        .upstreams(config)
        .into_iter()
        .map(|(id, u)| (id, u.name))
        .collect()
}

/// Each upstream's id, name, fallback hops' labels and the service it steers
/// within, for the redirected and steered series.
fn fallbacks_of(
    kernel: &Kernel,
    config: &Config,
) -> Vec<(u32, String, Vec<String>, Option<String>)> {
    kernel
        .upstreams(config)
        .into_iter()
        .map(|(id, u)| {
            let hops: Vec<String> = u.fallbacks.iter().map(|f| f.label.clone()).collect();
            let service = u.service.filter(|s| s.steers()).map(|s| s.name);
            (id, u.name, hops, service)
        })
        .collect()
}

/// One loaded config: its kernel objects, and the tasks that work from them
/// (transition events, kernel logs, probes), replaced as a whole at a reload.
struct Generation {
    kernel: Kernel,
    config: Config,
    /// The config's upstreams with their ids.
    upstreams: Vec<(u32, crate::config::Upstream)>,
    tasks: Vec<tokio::task::AbortHandle>,
    /// The transition pump, stopped a moment after the others (see `stop`).
    events: Option<tokio::task::AbortHandle>,
    alerts: Vec<tokio::task::AbortHandle>,
    /// Why each interface the packet path cannot attach to failed last (logged
    /// when it changes).
    interface_failures: std::collections::HashMap<String, String>,
}

impl Generation {
    fn start(
        mut kernel: Kernel,
        config: Config,
        metrics: &Arc<Metrics>,
        tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
        kept_alerts: Option<Vec<tokio::task::AbortHandle>>,
    ) -> anyhow::Result<Generation> {
        // Only this config's programs (attached) and probes (not started yet)
        // change the words from now on: count each service's ejections anew.
        kernel.states().recount_services();
        let upstreams = kernel.upstreams(&config);
        metrics.count_destinations_in(
            kernel.destinations(),
            crate::kernel::destination_owner(&upstreams),
            upstreams
                .iter()
                .filter(|(_, u)| u.per_address)
                .map(|(id, u)| (*id, u.name.clone()))
                .collect(),
        );
        metrics.set_programs(&kernel.program_ids());
        let sizes = config.map_sizes();
        let mut capacities = kernel.map_capacities();
        capacities.extend(
            ["DEFAULT_STATES", "DEFAULT_TRIPPED"].map(|m| (m.to_string(), sizes.destinations)),
        );
        let endpoints = |single: bool, v4: bool| {
            config
                .upstreams
                .iter()
                .flat_map(|u| &u.endpoints)
                .filter(|e| match (e.single_address(), e.net) {
                    (Some(_), _) => single,
                    (None, ipnet::IpNet::V4(_)) => !single && v4,
                    (None, ipnet::IpNet::V6(_)) => !single && !v4,
                })
                .count() as u64
        };
        // The endpoints the table had no place for are in ENDPOINTS_EXACT.
        let overflow = u64::from(sizes.overflow);
        metrics.set_maps(
            &capacities,
            &[
                ("ENDPOINT_TABLE", endpoints(true, false) - overflow),
                ("ENDPOINTS_EXACT", overflow),
                ("ENDPOINTS_V4", endpoints(false, true)),
                ("ENDPOINTS_V6", endpoints(false, false)),
                ("UPSTREAM_NAMES", config.upstreams.len() as u64),
            ],
        );
        metrics.set_kernel_memory_estimate(
            config.kernel_memory_estimate(crate::config::possible_cpus()),
        );
        let mut handles = Vec::new();
        // Alerts whose config did not change keep their task, backlog and any
        // delivery in flight.
        let alerts = match kept_alerts {
            Some(alerts) => alerts,
            None => {
                metrics.set_alerts(
                    &config
                        .alerts
                        .iter()
                        .map(|a| a.name.clone())
                        .collect::<Vec<_>>(),
                );
                config
                    .alerts
                    .iter()
                    .map(|alert| {
                        let live = metrics.history().follow().subscribe();
                        let (alert, alerted) = (alert.clone(), metrics.clone());
                        tasks.spawn(optional("webhook alerts", async move {
                            crate::alerts::deliver(alert, live, alerted).await;
                            Ok(())
                        }))
                    })
                    .collect()
            }
        };
        let events = kernel.take_events()?;
        let events = tasks.spawn(optional(
            "transition events",
            crate::events::pump(events, metrics.clone()),
        ));
        if let Some(logger) = kernel.take_logger() {
            handles.push(tasks.spawn(optional(
                "kernel log forwarding",
                forward_kernel_logs(logger),
            )));
        }
        let upstreams = kernel.upstreams(&config);
        let kept = upstreams.clone();
        let ids: Vec<u32> = upstreams.iter().map(|(id, _)| *id).collect();
        metrics.history().retain(&ids);
        let (counters, sampled) = (kernel.counters(), metrics.clone());
        handles.push(tasks.spawn(optional("counter sampling", async move {
            let mut tick = tokio::time::interval(crate::control::SAMPLE_EVERY);
            loop {
                tick.tick().await;
                let now = Instant::now();
                let snapshot = ids
                    .iter()
                    .filter_map(|id| counters.get(*id).ok().map(|c| (*id, c)))
                    .collect();
                sampled.history().sample(now, snapshot);
            }
        })));
        let (states, prober_metrics, mark, heartbeat) = (
            kernel.states(),
            metrics.clone(),
            config.daemon.probe_mark,
            kernel.heartbeat(),
        );
        // Past the restart budget the daemon exits: its heartbeat stops, and the
        // kernel lets application trials close the breakers instead of probes.
        handles.push(tasks.spawn(restarting(
            "probe scheduler",
            Some(PROBE_RESTARTS),
            move || {
                // A per-address upstream's breakers recover by trials: its own
                // word holds only an operator's override, never a trip to probe.
                let probe = crate::probe::run(
                    upstreams
                        .iter()
                        .filter(|(_, u)| !u.per_address)
                        .cloned()
                        .collect(),
                    mark,
                    states.clone(),
                    prober_metrics.clone(),
                    heartbeat.clone(),
                );
                async move {
                    probe.await;
                    Ok(())
                }
            },
        )));
        Ok(Generation {
            kernel,
            config,
            upstreams: kept,
            tasks: handles,
            events: Some(events),
            alerts,
            interface_failures: std::collections::HashMap::new(),
        })
    }

    fn stop(&mut self) {
        for task in self.tasks.iter().chain(&self.alerts) {
            task.abort();
        }
        // Transitions the old programs made just before the swap are still in
        // their ring: read on a little before stopping.
        if let Some(events) = self.events.take() {
            tokio::spawn(async move {
                tokio::time::sleep(EVENTS_DRAIN).await;
                events.abort();
            });
        }
    }
}

/// How long the replaced config's transition pump reads on after a reload.
const EVENTS_DRAIN: Duration = Duration::from_secs(1);

/// The reloaded config was swapped in, but its tasks could not start: the
/// daemon cannot go on (it exits; the pinned programs stay).
#[derive(Debug, thiserror::Error)]
#[error("starting the reloaded config's tasks: {0:#}")]
struct GenerationFailed(anyhow::Error);

/// SIGHUP or `breaker reload`: the new config in place of the running one, or
/// an error (logged and counted) with the running one untouched.
fn apply_reload(
    path: &std::path::Path,
    current: &mut Generation,
    pins: &PinFolder,
    cgroup: &std::path::Path,
    metrics: &Arc<Metrics>,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let (kernel, config) = match reload(path, &current.config, pins, cgroup) {
        Ok(loaded) => loaded,
        Err(e) => {
            metrics.reload_failed();
            tracing::error!("reload failed, the running config stays: {e:#}");
            return Err(e);
        }
    };
    let kept_alerts =
        (config.alerts == current.config.alerts).then(|| std::mem::take(&mut current.alerts));
    current.stop();
    let names = names_of(&kernel, &config);
    metrics.set_upstreams(&names);
    metrics.set_fallbacks(&fallbacks_of(&kernel, &config));
    // Pinned links (XDP, TCX) stay for the new programs to be swapped in
    // under them; clsact filters make room for the new ones (SYNs pass
    // unwatched for that moment: fail open).
    current.kernel.release_interfaces();
    *current = Generation::start(kernel, config, metrics, tasks, kept_alerts)
        .map_err(|e| anyhow::Error::new(GenerationFailed(e)))?;
    metrics.packet().new_load();
    sync_interfaces(current);
    observe_packet_path(current, metrics);
    metrics.reloaded();
    tracing::info!(config = %path.display(), upstreams = names.len(), "config reloaded: every kept upstream keeps its state and counters");
    Ok(())
}

/// Re-reads the config at `path` and, when it is valid and changes nothing a
/// reload cannot change, loads it beside the running one and swaps its programs
/// in under the pinned links. Any error leaves the running config as it is.
fn reload(
    path: &std::path::Path,
    running: &Config,
    pins: &PinFolder,
    cgroup: &std::path::Path,
) -> anyhow::Result<(Kernel, Config)> {
    let config = Config::from_file(path)?;
    if config.cgroup != running.cgroup {
        anyhow::bail!(
            "config {}: cgroup changed; a reload keeps the cgroup it runs on: restart the daemon to move it",
            path.display()
        );
    }
    for (field, changed) in [
        (
            "daemon.metrics_listen",
            config.daemon.metrics_listen != running.daemon.metrics_listen,
        ),
        (
            "daemon.pin_path",
            config.daemon.pin_path != running.daemon.pin_path,
        ),
        (
            "daemon.probe_mark",
            config.daemon.probe_mark != running.daemon.probe_mark,
        ),
        (
            "daemon.control_socket",
            config.daemon.control_socket != running.daemon.control_socket,
        ),
        (
            "daemon.log_format",
            config.daemon.log_format != running.daemon.log_format,
        ),
    ] {
        if changed {
            anyhow::bail!(
                "config {}: {field} changed; a reload cannot apply that: restart the daemon",
                path.display()
            );
        }
    }
    let mut kernel = Kernel::load(&config, pins)?;
    // Verified before anything running is touched: a packet program the
    // kernel refuses keeps the running config.
    if !config.interfaces.is_empty() {
        kernel.load_packet_programs()?;
    }
    kernel.attach(cgroup)?;
    forget_unread_destinations(&mut kernel, &config);
    Ok((kernel, config))
}

/// Per-destination breakers an earlier config left that no breaker of `config`
/// reads go, once its programs are attached; a failure leaves them (logged).
fn forget_unread_destinations(kernel: &mut Kernel, config: &Config) {
    match kernel.forget_unread_destinations(config) {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            destinations = n,
            "forgot the per-destination breakers no breaker of this config reads (an upstream removed or narrowed, or its destinations claimed by another)"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "looking for per-destination breakers this config no longer reads failed: they stay"
        ),
    }
}

/// How often the packet path's flows are looked over for timeouts: a flow's
/// timeout outcome comes at most this late.
const FLOW_SWEEP: Duration = Duration::from_millis(100);

/// Attaches the packet path to the configured interfaces that appeared (or were
/// recreated) and logs what changed. Returns the first failure, if any.
fn sync_interfaces(current: &mut Generation) -> Option<String> {
    use crate::kernel::packet::InterfaceChange;
    let mut failed = None;
    for change in current.kernel.sync_interfaces(&current.config.interfaces) {
        match change {
            InterfaceChange::Attached(a) => {
                current.interface_failures.remove(&a.interface);
                tracing::info!(
                    interface = %a.interface,
                    ingress = a.ingress,
                    egress = a.egress,
                    "packet path attached"
                )
            }
            InterfaceChange::TakenOver(a) => {
                current.interface_failures.remove(&a.interface);
                tracing::info!(
                    interface = %a.interface,
                    ingress = a.ingress,
                    egress = a.egress,
                    "packet path attached: the pinned links taken over, with no moment unwatched"
                )
            }
            InterfaceChange::Gone(name) => tracing::warn!(
                interface = %name,
                "interface gone: the packet path attaches again when it is back"
            ),
            InterfaceChange::Unpinned(name) => tracing::warn!(
                interface = %name,
                "a pin of the packet path's links was removed, or its link detached, by another hand: attaching again"
            ),
            InterfaceChange::Failed(name, why) => {
                // Said once per reason, not every second it goes on.
                if current.interface_failures.get(&name) != Some(&why) {
                    tracing::error!(interface = %name, error = %why, "the packet path cannot attach; trying again every {RETRY_ATTACH:?}");
                    current.interface_failures.insert(name.clone(), why.clone());
                }
                // Only an explicit `hook = "xdp"` that cannot have XDP stops a
                // start; anything else is tried again (fail open meanwhile).
                let xdp_only = current
                    .config
                    .interfaces
                    .iter()
                    .any(|i| i.name == name && i.hook == crate::config::Hook::Xdp);
                if xdp_only {
                    failed.get_or_insert(format!("interface {name}: {why}"));
                }
            }
        }
    }
    failed
}

/// The packet path's interfaces and counters, into the metrics.
fn observe_packet_path(current: &Generation, metrics: &Metrics) {
    if current.config.interfaces.is_empty() {
        return;
    }
    let attached = current.kernel.attached_interfaces();
    let interfaces: Vec<_> = current
        .config
        .interfaces
        .iter()
        .map(|i| {
            let a = attached.iter().find(|a| a.interface == i.name).cloned();
            (i.name.clone(), a)
        })
        .collect();
    metrics.packet().set_interfaces(&interfaces);
    if let Ok(counters) = current.kernel.packet_counters() {
        metrics.packet().observe(&counters);
    }
}

/// How often an attach to a recreated cgroup that failed is tried again.
const RETRY_ATTACH: Duration = Duration::from_secs(1);

/// Attaches to the cgroup that `to_attach` names, now at `cgroup`. On failure
/// nothing is protected, and the metrics and `/healthz` say so until a retry works.
fn reattach(
    kernel: &mut Kernel,
    cgroup: &std::path::Path,
    metrics: &Metrics,
    to_attach: &mut Option<Identity>,
    attached_to: &mut Option<Identity>,
) {
    match kernel.attach(cgroup) {
        Ok(()) => {
            metrics.set_cgroup_attached(true);
            metrics.set_programs(&kernel.program_ids());
            *attached_to = to_attach.take();
            tracing::info!(cgroup = %cgroup.display(), "the cgroup was created again: re-attached, every breaker's state kept");
        }
        Err(e) => {
            metrics.set_cgroup_attached(false);
            tracing::error!(cgroup = %cgroup.display(), error = %e, "the cgroup was created again, but attaching to it failed: it is not protected; trying again every {RETRY_ATTACH:?}");
        }
    }
}

/// The probe scheduler may fail this many times within this long before the daemon
/// gives up and detaches.
const PROBE_RESTARTS: (u32, Duration) = (5, Duration::from_secs(600));
/// Back-off before a task's first restart; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A spawned task that ends when its handle is dropped, as when the task that
/// awaits it is aborted (a reload stops the old generation's tasks).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the task `make` builds, and builds and runs it again with a growing back-off
/// each time it ends, fails or panics. With `budget = Some((n, window))`, the `n + 1`th
/// end within `window` is an error: the daemon exits and says why.
async fn restarting<F, Fut>(
    name: &'static str,
    budget: Option<(u32, Duration)>,
    mut make: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut ends: std::collections::VecDeque<Instant> = Default::default();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        // A task of its own, so that a panic ends only this run of it; aborted
        // with this one (a reload stops the old generation's tasks: its probe
        // scheduler must not go on probing, and writing words, beside the new).
        let mut run = AbortOnDrop(tokio::spawn(make()));
        let why = match (&mut run.0).await {
            Ok(Ok(())) => "ended".to_string(),
            Ok(Err(e)) => format!("failed: {e:#}"),
            Err(e) => format!("panicked: {e}"),
        };
        let now = Instant::now();
        if let Some((n, window)) = budget {
            ends.retain(|t| now.duration_since(*t) < window);
            ends.push_back(now);
            if ends.len() > n as usize {
                anyhow::bail!(
                    "the {name} {why}; that is {} times within {}, so it is not restarted: exiting (while no daemon runs, application connects are let through as trials: fail open)",
                    ends.len(),
                    humantime::format_duration(window)
                );
            }
        }
        // A run that lasted a while starts the back-off over.
        if now.duration_since(started) > MAX_BACKOFF * 2 {
            backoff = FIRST_BACKOFF;
        }
        tracing::error!(task = name, "the {name} {why}; restarting in {backoff:?}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Runs a task the daemon can do without: when it ends, fails or panics, that is
/// logged and the daemon goes on enforcing and probing.
async fn optional(
    name: &'static str,
    task: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
) -> anyhow::Result<()> {
    // Aborted with this task, as in `restarting`.
    let mut run = AbortOnDrop(tokio::spawn(task));
    match (&mut run.0).await {
        Ok(Ok(())) => tracing::error!(task = name, "the {name} ended; going on without it"),
        Ok(Err(e)) => {
            tracing::error!(task = name, "the {name} failed: {e:#}; going on without it")
        }
        Err(e) => tracing::error!(task = name, "the {name} panicked: {e}; going on without it"),
    }
    Ok(())
}

/// Every signal a daemon is expected to get. Once a stream is registered, tokio's
/// handler replaces the default action (termination) for good.
struct Signals {
    term: Signal,
    int: Signal,
    quit: Signal,
    hup: Signal,
    usr1: Signal,
    usr2: Signal,
}

impl Signals {
    fn register() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// Waits for a signal that stops the daemon (and says which) or reloads the
    /// config; logs the others. Cancel-safe: no signal is lost when the future is
    /// dropped.
    async fn next(&mut self) -> Received {
        loop {
            tokio::select! {
                _ = self.term.recv() => return Received::Stop("SIGTERM"),
                _ = self.int.recv() => return Received::Stop("SIGINT"),
                _ = self.quit.recv() => return Received::Stop("SIGQUIT (handled as SIGTERM)"),
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    return Received::Reload;
                }
                _ = self.usr1.recv() => tracing::info!("SIGUSR1: no action assigned; ignored"),
                _ = self.usr2.recv() => tracing::info!("SIGUSR2: no action assigned; ignored"),
            }
        }
    }
}

/// What a signal asks of the daemon.
enum Received {
    Stop(&'static str),
    Reload,
}

/// Raises the soft limit on open files to the hard limit, so that a burst of
/// connections (metrics clients, probes) does not run the daemon out of descriptors.
/// Best effort: the daemon works without it.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit to a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "reading RLIMIT_NOFILE failed");
        return;
    }
    if lim.rlim_cur >= lim.rlim_max {
        tracing::debug!(
            nofile = lim.rlim_cur,
            "RLIMIT_NOFILE already at its hard limit"
        );
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit reads one rlimit from a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "raising RLIMIT_NOFILE failed");
        return;
    }
    tracing::debug!(
        from = lim.rlim_cur,
        to = raised.rlim_cur,
        "RLIMIT_NOFILE soft limit raised"
    );
}

/// aya-log records from the kernel programs, through `log` into tracing.
async fn forward_kernel_logs(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
) -> anyhow::Result<()> {
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd holds it.
    let mut fd =
        unsafe { tokio::io::unix::AsyncFd::register(logger) }.map_err(|e| e.into_parts().1)?;
    loop {
        let mut guard = fd.readable_mut().await?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_past_its_restart_budget_ends_the_daemon_with_the_reason() {
        let mut runs = 0;
        let err = restarting("test task", Some((1, Duration::from_secs(60))), || {
            runs += 1;
            async { anyhow::bail!("broken") }
        })
        .await
        .expect_err("gives up");
        assert_eq!(runs, 2, "restarted once, then given up");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("the test task failed: broken") && msg.contains("2 times within 1m"),
            "{msg}"
        );
    }

    /// A reload aborts the old generation's tasks: the run a restarting (or
    /// optional) task spawned must end with it (it once went on, so an old probe
    /// scheduler kept probing beside the new one after every reload).
    #[tokio::test]
    async fn aborting_a_restarting_task_ends_its_run() {
        let beats = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = beats.clone();
        let task = tokio::spawn(restarting("test task", None, move || {
            let counted = counted.clone();
            async move {
                loop {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
        ends_with_its_task(task, &beats).await;
        let beats = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = beats.clone();
        let task = tokio::spawn(optional("test task", async move {
            loop {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
        ends_with_its_task(task, &beats).await;
    }

    async fn ends_with_its_task(
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
        beats: &std::sync::atomic::AtomicU32,
    ) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        task.abort();
        let _ = task.await;
        let at_abort = beats.load(std::sync::atomic::Ordering::SeqCst);
        assert!(at_abort > 0, "the run ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            beats.load(std::sync::atomic::Ordering::SeqCst),
            at_abort,
            "the run went on after its task was aborted"
        );
    }

    #[tokio::test]
    async fn a_panicking_task_is_restarted() {
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = runs.clone();
        let err = restarting("test task", Some((1, Duration::from_secs(60))), move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("first run panics");
                }
                Ok(())
            }
        })
        .await
        .expect_err("gives up after the second end");
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(
            format!("{err:#}").contains("the test task ended"),
            "{err:#}"
        );
    }
}
