//! Rate-limited warnings: one log line per interval for a condition that can hold for every
//! message, with the number of occurrences it stands for.
//!
//! Invariant: every occurrence is counted in exactly one line, except those after the last line
//! when occurrences stop (the condition's metric counts every one).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One log line per `interval` at most, counting the occurrences in between.
#[derive(Debug)]
pub struct LogEvery {
    /// Shortest time between two lines.
    interval: Duration,
    /// When the last line was logged, and the occurrences since then (not yet logged).
    state: Mutex<Option<(Instant, u64)>>,
}

impl LogEvery {
    /// A limiter that logs at most once per `interval`.
    #[must_use]
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(None),
        }
    }

    /// Records one occurrence at `now`. Returns `Some(n)` when a line is due, `n` being the
    /// occurrences it reports (this one included); `None` while the interval has not passed.
    pub(crate) fn note(&self, now: Instant) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *state {
            Some((last, pending)) if now.saturating_duration_since(last) < self.interval => {
                *state = Some((last, pending + 1));
                None
            }
            Some((_, pending)) => {
                *state = Some((now, 0));
                Some(pending + 1)
            }
            None => {
                *state = Some((now, 0));
                Some(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_occurrence_logs_then_one_line_per_interval_with_the_count() {
        let limit = LogEvery::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(limit.note(t0), Some(1));
        for s in 1..60 {
            assert_eq!(limit.note(t0 + Duration::from_secs(s)), None, "{s}");
        }
        // The line after the interval reports the 59 held back and itself.
        assert_eq!(limit.note(t0 + Duration::from_secs(60)), Some(60));
        assert_eq!(limit.note(t0 + Duration::from_secs(61)), None);
        assert_eq!(limit.note(t0 + Duration::from_secs(300)), Some(2));
    }

    #[test]
    fn a_clock_that_goes_backwards_holds_lines_back() {
        let limit = LogEvery::new(Duration::from_secs(60));
        let t0 = Instant::now() + Duration::from_secs(10);
        assert_eq!(limit.note(t0), Some(1));
        assert_eq!(limit.note(t0 - Duration::from_secs(5)), None);
    }
}
