//! Test counts, added up from libtest's result lines, on the host and in a guest.

/// Test counts for a suite.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl Tally {
    /// Adds a libtest result line (`test result: ok. 9 passed; 0 failed; ...`, found
    /// anywhere in `line`); returns its (passed, failed), or `None` for any other line.
    pub fn add_result_line(&mut self, line: &str) -> Option<(u64, u64)> {
        let at = line.find("test result: ")?;
        let (mut passed, mut failed) = (0, 0);
        for part in line[at + "test result: ".len()..].split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let n: u64 = n.parse().unwrap_or(0);
            match what {
                "passed" => passed += n,
                "failed" => failed += n,
                _ => {}
            }
        }
        self.passed += passed;
        self.failed += failed;
        Some((passed, failed))
    }

    /// A privileged test that skipped reports "ok" to libtest but also leaves a line
    /// in the skip log: those count as skipped, not passed.
    pub fn with_skips(self, skipped: u64) -> Tally {
        Tally {
            passed: self.passed.saturating_sub(skipped),
            failed: self.failed,
            skipped: self.skipped + skipped,
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_result_lines_and_ignores_the_rest() {
        let mut t = Tally::default();
        assert_eq!(
            t.add_result_line(
                "test result: ok. 9 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out"
            ),
            Some((9, 0))
        );
        assert_eq!(
            t.add_result_line("[ 12.3] x test result: FAILED. 3 passed; 2 failed; 0 ignored"),
            Some((3, 2))
        );
        assert_eq!(t.add_result_line("test foo ... ok"), None);
        assert_eq!(t.with_skips(4).to_string(), "8 passed, 2 failed, 4 skipped");
    }
}
