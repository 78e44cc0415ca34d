//! Webhook alerts: each `[[alert]]` is told of the transitions it wants, one POST
//! each. Every alert reads the daemon's live transitions on its own task, with
//! its own bounded backlog, so a slow or dead receiver never slows the kernel
//! path, the probes or another alert: past the backlog its alerts are dropped,
//! and counted.
use std::{sync::Arc, time::Duration};

use tokio::sync::broadcast::{self, error::RecvError};

use crate::{
    config::{Alert, AlertFormat},
    control::protocol::EventView,
    metrics::Metrics,
};

/// Deliveries of one alert: the first try and this many retries, the waits
/// between them doubling from [`FIRST_RETRY`].
const RETRIES: u32 = 2;
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// Sends `alert` every transition from `live` it wants, until the task is
/// stopped (at a reload or at exit).
pub async fn deliver(
    alert: Alert,
    mut live: broadcast::Receiver<EventView>,
    metrics: Arc<Metrics>,
) {
    loop {
        let event = match live.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => {
                metrics.alert(&alert.name, "dropped", missed);
                tracing::warn!(
                    alert = alert.name,
                    url = alert.url,
                    missed,
                    "alert receiver too slow: transitions dropped"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if !wants(&alert, &event) {
            continue;
        }
        let body = body(&alert, &event);
        let mut wait = FIRST_RETRY;
        let mut result = post(&alert, body.clone()).await;
        for _ in 0..RETRIES {
            if result.is_ok() {
                break;
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
            result = post(&alert, body.clone()).await;
        }
        match result {
            Ok(()) => metrics.alert(&alert.name, "sent", 1),
            Err(e) => {
                metrics.alert(&alert.name, "failed", 1);
                tracing::warn!(
                    alert = alert.name,
                    url = alert.url,
                    error = e,
                    "alert not delivered"
                );
            }
        }
    }
}

/// Whether `alert` is about this transition: a configured upstream's, named by
/// the alert if it names any, going to a state the alert wants if it names any.
/// A per-destination breaker's (a default-policy destination's, one address of a
/// per-address upstream's) could flood a receiver: only an alert that names its
/// upstream gets those of a per-address upstream, and none the default policy's.
/// The default policy's name in events (the config reserves it).
const DEFAULT_NAME: &str = "default";

fn wants(alert: &Alert, event: &EventView) -> bool {
    let named = alert.upstreams.contains(&event.upstream);
    (event.destination.is_none() || (named && event.upstream != DEFAULT_NAME))
        && (alert.upstreams.is_empty() || named)
        && (alert.to.is_empty() || alert.to.iter().any(|s| s.name() == event.to))
}

fn body(alert: &Alert, event: &EventView) -> serde_json::Value {
    match alert.format {
        AlertFormat::Json => serde_json::to_value(event).unwrap_or_default(),
        AlertFormat::Slack => serde_json::json!({
            "text": match &event.destination {
                Some(d) => format!("breaker: upstream {} address {d} went {} -> {} ({})", event.upstream, event.from, event.to, event.cause),
                None => format!("breaker: upstream {} went {} -> {} ({})", event.upstream, event.from, event.to, event.cause),
            }
        }),
    }
}

/// One POST, on a blocking thread (the HTTP client is synchronous): a 2xx is
/// delivered, anything else an error.
async fn post(alert: &Alert, body: serde_json::Value) -> Result<(), String> {
    let (url, timeout) = (alert.url.clone(), alert.timeout);
    let sent = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(true)
            .build()
            .into();
        agent.post(&url).send_json(&body).map(|_| ())
    })
    .await;
    match sent {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("the delivery thread failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use breaker_common::machine::State;

    use super::*;

    fn event(upstream: &str, to: &str, destination: Option<&str>) -> EventView {
        EventView {
            at_unix_ms: 0,
            upstream: upstream.into(),
            destination: destination.map(Into::into),
            from: "closed".into(),
            to: to.into(),
            cause: "timeout".into(),
        }
    }

    #[test]
    fn an_alert_wants_only_what_it_names() {
        let mut alert = Alert {
            name: "alert[0]".into(),
            url: "http://127.0.0.1:1/".into(),
            format: AlertFormat::Slack,
            upstreams: vec![],
            to: vec![],
            timeout: Duration::from_secs(1),
        };
        assert!(wants(&alert, &event("api", "open", None)));
        assert!(!wants(
            &alert,
            &event("default", "open", Some("10.0.0.1:80"))
        ));
        alert.upstreams = vec!["db".into()];
        alert.to = vec![State::Open];
        assert!(!wants(&alert, &event("api", "open", None)));
        assert!(wants(&alert, &event("db", "open", None)));
        assert!(!wants(&alert, &event("db", "closed", None)));
        let text = body(&alert, &event("db", "open", None));
        assert_eq!(
            text["text"],
            "breaker: upstream db went closed -> open (timeout)"
        );
        // A per-address upstream's addresses: only to an alert naming it.
        let address = event("fleet", "open", Some("10.0.5.7:5432"));
        assert!(!wants(&alert, &address), "not named");
        alert.upstreams = vec![];
        alert.to = vec![];
        assert!(!wants(&alert, &address), "an alert for every upstream");
        alert.upstreams = vec!["fleet".into(), "default".into()];
        assert!(wants(&alert, &address));
        assert!(
            !wants(&alert, &event("default", "open", Some("10.0.0.1:80"))),
            "never the default policy's"
        );
        assert_eq!(
            body(&alert, &address)["text"],
            "breaker: upstream fleet address 10.0.5.7:5432 went closed -> open (timeout)"
        );
    }
}
