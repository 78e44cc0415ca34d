//! The view as rendered into ratatui's test backend, driven through the model.
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::{backend::TestBackend, Terminal};

use super::{
    model::{Flow, Model, SortKey},
    view,
};
use crate::control::protocol::{
    DestinationCounts, Detail, PolicyView, Status, Totals, TransitionView, TrippedDestination,
    UpstreamStatus, Window,
};

fn upstream(name: &str, state: &str, connects: u64, failures: u64) -> UpstreamStatus {
    UpstreamStatus {
        name: name.into(),
        addresses: None,
        state: state.into(),
        mode: "auto".into(),
        dry_run: false,
        since_ms: Some(42_000),
        count: 0,
        reopens: 0,
        open_ms: None,
        last_minute: Window {
            seconds: 60,
            connects,
            failures,
            rejected: 0,
        },
        total: None,
        next_probe_ms: (state == "open").then_some(5_000),
        detail: None,
    }
}

fn status(upstreams: Vec<UpstreamStatus>) -> Status {
    Status {
        upstreams,
        default_policy: None,
        services: Vec::new(),
    }
}

/// `api` closed and quiet, `db` open and failing every connect.
fn two_upstreams() -> Model {
    let mut model = Model::new("/run/breaker.sock", Duration::from_secs(1));
    model.update(
        status(vec![
            upstream("api", "closed", 200, 10),
            upstream("db", "open", 40, 40),
        ]),
        Instant::now(),
    );
    model
}

/// The model drawn on a 160x40 screen, one string per line.
fn screen(model: &Model) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(160, 40)).unwrap();
    terminal.draw(|f| view::render(f, model)).unwrap();
    let buffer = terminal.backend().buffer();
    (0..buffer.area.height)
        .map(|y| {
            (0..buffer.area.width)
                .map(|x| buffer[(x, y)].symbol())
                .collect::<String>()
        })
        .collect()
}

/// The first line showing `text`.
fn line_with<'a>(lines: &'a [String], text: &str) -> Option<&'a String> {
    lines.iter().find(|l| l.contains(text))
}

/// The place on the screen of the row of upstream `name` (its name as a word).
fn row_of(lines: &[String], name: &str) -> Option<usize> {
    lines
        .iter()
        .position(|l| l.split_whitespace().any(|w| w == name))
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::from(code)
}

fn type_keys(model: &mut Model, text: &str) {
    for c in text.chars() {
        model.on_key(key(KeyCode::Char(c)));
    }
}

#[test]
fn each_upstream_has_a_row_with_its_state_and_failure_percent() {
    let lines = screen(&two_upstreams());
    let api = line_with(&lines, " api ").expect("a row for api");
    let db = line_with(&lines, " db ").expect("a row for db");
    assert!(api.contains("closed") && api.contains("5.0"), "{api}");
    assert!(db.contains("open") && db.contains("100.0"), "{db}");
    assert!(
        db.contains("42s") && db.contains("5s"),
        "since and next probe: {db}"
    );
}

#[test]
fn the_footer_shows_the_hosts_health() {
    let last = |model: &Model| screen(model).last().cloned().unwrap_or_default();
    let mut model = two_upstreams();
    assert!(
        last(&model).contains("health: degraded"),
        "{}",
        last(&model)
    );
    let now = Instant::now();
    model.update(status(vec![upstream("api", "closed", 1, 0)]), now);
    assert!(last(&model).contains("health: healthy"), "{}", last(&model));
    model.update(status(vec![upstream("db", "open", 1, 1)]), now);
    assert!(
        last(&model).contains("health: critical"),
        "{}",
        last(&model)
    );
    model.poll_failed("no breaker daemon is running (nothing answers at /x)");
    assert!(
        last(&model).contains("no breaker daemon is running"),
        "{}",
        last(&model)
    );
}

#[test]
fn the_filter_hides_the_rows_that_do_not_match() {
    let mut model = two_upstreams();
    model.on_key(key(KeyCode::Char('/')));
    type_keys(&mut model, "DB");
    let typing = screen(&model);
    assert!(
        line_with(&typing, "filter: DB_").is_some(),
        "the footer shows the filter being typed"
    );
    model.on_key(key(KeyCode::Enter));
    let lines = screen(&model);
    assert_eq!(
        row_of(&lines, "api"),
        None,
        "api is hidden:\n{}",
        lines.join("\n")
    );
    assert!(row_of(&lines, "db").is_some());
    assert!(line_with(&lines, "1 of 2 upstreams").is_some());
    // Keys are keys again: `q` quits rather than filtering.
    assert_eq!(model.on_key(key(KeyCode::Char('q'))), Flow::Quit);
    // Esc while typing clears the filter.
    model.on_key(key(KeyCode::Char('/')));
    model.on_key(key(KeyCode::Esc));
    assert!(row_of(&screen(&model), "api").is_some());
}

#[test]
fn s_cycles_the_sort_and_the_rows_follow() {
    let mut model = two_upstreams();
    model.update(
        status(vec![
            upstream("api", "closed", 200, 10),
            upstream("db", "open", 40, 40),
            upstream("cache", "half_open", 10, 5),
        ]),
        Instant::now(),
    );
    let order = |model: &Model| {
        let lines = screen(model);
        let mut rows: Vec<(usize, &str)> = ["api", "cache", "db"]
            .into_iter()
            .filter_map(|name| row_of(&lines, name).map(|at| (at, name)))
            .collect();
        rows.sort();
        rows.into_iter().map(|(_, name)| name).collect::<Vec<_>>()
    };
    assert_eq!(order(&model), ["api", "cache", "db"], "by name");
    model.on_key(key(KeyCode::Char('s')));
    assert_eq!(model.sort, SortKey::State);
    assert_eq!(order(&model), ["db", "cache", "api"], "open first");
    model.on_key(key(KeyCode::Char('s')));
    assert_eq!(model.sort, SortKey::FailurePercent);
    assert_eq!(order(&model), ["db", "cache", "api"], "100%, 50%, 5%");
    assert!(line_with(&screen(&model), "sort: failure %").is_some());
}

#[test]
fn enter_shows_the_selected_upstreams_transitions_newest_first() {
    let mut model = two_upstreams();
    model.on_key(key(KeyCode::Down));
    assert_eq!(model.selected(), Some("db"));
    assert_eq!(model.on_key(key(KeyCode::Enter)), Flow::FetchDetail);
    assert_eq!(model.detail_upstream(), Some("db"));
    let transition = |at_unix_ms, from: &str, to: &str, cause: &str| TransitionView {
        at_unix_ms,
        from: from.into(),
        to: to.into(),
        cause: cause.into(),
    };
    model.set_detail(
        "db",
        Ok(Detail {
            endpoints: vec!["10.0.0.2:5432".into()],
            fallback: vec![],
            policy: PolicyView {
                failure_threshold: 5,
                success_threshold: 2,
                half_open_max_connections: 1,
                open_duration_ms: 30_000,
                max_open_duration_ms: 30_000,
                jitter_percent: 0,
                trial_connect_timeout_ms: 1_000,
                probe_interval_ms: 1_000,
                probe_timeout_ms: 1_000,
                failure_rate: None,
                slow_connects: None,
            },
            transitions: vec![
                transition(1_700_000_000_000, "closed", "open", "timeout"),
                transition(1_700_000_060_000, "open", "half_open", "open_duration"),
            ],
        }),
    );
    let lines = screen(&model);
    let older = lines
        .iter()
        .position(|l| l.contains("closed -> open  (timeout)"));
    let newer = lines
        .iter()
        .position(|l| l.contains("open -> half_open  (open_duration)"));
    assert!(
        matches!((newer, older), (Some(n), Some(o)) if n < o),
        "both transitions, the newest first:\n{}",
        lines.join("\n")
    );
    assert!(line_with(&lines, "db: recent transitions").is_some());
    // Enter again closes the pane.
    model.on_key(key(KeyCode::Enter));
    assert!(line_with(&screen(&model), "closed -> open").is_none());
}

#[test]
fn default_policy_destinations_that_are_not_closed_are_listed() {
    let mut model = two_upstreams();
    let mut answer = status(vec![upstream("api", "closed", 1, 0)]);
    answer.default_policy = Some(DestinationCounts {
        closed: 3,
        open: 1,
        half_open: 1,
        tripped: vec![
            TrippedDestination {
                destination: "10.9.0.7:443".into(),
                state: "open".into(),
                since_ms: 12_000,
            },
            TrippedDestination {
                destination: "[fd00::7]:80".into(),
                state: "half_open".into(),
                since_ms: 1_000,
            },
        ],
    });
    model.update(answer, Instant::now());
    let lines = screen(&model);
    assert!(line_with(&lines, "default policy: 1 open, 1 half_open").is_some());
    let open = line_with(&lines, "10.9.0.7:443").expect("the open destination");
    assert!(open.contains("open") && open.contains("12s"), "{open}");
    assert!(line_with(&lines, "[fd00::7]:80").is_some_and(|l| l.contains("half_open")));
}

#[test]
fn rates_come_from_the_totals_between_two_answers() {
    let mut model = Model::new("/s", Duration::from_secs(1));
    let with_totals = |connects, rejected| {
        let mut u = upstream("api", "closed", 0, 0);
        u.total = Some(Totals {
            connects,
            failures: 0,
            rejected,
        });
        status(vec![u])
    };
    let start = Instant::now();
    model.update(with_totals(1_000, 0), start);
    model.update(with_totals(1_050, 20), start + Duration::from_secs(2));
    let row = model.visible()[0].clone();
    assert_eq!((row.connects_per_s, row.rejects_per_s), (25.0, 10.0));
    assert_eq!(row.connect_history.len(), 2);
    let api = screen(&model)
        .into_iter()
        .find(|l| l.contains(" api "))
        .unwrap_or_default();
    assert!(api.contains("25") && api.contains("10"), "{api}");
}

#[test]
fn the_sparkline_keeps_the_newest_sample_at_the_right() {
    assert_eq!(view::sparkline([].into_iter(), 4), "    ");
    assert_eq!(view::sparkline([0.0, 1.0, 2.0].into_iter(), 4), " ▁▅█");
    // Six samples in three characters: each the higher of two.
    assert_eq!(
        view::sparkline([0.0, 0.0, 4.0, 0.0, 0.0, 8.0].into_iter(), 3),
        "▁▅█"
    );
}

#[test]
fn with_no_daemon_top_says_so_before_touching_the_terminal() {
    let err = super::run(
        std::path::Path::new("/nonexistent/breaker.sock"),
        Duration::from_secs(1),
    )
    .expect_err("no daemon");
    assert!(
        err.to_string().starts_with("no breaker daemon is running"),
        "{err}"
    );
}

#[test]
fn the_sparkline_covers_a_minute_whatever_the_interval() {
    use super::model::history_samples;
    assert_eq!(history_samples(Duration::from_secs(1)), 60);
    assert_eq!(history_samples(Duration::from_millis(200)), 300);
    assert_eq!(history_samples(Duration::from_millis(100)), 600);
    assert_eq!(history_samples(Duration::from_secs(5)), 12);
    // Longer than a minute: one sample, never none.
    assert_eq!(history_samples(Duration::from_secs(120)), 1);
}
