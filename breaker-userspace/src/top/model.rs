//! What `breaker top` shows, built from successive `status` answers: rates,
//! each upstream's last minute of connect rates, the sort, the filter and the
//! selection. Pure: no terminal, no socket, so the tests drive it directly.
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::{
    control::protocol::{DestinationCounts, Detail, Status, Totals, UpstreamStatus},
    health::Health,
};

/// How far back the sparkline reaches.
pub const HISTORY: Duration = Duration::from_secs(60);
/// Most rate samples kept per upstream (a minute at the shortest interval).
pub const MAX_HISTORY_SAMPLES: usize = 600;

/// Samples that cover [`HISTORY`] at one per `interval`.
pub fn history_samples(interval: Duration) -> usize {
    let n = HISTORY.as_millis() / interval.as_millis().max(1);
    (n as usize).clamp(1, MAX_HISTORY_SAMPLES)
}

/// The order of the upstream rows; `s` cycles through them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortKey {
    #[default]
    Name,
    /// Open first, then half-open, then closed.
    State,
    /// Highest failure share of the last minute first.
    FailurePercent,
    /// Most rejects per second first.
    Rejects,
}

impl SortKey {
    pub fn next(self) -> SortKey {
        match self {
            SortKey::Name => SortKey::State,
            SortKey::State => SortKey::FailurePercent,
            SortKey::FailurePercent => SortKey::Rejects,
            SortKey::Rejects => SortKey::Name,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortKey::Name => "name",
            SortKey::State => "state",
            SortKey::FailurePercent => "failure %",
            SortKey::Rejects => "rejects/s",
        }
    }
}

/// One upstream as the last answer showed it, with what `top` derives.
#[derive(Clone, Debug)]
pub struct Tracked {
    pub status: UpstreamStatus,
    pub connects_per_s: f64,
    pub rejects_per_s: f64,
    /// Connects per second, oldest first, covering at most [`HISTORY`].
    pub connect_history: VecDeque<f64>,
    /// The totals and when they were read, to take the next rate from.
    last_totals: Option<(Instant, Totals)>,
}

impl Tracked {
    /// Failures as a share of the last minute's connects; `None` with no connects.
    pub fn failure_percent(&self) -> Option<f64> {
        let w = &self.status.last_minute;
        (w.connects > 0).then(|| 100.0 * w.failures as f64 / w.connects as f64)
    }

    /// Open first: the order of the `state` sort.
    fn state_rank(&self) -> u8 {
        match self.status.state.as_str() {
            "open" => 0,
            "half_open" => 1,
            "closed" => 3,
            _ => 2,
        }
    }
}

/// The detail pane of one upstream: its transitions, once fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetailPane {
    pub upstream: String,
    /// `None` until the first `status NAME` answer; the error line if it failed.
    pub detail: Option<Result<Detail, String>>,
}

/// What a key asks of the event loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
    /// The detail pane opened: fetch its upstream now rather than at the next poll.
    FetchDetail,
}

#[derive(Debug, Default)]
pub struct Model {
    /// In the daemon's (config) order; [`Model::visible`] sorts and filters.
    upstreams: Vec<Tracked>,
    pub default_policy: Option<DestinationCounts>,
    pub sort: SortKey,
    /// Rows whose name contains this (case-insensitively) are shown.
    pub filter: String,
    /// Keys go to the filter until Enter or Esc.
    pub typing_filter: bool,
    /// The selected upstream, by name so that it stays put when rows move.
    selected: Option<String>,
    pub detail: Option<DetailPane>,
    /// Why the last poll failed, until one succeeds.
    pub error: Option<String>,
    /// Where the daemon is, for the title.
    pub socket: String,
    /// Rate samples kept per upstream: [`HISTORY`] at the poll interval.
    history_samples: usize,
}

impl Model {
    /// A model for polls every `interval`.
    pub fn new(socket: impl Into<String>, interval: Duration) -> Model {
        Model {
            socket: socket.into(),
            history_samples: history_samples(interval),
            ..Default::default()
        }
    }

    /// Takes a `status` answer read at `at`: rates from the totals' change since
    /// the previous answer (the last minute's average before there is one, or
    /// from a daemon without totals).
    pub fn update(&mut self, status: Status, at: Instant) {
        let previous = std::mem::take(&mut self.upstreams);
        for upstream in status.upstreams {
            let mut tracked = previous
                .iter()
                .find(|t| t.status.name == upstream.name)
                .cloned()
                .unwrap_or_else(|| Tracked {
                    status: upstream.clone(),
                    connects_per_s: 0.0,
                    rejects_per_s: 0.0,
                    connect_history: VecDeque::with_capacity(self.history_samples),
                    last_totals: None,
                });
            let measured = match (tracked.last_totals, upstream.total) {
                (Some((then, old)), Some(new)) if at > then => {
                    let seconds = at.duration_since(then).as_secs_f64();
                    // A counter that went back (the pins were removed) starts over.
                    let rate = |new: u64, old: u64| new.saturating_sub(old) as f64 / seconds;
                    Some((
                        rate(new.connects, old.connects),
                        rate(new.rejected, old.rejected),
                    ))
                }
                _ => None,
            };
            let (connects, rejects) = measured.unwrap_or_else(|| {
                let w = &upstream.last_minute;
                let seconds = w.seconds.max(1) as f64;
                (w.connects as f64 / seconds, w.rejected as f64 / seconds)
            });
            tracked.connects_per_s = connects;
            tracked.rejects_per_s = rejects;
            while tracked.connect_history.len() >= self.history_samples.max(1) {
                tracked.connect_history.pop_front();
            }
            tracked.connect_history.push_back(connects);
            tracked.last_totals = upstream.total.map(|t| (at, t));
            tracked.status = upstream;
            self.upstreams.push(tracked);
        }
        self.default_policy = status.default_policy;
        self.error = None;
        self.keep_selection_visible();
    }

    /// A poll that failed: the rows stay as they were, the footer says why.
    pub fn poll_failed(&mut self, why: impl Into<String>) {
        self.error = Some(why.into());
    }

    /// The rows to show: filtered, then sorted (ties by name).
    pub fn visible(&self) -> Vec<&Tracked> {
        let filter = self.filter.to_lowercase();
        let mut rows: Vec<&Tracked> = self
            .upstreams
            .iter()
            .filter(|t| t.status.name.to_lowercase().contains(&filter))
            .collect();
        let by_name = |a: &&Tracked, b: &&Tracked| a.status.name.cmp(&b.status.name);
        match self.sort {
            SortKey::Name => rows.sort_by(by_name),
            SortKey::State => {
                rows.sort_by(|a, b| a.state_rank().cmp(&b.state_rank()).then(by_name(a, b)))
            }
            SortKey::FailurePercent => rows.sort_by(|a, b| {
                let share = |t: &Tracked| t.failure_percent().unwrap_or(-1.0);
                share(b).total_cmp(&share(a)).then(by_name(a, b))
            }),
            SortKey::Rejects => rows.sort_by(|a, b| {
                b.rejects_per_s
                    .total_cmp(&a.rejects_per_s)
                    .then(by_name(a, b))
            }),
        }
        rows
    }

    /// Every upstream, whatever the filter hides.
    pub fn upstream_count(&self) -> usize {
        self.upstreams.len()
    }

    /// The host's health word, as `/status` computes it.
    pub fn health(&self) -> Health {
        Health::of_names(
            self.upstreams
                .iter()
                .map(|t| (t.status.mode.as_str(), t.status.state.as_str())),
        )
    }

    /// How many upstreams are in `state`, for the footer.
    pub fn count_in(&self, state: &str) -> usize {
        self.upstreams
            .iter()
            .filter(|t| t.status.state == state)
            .count()
    }

    pub fn selected(&self) -> Option<&str> {
        self.selected.as_deref()
    }

    /// The selected row's place among the visible rows.
    pub fn selected_index(&self) -> Option<usize> {
        let name = self.selected.as_deref()?;
        self.visible().iter().position(|t| t.status.name == name)
    }

    /// Moves the selection `by` rows, clamped to the visible rows; an open
    /// detail pane follows it.
    pub fn move_selection(&mut self, by: isize) -> Flow {
        let rows = self.visible();
        let Some(last) = rows.len().checked_sub(1) else {
            self.selected = None;
            return Flow::Continue;
        };
        let at = self
            .selected_index()
            .map_or(0, |i| i.saturating_add_signed(by).min(last));
        let name = rows[at].status.name.clone();
        self.selected = Some(name.clone());
        match &mut self.detail {
            Some(pane) if pane.upstream != name => {
                *pane = DetailPane {
                    upstream: name,
                    detail: None,
                };
                Flow::FetchDetail
            }
            _ => Flow::Continue,
        }
    }

    /// The detail pane for the selected upstream, or closed.
    pub fn toggle_detail(&mut self) -> Flow {
        if self.detail.take().is_some() {
            return Flow::Continue;
        }
        match &self.selected {
            Some(name) => {
                self.detail = Some(DetailPane {
                    upstream: name.clone(),
                    detail: None,
                });
                Flow::FetchDetail
            }
            None => Flow::Continue,
        }
    }

    /// The detail pane's upstream's `status NAME` answer (or why it failed).
    pub fn set_detail(&mut self, upstream: &str, detail: Result<Detail, String>) {
        if let Some(pane) = self.detail.as_mut().filter(|p| p.upstream == upstream) {
            pane.detail = Some(detail);
        }
    }

    /// What the detail pane wants fetched, if it is open.
    pub fn detail_upstream(&self) -> Option<&str> {
        self.detail.as_ref().map(|p| p.upstream.as_str())
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Flow {
        // Release and repeat events (kitty protocol, Windows) would double each key.
        if key.kind != KeyEventKind::Press {
            return Flow::Continue;
        }
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            return Flow::Quit;
        }
        if self.typing_filter {
            match key.code {
                KeyCode::Enter => self.typing_filter = false,
                KeyCode::Esc => {
                    self.typing_filter = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            self.keep_selection_visible();
            return Flow::Continue;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Flow::Quit,
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('/') => self.typing_filter = true,
            KeyCode::Up | KeyCode::Char('k') => return self.move_selection(-1),
            KeyCode::Down | KeyCode::Char('j') => return self.move_selection(1),
            KeyCode::Enter => return self.toggle_detail(),
            _ => {}
        }
        Flow::Continue
    }

    /// A selection the filter hid (or that left the config) moves to the first
    /// visible row.
    fn keep_selection_visible(&mut self) {
        if self.selected_index().is_none() {
            self.selected = self.visible().first().map(|t| t.status.name.clone());
        }
    }
}
