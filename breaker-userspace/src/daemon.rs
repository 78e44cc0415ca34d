//! `breaker run`: load, attach, then serve probes, events and metrics until a signal.
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    cgroup,
    config::Config,
    kernel::{upstream_id, Kernel},
    metrics::Metrics,
};

pub async fn run(config: Config) -> anyhow::Result<()> {
    let cgroup =
        cgroup::resolve(config.cgroup.as_deref()).context("choosing the cgroup to attach to")?;
    // Bind before attaching, so a busy port leaves nothing attached.
    let listener = tokio::net::TcpListener::bind(config.daemon.metrics_listen)
        .await
        .with_context(|| {
            format!(
                "binding the metrics listener on {}",
                config.daemon.metrics_listen
            )
        })?;

    let mut kernel = Kernel::load(&config)?;
    let logger = kernel.take_logger();
    let events = kernel.take_events()?;
    kernel.attach(&cgroup)?;
    tracing::info!(
        cgroup = %cgroup.display(),
        upstreams = config.upstreams.len(),
        default_policy = config.default_policy.is_some(),
        metrics = %format!("http://{}/metrics", config.daemon.metrics_listen),
        "breaker attached"
    );

    let names: Vec<String> = config.upstreams.iter().map(|u| u.name.clone()).collect();
    let metrics = Arc::new(Metrics::new(&names));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(crate::events::pump(events, metrics.clone()));
    tasks.spawn(crate::metrics::serve(
        listener,
        metrics.clone(),
        kernel.counters(),
        kernel.states(),
    ));
    if let Some(logger) = logger {
        tasks.spawn(forward_kernel_logs(logger));
    }
    let upstreams = config
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, up)| (upstream_id(i), up.clone()))
        .collect();
    let (states, prober_metrics, mark) =
        (kernel.states(), metrics.clone(), config.daemon.probe_mark);
    tasks.spawn(async move {
        crate::probe::run(upstreams, mark, states, prober_metrics).await;
        Ok(())
    });

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let outcome = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: detaching"); Ok(()) }
        _ = int.recv() => { tracing::info!("SIGINT: detaching"); Ok(()) }
        Some(done) = tasks.join_next() => match done {
            Ok(Err(e)) => Err(e.context("a daemon task failed")),
            Ok(Ok(())) => Err(anyhow::anyhow!("a daemon task ended unexpectedly")),
            Err(e) => Err(anyhow::Error::new(e).context("a daemon task panicked")),
        },
    };
    tasks.abort_all();
    drop(kernel);
    tracing::info!("breaker detached");
    outcome
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
