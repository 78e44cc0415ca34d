//! What every privileged integration test does first and last: get a lab (or skip),
//! and fail with the daemon's log attached, which is where the why usually is.
use std::path::Path;

use crate::{client::Attempt, lab::Lab, privileges};

/// A lab for test `tag`, or `None` when the test must skip (see [`privileges`]).
pub fn lab(tag: &str, lab_bin: &str) -> Option<Lab> {
    if !privileges::should_run(tag) {
        return None;
    }
    Some(Lab::new(tag, Path::new(lab_bin)).expect("building the lab"))
}

/// Fails the test with the daemon's log attached.
#[track_caller]
pub fn check(lab: &Lab, ok: bool, what: &str) {
    assert!(ok, "{what}\n--- daemon log ---\n{}", lab.daemon_log());
}

/// The outcome of each attempt, in order.
pub fn outcomes(attempts: &[Attempt]) -> Vec<&str> {
    attempts.iter().map(|a| a.outcome.as_str()).collect()
}
