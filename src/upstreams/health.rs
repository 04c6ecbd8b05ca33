//! An upstream's circuit breaker and the choice of the upstream for a request: pure, no I/O.

use std::time::{Duration, Instant};

use super::{PROBE_FIRST, PROBE_MAX};

/// The breaker of one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Requests go there.
    Up,
    /// Refused a connection; probed at `next_probe`.
    Down {
        /// When it was taken out.
        since: Instant,
        /// The current probe delay (doubles up to 5 s).
        delay: Duration,
        /// When the next probe is due.
        next_probe: Instant,
    },
}

impl Health {
    /// After a refused connection at `now`.
    #[must_use]
    pub(crate) fn tripped(self, now: Instant) -> Self {
        match self {
            Self::Up => Self::Down {
                since: now,
                delay: PROBE_FIRST,
                next_probe: now + PROBE_FIRST,
            },
            down @ Self::Down { .. } => down,
        }
    }

    /// After a failed probe at `now`: the next one later, up to 5 s apart.
    #[must_use]
    pub(crate) fn probe_failed(self, now: Instant) -> Self {
        match self {
            Self::Up => Self::Up,
            Self::Down { since, delay, .. } => {
                let delay = (delay * 2).min(PROBE_MAX);
                Self::Down {
                    since,
                    delay,
                    next_probe: now + delay,
                }
            }
        }
    }

    /// True while requests may go there.
    #[must_use]
    pub(crate) fn up(self) -> bool {
        self == Self::Up
    }
}

/// What [`pick`] needs to know of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Its breaker is closed.
    pub up: bool,
    /// Leases in use.
    pub leased: usize,
    /// Its capacity, when known.
    pub cap: Option<usize>,
}

/// The upstream for the next request: among those that are up and not in `skip`, the least
/// loaded (leases over capacity; leases alone when the capacity is unknown); ties go to the
/// first from `start` on, so equal upstreams take turns. `None` when every one is down.
#[must_use]
pub(crate) fn pick(views: &[View], start: usize, skip: &[bool]) -> Option<usize> {
    let n = views.len();
    let load = |v: &View| (v.leased * 1000) / v.cap.unwrap_or(1000).max(1);
    (0..n)
        .map(|k| (start + k) % n)
        .filter(|&i| views[i].up && !skip.get(i).copied().unwrap_or(false))
        .min_by_key(|&i| (load(&views[i]), (i + n - start % n) % n))
}
