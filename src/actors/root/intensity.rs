//! Restart intensity (OTP's `MaxR` in `MaxT`) and the restart backoff of one subject, as pure
//! values: the root actor only feeds them what happened and when.
//!
//! Invariant: pure. The clock is the caller's.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the root does after a consumer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Next {
    /// Start it again after this (un-jittered) delay.
    RestartAfter(Duration),
    /// More than `max_restarts` crashes within `window`: give up (this many crashes).
    GiveUp(usize),
}

/// The restart bookkeeping of one subject; survives its consumer incarnations.
#[derive(Debug, Clone)]
pub(super) struct Intensity {
    /// Times of recent crashes, within the window.
    crashes: VecDeque<Instant>,
    /// The next restart delay.
    backoff: Duration,
}

/// The `[agent]` settings it follows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    pub(super) max_restarts: u32,
    pub(super) window: Duration,
    pub(super) backoff: Duration,
    pub(super) backoff_max: Duration,
}

impl Intensity {
    pub(super) fn new(policy: &Policy) -> Self {
        Self {
            crashes: VecDeque::new(),
            backoff: policy.backoff,
        }
    }

    /// A consumer that started at `started` ended at `now`; `crash` says whether it counts.
    /// A consumer that ran longer than the window earns a fresh backoff; a crash counts toward
    /// the intensity; the backoff doubles, up to its cap, for the restart after this one.
    pub(super) fn ended(
        &mut self,
        policy: &Policy,
        started: Option<Instant>,
        crash: bool,
        now: Instant,
    ) -> Next {
        if started.is_some_and(|t| now.saturating_duration_since(t) > policy.window) {
            self.backoff = policy.backoff;
        }
        if crash {
            self.crashes.push_back(now);
            while self
                .crashes
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > policy.window)
            {
                self.crashes.pop_front();
            }
            if self.crashes.len() > policy.max_restarts as usize {
                return Next::GiveUp(self.crashes.len());
            }
        }
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(policy.backoff_max);
        Next::RestartAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        max_restarts: 3,
        window: Duration::from_secs(60),
        backoff: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
    };

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn more_than_max_restarts_crashes_in_the_window_give_up() {
        let t0 = Instant::now();
        let mut i = Intensity::new(&POLICY);
        for (n, delay) in [100u64, 200, 400].into_iter().enumerate() {
            let now = t0 + secs(n as u64);
            assert_eq!(
                i.ended(&POLICY, Some(now), true, now),
                Next::RestartAfter(Duration::from_millis(delay))
            );
        }
        assert_eq!(i.ended(&POLICY, None, true, t0 + secs(3)), Next::GiveUp(4));
    }

    #[test]
    fn old_crashes_leave_the_window_and_unreachable_never_counts() {
        let t0 = Instant::now();
        let mut i = Intensity::new(&POLICY);
        for n in 0..3 {
            i.ended(&POLICY, None, true, t0 + secs(n));
        }
        // 61 s after the first crash, it has left the window: 3 in it, not 4.
        assert!(matches!(
            i.ended(&POLICY, None, true, t0 + secs(61)),
            Next::RestartAfter(_)
        ));
        // However many times the broker is unreachable, the agent never gives up for it.
        for n in 0..100 {
            assert!(matches!(
                i.ended(&POLICY, None, false, t0 + secs(62 + n)),
                Next::RestartAfter(_)
            ));
        }
    }

    #[test]
    fn the_backoff_doubles_to_its_cap_and_resets_after_a_long_run() {
        let t0 = Instant::now();
        let mut i = Intensity::new(&POLICY);
        let delays: Vec<Duration> = (0..6)
            .map(|n| match i.ended(&POLICY, None, false, t0 + secs(n)) {
                Next::RestartAfter(d) => d,
                Next::GiveUp(_) => panic!("unreachable does not count"),
            })
            .collect();
        let ms = |v: u64| Duration::from_millis(v);
        assert_eq!(
            delays,
            [ms(100), ms(200), ms(400), ms(800), secs(1), secs(1)]
        );
        // A consumer that ran longer than the window starts again from the first delay.
        let started = t0 + secs(10);
        assert_eq!(
            i.ended(&POLICY, Some(started), false, started + secs(61)),
            Next::RestartAfter(ms(100))
        );
    }
}
