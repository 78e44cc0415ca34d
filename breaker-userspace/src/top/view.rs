//! Draws the [`Model`]: the upstream table, the default policy's tripped
//! destinations, the selected upstream's transitions and the footer.
use std::time::{Duration, UNIX_EPOCH};

use ratatui::{
    layout::{Constraint, Flex, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState},
    Frame,
};

use super::model::{Model, Tracked};
use crate::health::Health;

/// Characters of the last-minute sparkline column.
const SPARKLINE_WIDTH: usize = 30;
/// Transitions the detail pane has room for.
const DETAIL_HEIGHT: u16 = 10;

pub fn render(frame: &mut Frame, model: &Model) {
    let tripped = model
        .default_policy
        .as_ref()
        .map_or(0, |d| d.tripped.len() as u16);
    let [table_area, default_area, detail_area, footer_area] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(if model.default_policy.is_some() {
            tripped.max(1) + 2
        } else {
            0
        }),
        Constraint::Length(if model.detail.is_some() {
            DETAIL_HEIGHT
        } else {
            0
        }),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    render_upstreams(frame, model, table_area);
    render_default_policy(frame, model, default_area);
    render_detail(frame, model, detail_area);
    render_footer(frame, model, footer_area);
}

fn state_style(state: &str) -> Style {
    let colour = match state {
        "closed" => Color::Green,
        "half_open" => Color::Yellow,
        "open" => Color::Red,
        _ => Color::Magenta,
    };
    Style::new().fg(colour).add_modifier(Modifier::BOLD)
}

fn render_upstreams(frame: &mut Frame, model: &Model, area: Rect) {
    let header = Row::new([
        "UPSTREAM",
        "STATE",
        "MODE",
        "SINCE",
        "CONNECTS/s",
        "FAILURE %",
        "REJECTS/s",
        "CONNECTS/s, LAST MINUTE",
        "NEXT PROBE",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let visible = model.visible();
    let rows = visible.iter().map(|t| upstream_row(t));
    // As wide as the longest name, so the numbers stay next to the names.
    let name_width = visible
        .iter()
        .map(|t| t.status.name.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(8, 40) as u16;
    let widths = [
        Constraint::Length(name_width),
        Constraint::Length(9),
        Constraint::Length(12),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(SPARKLINE_WIDTH as u16),
        Constraint::Length(10),
    ];
    let total = model.upstream_count();
    let noun = if total == 1 { "upstream" } else { "upstreams" };
    let title = if visible.len() == total {
        format!(" breaker top: {total} {noun} ")
    } else {
        format!(" breaker top: {} of {total} {noun} ", visible.len())
    };
    let table = Table::new(rows, widths)
        .header(header)
        .flex(Flex::Start)
        .block(Block::new().borders(Borders::ALL).title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    let mut state = TableState::new().with_selected(model.selected_index());
    frame.render_stateful_widget(table, area, &mut state);
    if visible.is_empty() {
        let why = if model.upstream_count() == 0 {
            "no upstreams configured"
        } else {
            "no upstream matches the filter"
        };
        let inner = Rect {
            x: area.x + 2,
            y: area.y + 2,
            width: area.width.saturating_sub(4),
            height: area.height.saturating_sub(3).min(1),
        };
        frame.render_widget(Paragraph::new(why), inner);
    }
}

fn upstream_row(t: &Tracked) -> Row<'static> {
    let s = &t.status;
    let mode = if s.dry_run && s.mode == "auto" {
        "dry_run".to_string()
    } else {
        s.mode.clone()
    };
    let mode_style = if mode == "auto" {
        Style::new()
    } else {
        Style::new().fg(Color::Magenta)
    };
    let failure = t
        .failure_percent()
        .map_or("-".to_string(), |p| format!("{p:.1}"));
    Row::new([
        Cell::from(s.name.clone()),
        Cell::from(s.state.clone()).style(state_style(&s.state)),
        Cell::from(mode).style(mode_style),
        Cell::from(short_duration(s.since_ms)),
        Cell::from(rate(t.connects_per_s)),
        Cell::from(failure),
        Cell::from(rate(t.rejects_per_s)),
        Cell::from(sparkline(
            t.connect_history.iter().copied(),
            SPARKLINE_WIDTH,
        ))
        .style(Style::new().fg(Color::Cyan)),
        Cell::from(short_duration(s.next_probe_ms)),
    ])
}

fn render_default_policy(frame: &mut Frame, model: &Model, area: Rect) {
    let Some(d) = &model.default_policy else {
        return;
    };
    let title = format!(
        " default policy: {} open, {} half_open, {} closed with failures ",
        d.open, d.half_open, d.closed
    );
    let lines: Vec<Line> = if d.tripped.is_empty() {
        vec![Line::from("every destination closed")]
    } else {
        d.tripped
            .iter()
            .map(|t| {
                Line::from(vec![
                    Span::raw(format!("{:<47} ", t.destination)),
                    Span::styled(format!("{:<9}", t.state), state_style(&t.state)),
                    Span::raw(format!(" for {}", short_duration(Some(t.since_ms)))),
                ])
            })
            .collect()
    };
    frame.render_widget(
        Paragraph::new(lines).block(Block::new().borders(Borders::ALL).title(title)),
        area,
    );
}

fn render_detail(frame: &mut Frame, model: &Model, area: Rect) {
    let Some(pane) = &model.detail else {
        return;
    };
    let title = format!(" {}: recent transitions, newest first ", pane.upstream);
    let lines: Vec<Line> = match &pane.detail {
        None => vec![Line::from("asking the daemon...")],
        Some(Err(why)) => vec![Line::styled(why.clone(), Style::new().fg(Color::Red))],
        Some(Ok(detail)) if detail.transitions.is_empty() => {
            vec![Line::from("no transitions since the daemon started")]
        }
        Some(Ok(detail)) => detail
            .transitions
            .iter()
            .rev()
            .map(|t| {
                let at = UNIX_EPOCH + Duration::from_millis(t.at_unix_ms);
                Line::from(vec![
                    Span::raw(format!("{}  ", humantime::format_rfc3339_seconds(at))),
                    Span::styled(t.from.clone(), state_style(&t.from)),
                    Span::raw(" -> "),
                    Span::styled(t.to.clone(), state_style(&t.to)),
                    Span::raw(format!("  ({})", t.cause)),
                ])
            })
            .collect(),
    };
    frame.render_widget(
        Paragraph::new(lines).block(Block::new().borders(Borders::ALL).title(title)),
        area,
    );
}

fn render_footer(frame: &mut Frame, model: &Model, area: Rect) {
    let health = model.health();
    let health_style = Style::new().add_modifier(Modifier::BOLD).fg(match health {
        Health::Healthy => Color::Green,
        Health::Degraded => Color::Yellow,
        Health::Critical => Color::Red,
    });
    let mut spans = vec![
        Span::raw("health: "),
        Span::styled(health.name(), health_style),
        Span::raw(format!(
            " ({} open, {} half_open)  sort: {}  ",
            model.count_in("open"),
            model.count_in("half_open"),
            model.sort.label()
        )),
    ];
    if model.typing_filter {
        spans.push(Span::styled(
            format!("filter: {}_", model.filter),
            Style::new().add_modifier(Modifier::REVERSED),
        ));
        spans.push(Span::raw("  Enter keep  Esc clear"));
    } else {
        if !model.filter.is_empty() {
            spans.push(Span::raw(format!("filter: {}  ", model.filter)));
        }
        spans.push(Span::styled(
            "q quit  s sort  / filter  ↑↓ select  Enter transitions",
            Style::new().fg(Color::DarkGray),
        ));
    }
    if let Some(error) = &model.error {
        spans = vec![
            Span::raw("health: "),
            Span::styled("unknown", Style::new().fg(Color::Red)),
            Span::styled(format!("  {error}"), Style::new().fg(Color::Red)),
        ];
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// A rate with one decimal below 10, whole above.
fn rate(per_s: f64) -> String {
    if per_s < 10.0 {
        format!("{per_s:.1}")
    } else {
        format!("{per_s:.0}")
    }
}

/// `12s`, `3m04s`, `2h05m`; `-` for none.
pub fn short_duration(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return "-".into();
    };
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// `samples` (oldest first) as block characters, newest at the right, `width`
/// wide: neighbours share a character (their highest) when there are more
/// samples than room, and the left is blank while there are fewer. Scaled to the
/// highest sample; a zero is the lowest block, any activity at least the next.
pub fn sparkline(samples: impl ExactSizeIterator<Item = f64>, width: usize) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let samples: Vec<f64> = samples.collect();
    if width == 0 {
        return String::new();
    }
    let per_char = samples.len().div_ceil(width).max(1);
    // Buckets end at the newest sample, so the newest is never shared unevenly.
    let buckets: Vec<f64> = samples
        .rchunks(per_char)
        .rev()
        .map(|chunk| chunk.iter().copied().fold(0.0, f64::max))
        .collect();
    let highest = buckets.iter().copied().fold(0.0, f64::max);
    let mut line = " ".repeat(width.saturating_sub(buckets.len()));
    for value in buckets {
        let level = if value <= 0.0 || highest <= 0.0 {
            0
        } else {
            1 + ((value / highest) * 6.0).round() as usize
        };
        line.push(BLOCKS[level.min(BLOCKS.len() - 1)]);
    }
    line
}
