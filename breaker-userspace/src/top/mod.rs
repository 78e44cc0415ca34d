//! `breaker top`: a live view of every breaker, polled from the control socket.
//!
//! - [`model`]: the state built from successive `status` answers, and the keys.
//! - [`view`]: draws the model into a ratatui frame.
//! - here: the loop that polls, reads keys and draws, and the terminal's restore.
pub mod model;
pub mod view;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use crossterm::event::{self, Event};

use crate::control::{
    client::{self, ClientError},
    protocol::{Detail, Request, Status},
};
use model::{Flow, Model};

/// The shortest poll interval: the daemon answers each poll from the kernel's
/// maps, so faster only costs.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// How long a poll waits for the daemon: a daemon busy with a reload is shown as
/// not answering rather than freezing the view (and its `q`).
const POLL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error(transparent)]
    Control(#[from] ClientError),
    #[error("the daemon refused: {0}")]
    Refused(String),
    #[error("the daemon's answer has no status")]
    NoStatus,
    #[error("the terminal: {0}")]
    Terminal(#[from] std::io::Error),
    #[error("breaker top needs a terminal, and its output is not one (for scripts: breaker status --json)")]
    NotATerminal,
}

/// Runs the view until `q`: asks the daemon once before touching the terminal,
/// so that with no daemon the caller gets the error and the terminal is as it was.
pub fn run(socket: &Path, interval: Duration) -> Result<(), TopError> {
    let interval = interval.max(MIN_INTERVAL);
    let mut model = Model::new(socket.display().to_string(), interval);
    model.update(status(socket, None)?, Instant::now());
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return Err(TopError::NotATerminal);
    }

    // Declared before the terminal so that it drops after it: the terminal
    // shows the cursor again, then this leaves raw mode and the alternate screen.
    // On a panic, ratatui's hook restores first; doing it twice is harmless.
    let _restore = RestoreTerminal;
    let mut terminal = ratatui::try_init()?;
    let mut next_poll = Instant::now() + interval;
    loop {
        terminal.draw(|frame| view::render(frame, &model))?;
        let wait = next_poll.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            let flow = match event::read()? {
                Event::Key(key) => model.on_key(key),
                _ => Flow::Continue,
            };
            match flow {
                Flow::Quit => return Ok(()),
                Flow::FetchDetail => fetch_detail(socket, &mut model),
                Flow::Continue => {}
            }
        }
        if Instant::now() >= next_poll {
            // A daemon that went away (a restart) is shown, not fatal: top
            // picks up again when it is back.
            match status(socket, None) {
                Ok(answer) => model.update(answer, Instant::now()),
                Err(e) => model.poll_failed(e.to_string()),
            }
            fetch_detail(socket, &mut model);
            next_poll = Instant::now() + interval;
        }
    }
}

/// The open detail pane's upstream, in detail (its transitions).
fn fetch_detail(socket: &Path, model: &mut Model) {
    let Some(name) = model.detail_upstream().map(str::to_string) else {
        return;
    };
    let detail = status(socket, Some(name.clone()))
        .map_err(|e| e.to_string())
        .and_then(|s| first_detail(s).ok_or_else(|| format!("no detail for {name}")));
    model.set_detail(&name, detail);
}

fn first_detail(status: Status) -> Option<Detail> {
    status.upstreams.into_iter().next()?.detail
}

fn status(socket: &Path, upstream: Option<String>) -> Result<Status, TopError> {
    let answer = client::call_within(socket, &Request::Status { upstream }, POLL_TIMEOUT)?;
    if !answer.ok {
        return Err(TopError::Refused(answer.error.unwrap_or_default()));
    }
    answer.status.ok_or(TopError::NoStatus)
}

/// Leaves raw mode and the alternate screen when dropped: on every way out of
/// [`run`], errors included.
struct RestoreTerminal;

impl Drop for RestoreTerminal {
    fn drop(&mut self) {
        // Nothing better to do with a terminal that cannot be restored.
        let _ = ratatui::try_restore();
    }
}

#[cfg(test)]
mod tests;
