//! What `breaker status` shows beyond the kernel's maps: each upstream's last
//! transitions, and its counters a minute ago. Bounded: a few transitions per
//! upstream, a few snapshots in all.
use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use breaker_common::abi::Counters;

use super::protocol::{EventView, Totals, TransitionView, Window};

/// Transitions kept per upstream.
const TRANSITIONS_KEPT: usize = 20;
/// How often counters are sampled, and over how long `last_minute` looks back.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const WINDOW: Duration = Duration::from_secs(60);

/// Transitions a slow `events --follow` reader may fall behind by before it
/// misses some (and is told how many).
const FOLLOW_BACKLOG: usize = 1024;

pub struct History {
    transitions: Mutex<HashMap<u32, VecDeque<(Instant, TransitionView)>>>,
    samples: Mutex<VecDeque<(Instant, HashMap<u32, Counters>)>>,
    /// Every transition as it happens, for `events --follow`.
    live: tokio::sync::broadcast::Sender<EventView>,
}

impl Default for History {
    fn default() -> Self {
        History {
            transitions: Default::default(),
            samples: Default::default(),
            live: tokio::sync::broadcast::channel(FOLLOW_BACKLOG).0,
        }
    }
}

impl History {
    /// Sends `event` to every `events --follow` (dropped when nobody follows).
    pub fn publish(&self, event: EventView) {
        let _ = self.live.send(event);
    }

    /// Where `events --follow` reads from.
    pub fn follow(&self) -> tokio::sync::broadcast::Sender<EventView> {
        self.live.clone()
    }

    /// Every upstream's kept transitions, oldest first, named by `name_of`.
    pub fn recent(&self, name_of: impl Fn(u32) -> String) -> Vec<EventView> {
        let all = self.transitions.lock().unwrap_or_else(|e| e.into_inner());
        let mut events: Vec<(Instant, EventView)> = all
            .iter()
            .flat_map(|(id, kept)| {
                let name = name_of(*id);
                kept.iter().map(move |(at, t)| {
                    (
                        *at,
                        EventView {
                            at_unix_ms: t.at_unix_ms,
                            upstream: name.clone(),
                            destination: None,
                            from: t.from.clone(),
                            to: t.to.clone(),
                            cause: t.cause.clone(),
                        },
                    )
                })
            })
            .collect();
        events.sort_by_key(|(at, _)| *at);
        events.into_iter().map(|(_, e)| e).collect()
    }

    /// Notes a transition of configured upstream `id`.
    pub fn transition(&self, id: u32, from: &str, to: &str, cause: &str) {
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut all = self.transitions.lock().unwrap_or_else(|e| e.into_inner());
        let kept = all.entry(id).or_default();
        if kept.len() == TRANSITIONS_KEPT {
            kept.pop_front();
        }
        kept.push_back((
            Instant::now(),
            TransitionView {
                at_unix_ms,
                from: from.into(),
                to: to.into(),
                cause: cause.into(),
            },
        ));
    }

    /// Upstream `id`'s last transitions, newest last.
    pub fn transitions(&self, id: u32) -> Vec<TransitionView> {
        let all = self.transitions.lock().unwrap_or_else(|e| e.into_inner());
        all.get(&id)
            .map(|k| k.iter().map(|(_, t)| t.clone()).collect())
            .unwrap_or_default()
    }

    /// How long ago upstream `id`'s last transition was, if the daemon saw one.
    pub fn since_last_transition(&self, id: u32) -> Option<Duration> {
        let all = self.transitions.lock().unwrap_or_else(|e| e.into_inner());
        all.get(&id)
            .and_then(|k| k.back())
            .map(|(at, _)| at.elapsed())
    }

    /// Forgets upstreams that left the config.
    pub fn retain(&self, ids: &[u32]) {
        let mut all = self.transitions.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|id, _| ids.contains(id));
    }

    /// Keeps a snapshot of every upstream's counters, for `last_minute`.
    pub fn sample(&self, now: Instant, counters: HashMap<u32, Counters>) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((now, counters));
        // One sample older than the window is enough to measure across it.
        while samples.len() > 2 && now.duration_since(samples[1].0) >= WINDOW {
            samples.pop_front();
        }
    }

    /// Upstream `id`'s counts between the oldest snapshot within about a minute
    /// and `current`.
    pub fn window(&self, now: Instant, id: u32, current: &Counters) -> Window {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let Some((at, then)) = samples.front() else {
            return Window::default();
        };
        let then = totals(&then.get(&id).copied().unwrap_or_default());
        let current = totals(current);
        Window {
            seconds: now.duration_since(*at).as_secs(),
            connects: current.connects.saturating_sub(then.connects),
            failures: current.failures.saturating_sub(then.failures),
            rejected: current.rejected.saturating_sub(then.rejected),
        }
    }
}

/// The kernel's counters as `status` counts them: a failure is refused or timed
/// out, a reject is failed fast or sent to the fallback.
pub fn totals(c: &Counters) -> Totals {
    Totals {
        connects: c.attempts,
        failures: c.failures_refused + c.failures_timeout + c.failures_unreachable,
        rejected: c.rejected + c.redirected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_spans_about_a_minute_and_no_more() {
        let h = History::default();
        let t0 = Instant::now();
        let at = |n: u64| Counters {
            attempts: n,
            ..Default::default()
        };
        for i in 0..30u64 {
            let now = t0 + SAMPLE_EVERY * i as u32;
            h.sample(now, HashMap::from([(1, at(i * 10))]));
        }
        let now = t0 + SAMPLE_EVERY * 30;
        let w = h.window(now, 1, &at(300));
        assert!((60..=65).contains(&w.seconds), "{w:?}");
        // Attempts grew by 2 a second.
        assert_eq!(w.connects, 2 * w.seconds, "{w:?}");
        assert!(h.samples.lock().unwrap().len() <= 14);
    }

    #[test]
    fn transitions_are_bounded_per_upstream() {
        let h = History::default();
        for i in 0..50 {
            h.transition(1, "closed", "open", &format!("c{i}"));
        }
        let kept = h.transitions(1);
        assert_eq!(kept.len(), TRANSITIONS_KEPT);
        assert_eq!(kept.last().map(|t| t.cause.as_str()), Some("c49"));
        h.retain(&[2]);
        assert!(h.transitions(1).is_empty());
    }
}
