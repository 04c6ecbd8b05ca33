//! `batch_max = "auto"`: the size of each batch from what the consumer observes.
//!
//! A batch amortises what PHP pays once per request (the framework's boot, the front
//! controller: `boot`) over its entries, at the price of the time an entry waits behind the ones
//! before it in the same request (`entry` each). Both are read off the streamed replies: the
//! first outcome line comes after `boot + entry`, the next ones `entry` apart. The size is then
//! the smallest of:
//! - **the backlog's share**: the prefetched deliveries spread over the free workers, so a
//!   trickle goes one message per request and a backlog goes in large batches;
//! - **the latency bound**: no message waits more than `batch_latency` behind the entries before
//!   it, `1 + batch_latency / entry`;
//! - **the timeout**: the expected duration, `boot + n × entry`, stays within half of
//!   `fpm.timeout`;
//! - `batch_limit`.
//!
//! Invariant: pure (no clock, no I/O): [`Auto::observe`] takes durations measured by the worker,
//! [`Auto::size`] is a function of them and of its arguments.

use std::time::Duration;

/// What a worker measured on a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Observed {
    /// One message, one request, handled: its whole duration, and whether the reply said the
    /// receiver takes batches (`X-Agent-Accepts-Batches` with this agent's batch version).
    Single {
        /// From the request's start to its end.
        took: Duration,
        /// The reply carried the acceptance header.
        batches: bool,
    },
    /// A batch: its outcome lines, the time to the first one and to the last one.
    Batch {
        /// Outcome lines read.
        lines: usize,
        /// From the request's start to the first outcome line.
        first: Duration,
        /// From the request's start to the last outcome line.
        last: Duration,
    },
    /// A request that ended before every entry had its outcome (`fpm.timeout`, a broken
    /// reply), or a single message that failed: the entry running at the end took at least
    /// from the last outcome line (or the request's start, less a request's own cost) to then.
    Cut {
        /// Outcome lines read.
        lines: usize,
        /// From the request's start to the first outcome line, if one came.
        first: Option<Duration>,
        /// From the request's start to the last outcome line, if one came.
        last: Option<Duration>,
        /// From the request's start to its end.
        ended: Duration,
    },
}

/// Which bound chose the size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The prefetched deliveries spread over the free workers.
    Backlog,
    /// `batch_latency` over the time per entry.
    Latency,
    /// Half of `fpm.timeout`.
    Timeout,
    /// `batch_limit`.
    Limit,
    /// Nothing observed yet: one message per request until a reply was timed.
    Unmeasured,
    /// No batch timed yet: two messages, to tell a request's cost from an entry's.
    Probe,
    /// The default `batch_max`, and the last reply handled alone did not say that the
    /// receiver takes batches: one message per request.
    Receiver,
}

/// One decision, with its inputs (logged and shown in `/status`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizing {
    /// Messages in the next request.
    pub size: usize,
    /// The bound that chose it.
    pub bound: Bound,
    /// Prefetched deliveries waiting.
    pub backlog: usize,
    /// Workers free to take them (the one asking included).
    pub free_workers: usize,
    /// Estimated cost of a request, milliseconds (None until measured).
    pub boot_ms: Option<f64>,
    /// Estimated cost of an entry, milliseconds (None until measured).
    pub entry_ms: Option<f64>,
}

impl Bound {
    /// Its name in `/status`.
    #[must_use]
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Backlog => "backlog",
            Self::Latency => "latency",
            Self::Timeout => "timeout",
            Self::Limit => "limit",
            Self::Unmeasured => "unmeasured",
            Self::Probe => "probe",
            Self::Receiver => "receiver",
        }
    }
}

impl Sizing {
    /// The decision as `/status` shows it.
    #[must_use]
    pub(crate) fn shown(&self) -> crate::stats::AutoBatch {
        crate::stats::AutoBatch {
            size: self.size,
            bound: self.bound.name(),
            backlog: self.backlog,
            free_workers: self.free_workers,
            boot_ms: self.boot_ms,
            entry_ms: self.entry_ms,
        }
    }
}

/// Whether batches wait for the receiver to say that it takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receiver {
    /// `batch_max = "auto"`: the operator says it does.
    Trusted,
    /// The default `batch_max`: one message per request until a handled reply carries
    /// `X-Agent-Accepts-Batches`, and again after one that does not.
    MustSay,
}

/// A subject's estimator.
#[derive(Debug, Clone, PartialEq)]
pub struct Auto {
    receiver: Receiver,
    /// The receiver takes batches, as far as the agent knows.
    accepted: bool,
    /// It did at least once (the prefetch a batch needs is kept from then on).
    ever_accepted: bool,
    limit: usize,
    latency: f64,
    timeout: f64,
    boot: Option<f64>,
    entry: Option<f64>,
}

/// Weight of a new measurement when the estimate grows (slower handlers are followed at once)
/// and when it shrinks (faster ones a little more carefully).
const RISE: f64 = 0.5;
const FALL: f64 = 0.25;
/// The smallest time per entry taken seriously (a clock's resolution, not a handler's cost).
const MIN_ENTRY: f64 = 1e-6;

fn ewma(old: Option<f64>, sample: f64) -> f64 {
    match old {
        None => sample,
        Some(old) => {
            let weight = if sample > old { RISE } else { FALL };
            old + weight * (sample - old)
        }
    }
}

impl Auto {
    /// An estimator for batches of at most `limit`, within `latency` and `timeout`.
    #[must_use]
    pub(crate) fn new(
        receiver: Receiver,
        limit: usize,
        latency: Duration,
        timeout: Duration,
    ) -> Self {
        Self {
            receiver,
            accepted: receiver == Receiver::Trusted,
            ever_accepted: receiver == Receiver::Trusted,
            limit: limit.max(1),
            latency: latency.as_secs_f64(),
            timeout: timeout.as_secs_f64(),
            boot: None,
            entry: None,
        }
    }

    /// True when requests may carry batches: `"auto"`, or the receiver said it takes them.
    #[must_use]
    pub(crate) fn batches_accepted(&self) -> bool {
        self.accepted
    }

    /// True once requests could carry batches: the prefetch a batch needs is kept from then on,
    /// so that a receiver that changes its answer (two versions behind one address during a
    /// deployment) does not make the consumer re-consume at each change.
    #[must_use]
    pub(crate) fn batches_seen(&self) -> bool {
        self.ever_accepted
    }

    /// Takes in the measurement of a request sized before anything was timed
    /// ([`Bound::Unmeasured`]). Those are the first requests of a consumer, sent one per free
    /// worker, and they meet FPM's children cold: the first request a child serves loads the
    /// front controller and the handler, and takes many times a warm one. Until a batch has been
    /// timed, it is the best the estimator has; after that, its time says more about the child
    /// than about the handler, and only whether the receiver takes batches is kept. Without
    /// this, the cold replies of a larger pool, arriving after the probe, had the estimate at
    /// 25–50 ms per entry for a handler of 0.1 ms, and the batches at 2–5 for dozens of requests.
    pub(crate) fn observe_blind(&mut self, observed: Observed) {
        match observed {
            Observed::Single { batches, .. } if self.boot.is_some() => self.receiver_said(batches),
            other => self.observe(other),
        }
    }

    /// A handled single reply said whether the receiver takes batches (the default
    /// `batch_max` follows it; `"auto"` trusts the operator).
    fn receiver_said(&mut self, batches: bool) {
        if self.receiver == Receiver::MustSay {
            self.accepted = batches;
            self.ever_accepted |= batches;
        }
    }

    /// Takes a measurement in.
    pub(crate) fn observe(&mut self, observed: Observed) {
        if let Observed::Single { batches, .. } = observed {
            self.receiver_said(batches);
        }
        match observed {
            Observed::Batch { lines, first, last } if lines >= 2 => {
                #[allow(clippy::cast_precision_loss)]
                let gap = last.saturating_sub(first).as_secs_f64() / (lines - 1) as f64;
                let gap = gap.max(MIN_ENTRY);
                let boot = (first.as_secs_f64() - gap).max(0.0);
                if self.boot.is_none() {
                    // The first batch: the single requests before it counted the request's own
                    // cost as the entry's; start over from what it shows.
                    self.entry = Some(gap);
                    self.boot = Some(boot);
                } else {
                    self.entry = Some(ewma(self.entry, gap));
                    self.boot = Some(ewma(self.boot, boot));
                }
            }
            Observed::Cut {
                lines,
                first,
                last,
                ended,
            } => {
                if let (Some(first), Some(last)) = (first, last) {
                    self.observe(Observed::Batch { lines, first, last });
                }
                // Lower bounds: they raise the estimate, never lower it. Without them a batch
                // cut by the timeout taught nothing, and the next one of the same size was cut
                // again. The entry running at the end took at least since the last line; and
                // the entries that started (the answered ones and it) took at least the
                // request's time less its own cost, together.
                let boot = self.boot.unwrap_or(0.0);
                let since = last.map_or(boot, |l| l.as_secs_f64());
                let running = ended.as_secs_f64() - since;
                #[allow(clippy::cast_precision_loss)]
                let started = (ended.as_secs_f64() - boot) / (lines + 1) as f64;
                let at_least = running.max(started).max(MIN_ENTRY);
                if self.entry.is_none_or(|entry| entry < at_least) {
                    self.entry = Some(at_least);
                }
            }
            Observed::Batch { first: total, .. } | Observed::Single { took: total, .. } => {
                // One entry: its time is the request's less what a request costs by itself
                // (unknown until a batch was timed: then the whole of it).
                let boot = self.boot.unwrap_or(0.0);
                let entry = (total.as_secs_f64() - boot).max(MIN_ENTRY);
                self.entry = Some(ewma(self.entry, entry));
            }
        }
    }

    /// The size of the next request for a backlog of `backlog` deliveries and `free_workers`
    /// workers free to take them (at least the one asking).
    #[must_use]
    pub(crate) fn size(&self, backlog: usize, free_workers: usize) -> Sizing {
        let sizing = |size: usize, bound| Sizing {
            size: size.max(1),
            bound,
            backlog,
            free_workers,
            boot_ms: self.boot.map(|s| s * 1e3),
            entry_ms: self.entry.map(|s| s * 1e3),
        };
        if !self.accepted {
            return sizing(1, Bound::Receiver);
        }
        let Some(entry) = self.entry else {
            return sizing(1, Bound::Unmeasured);
        };
        let share = backlog.div_ceil(free_workers.max(1)).max(1);
        // Single requests time a request and its entry together: a slow framework boot would
        // pass for a slow handler, and batches would never start. Two entries tell them apart.
        let Some(boot) = self.boot else {
            return if share >= 2 && self.limit >= 2 {
                sizing(2, Bound::Probe)
            } else {
                sizing(1, Bound::Backlog)
            };
        };
        let latency = cap(1.0 + self.latency / entry);
        let timeout = cap((self.timeout / 2.0 - boot) / entry);
        [
            (share, Bound::Backlog),
            (latency, Bound::Latency),
            (timeout, Bound::Timeout),
            (self.limit, Bound::Limit),
        ]
        .into_iter()
        .min_by_key(|(n, _)| *n)
        .map_or_else(|| sizing(1, Bound::Unmeasured), |(n, b)| sizing(n, b))
    }
}

/// A count from a ratio: rounded down, at least 1, saturating.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn cap(ratio: f64) -> usize {
    if ratio.is_nan() || ratio < 1.0 {
        1
    } else if ratio >= 1e9 {
        1_000_000_000
    } else {
        // A hair over, so that 19.999… from a clean division counts as the 20 it is.
        (ratio + 1e-9).floor() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: f64) -> Duration {
        Duration::from_secs_f64(n / 1e3)
    }

    /// A message handled alone in `took`, by a receiver that says it takes batches.
    fn single(took: Duration) -> Observed {
        Observed::Single {
            took,
            batches: true,
        }
    }

    /// An estimator that measured `boot` and `entry` (milliseconds) on a batch of 10.
    fn measured(boot: f64, entry: f64) -> Auto {
        let mut a = Auto::new(Receiver::Trusted, 50, ms(100.0), Duration::from_secs(30));
        a.observe(Observed::Batch {
            lines: 10,
            first: ms(boot + entry),
            last: ms(boot + 10.0 * entry),
        });
        a
    }

    #[test]
    fn one_message_per_request_until_a_reply_was_timed() {
        let a = Auto::new(Receiver::Trusted, 50, ms(100.0), Duration::from_secs(30));
        let s = a.size(1000, 1);
        assert_eq!((s.size, s.bound), (1, Bound::Unmeasured));
    }

    #[test]
    fn single_requests_alone_probe_with_two_when_a_backlog_allows() {
        let mut a = Auto::new(Receiver::Trusted, 50, ms(100.0), Duration::from_secs(30));
        // 150 ms per request: as an entry's cost that would mean one by one for ever.
        a.observe(single(ms(150.0)));
        assert_eq!(a.size(1, 2).size, 1, "a trickle stays single");
        let s = a.size(100, 2);
        assert_eq!((s.size, s.bound), (2, Bound::Probe));
        // The probe shows the 150 ms are the request's, not the entries'.
        a.observe(Observed::Batch {
            lines: 2,
            first: ms(150.5),
            last: ms(151.0),
        });
        let s = a.size(100, 2);
        assert_eq!((s.size, s.bound), (50, Bound::Backlog), "{s:?}");
    }

    /// The first requests go out before anything was timed, one per free worker, and meet
    /// FPM's children cold. Their replies, when they come after a batch was timed, leave the
    /// entry's cost alone (only the receiver's word is kept); before that, they are all there is.
    #[test]
    fn a_blind_requests_time_counts_only_until_a_batch_was_timed() {
        let mut a = Auto::new(Receiver::Trusted, 50, ms(100.0), Duration::from_secs(30));
        // A cold child: 60 ms for the first request, sized before anything was timed: taken.
        a.observe_blind(single(ms(60.0)));
        assert!((a.size(400, 1).entry_ms.unwrap() - 60.0).abs() < 1e-6);
        assert_eq!(a.size(400, 1).bound, Bound::Probe);
        // The probe: 3 ms per request, 0.1 ms per entry.
        a.observe(Observed::Batch {
            lines: 2,
            first: ms(3.1),
            last: ms(3.2),
        });
        assert_eq!(a.size(400, 1).size, 50);
        // Another cold child's first request, sized blind, replies now (40 ms): the size stays.
        a.observe_blind(single(ms(40.0)));
        let s = a.size(400, 1);
        assert_eq!((s.size, s.bound), (50, Bound::Limit), "{s:?}");
        assert!((s.entry_ms.unwrap() - 0.1).abs() < 1e-6, "{s:?}");
        // The same time from a request the estimator sized is a slower handler: followed.
        a.observe(single(ms(40.0)));
        let s = a.size(400, 1);
        assert_eq!((s.size, s.bound), (6, Bound::Latency), "{s:?}");

        // The default batch_max: a blind reply after the probe still says whether the receiver
        // takes batches.
        let mut a = Auto::new(Receiver::MustSay, 50, ms(100.0), Duration::from_secs(30));
        a.observe_blind(single(ms(60.0)));
        a.observe(Observed::Batch {
            lines: 2,
            first: ms(3.1),
            last: ms(3.2),
        });
        assert!(a.batches_accepted());
        a.observe_blind(Observed::Single {
            took: ms(40.0),
            batches: false,
        });
        assert!(!a.batches_accepted(), "the receiver's word is kept");
        assert!((a.size(0, 1).entry_ms.unwrap() - 0.1).abs() < 1e-6);
    }

    #[test]
    fn a_batch_reply_splits_boot_and_entry() {
        let a = measured(20.0, 0.5);
        let s = a.size(1000, 1);
        assert!((s.boot_ms.unwrap() - 20.0).abs() < 1e-6, "{s:?}");
        assert!((s.entry_ms.unwrap() - 0.5).abs() < 1e-6, "{s:?}");
    }

    #[test]
    fn table() {
        // (boot ms, entry ms, backlog, free workers) -> (size, bound)
        let rows: [(f64, f64, usize, usize, usize, Bound); 9] = [
            // A trickle: one message, idle workers: one per request.
            (20.0, 0.5, 1, 4, 1, Bound::Backlog),
            (20.0, 0.5, 3, 4, 1, Bound::Backlog),
            // A backlog shared by the free workers.
            (20.0, 0.5, 100, 4, 25, Bound::Backlog),
            (20.0, 0.5, 101, 4, 26, Bound::Backlog),
            // A deep backlog: the limit.
            (20.0, 0.5, 10_000, 2, 50, Bound::Limit),
            // Slow entries: the latency bound (1 + 100 / 10).
            (20.0, 10.0, 10_000, 2, 11, Bound::Latency),
            // Slower than the latency bound: one by one.
            (20.0, 200.0, 10_000, 2, 1, Bound::Latency),
            // Fast entries but a request near half the timeout: (15 s - 14 s) / 0.5 ms.
            (14_000.0, 0.5, 10_000, 1, 50, Bound::Limit),
            (14_990.0, 0.5, 10_000, 1, 20, Bound::Timeout),
        ];
        for (boot, entry, backlog, free, size, bound) in rows {
            let mut a = measured(boot, entry);
            a.latency = 0.1;
            let s = a.size(backlog, free);
            assert_eq!(
                (s.size, s.bound),
                (size, bound),
                "boot {boot} entry {entry} backlog {backlog} free {free}: {s:?}"
            );
        }
    }

    #[test]
    fn single_requests_after_a_batch_keep_the_boot_and_follow_the_entry() {
        let mut a = measured(20.0, 0.5);
        // The handler turned slow: one message takes 20 + 200 ms.
        a.observe(single(ms(220.0)));
        let e = a.size(0, 1).entry_ms.unwrap();
        assert!(e > 90.0, "a slower handler is followed at once: {e}");
        assert_eq!(a.size(10_000, 1).size, 1);
        // And fast again: back to large batches within a few requests.
        let mut n = 0;
        while a.size(10_000, 1).size < 50 {
            a.observe(single(ms(20.5)));
            n += 1;
            assert!(n < 60, "never grew back");
        }
        assert!(n <= 40, "grew back after {n} requests");
    }

    #[test]
    fn a_handler_that_turns_slow_shrinks_the_next_batch() {
        // 10 ms per entry: 11 per batch (100 ms latency).
        let mut a = measured(20.0, 10.0);
        assert_eq!(a.size(10_000, 1).size, 11);
        // That batch of 11 ran at 200 ms per entry.
        a.observe(Observed::Batch {
            lines: 11,
            first: ms(220.0),
            last: ms(220.0 + 10.0 * 200.0),
        });
        assert_eq!(a.size(10_000, 1).size, 1);
    }

    #[test]
    fn a_request_cut_by_the_timeout_shows_the_entry_was_at_least_that_slow() {
        // 10 ms per entry: 11 per batch. The handler turns slow; the batch of 11 answers two
        // entries at 10 ms, then the third runs until fpm.timeout (1.5 s) cuts the request.
        let mut a = measured(20.0, 10.0);
        a.timeout = 1.5;
        assert_eq!(a.size(10_000, 1).size, 11);
        a.observe(Observed::Cut {
            lines: 2,
            first: Some(ms(30.0)),
            last: Some(ms(40.0)),
            ended: ms(1_500.0),
        });
        let s = a.size(10_000, 1);
        assert!(s.entry_ms.unwrap() >= 1_460.0, "{s:?}");
        assert_eq!(s.size, 1, "{s:?}");
        // No line at all: the entry ran from the start, less a request's own cost.
        let mut a = measured(20.0, 10.0);
        a.observe(Observed::Cut {
            lines: 0,
            first: None,
            last: None,
            ended: ms(1_000.0),
        });
        assert!(a.size(0, 1).entry_ms.unwrap() >= 980.0 - 1e-6);
        // A line just before the cut: the eleven entries that started took the 1.5 s.
        let mut a = measured(20.0, 10.0);
        a.timeout = 1.5;
        a.observe(Observed::Cut {
            lines: 10,
            first: Some(ms(30.0)),
            last: Some(ms(1_499.0)),
            ended: ms(1_500.0),
        });
        let s = a.size(10_000, 1);
        assert!(s.entry_ms.unwrap() >= (1_500.0 - 20.0) / 11.0, "{s:?}");
        assert_eq!(s.size, 1, "{s:?}");
        // A request cut early says little: it never lowers the estimate.
        let mut a = measured(20.0, 10.0);
        a.observe(Observed::Cut {
            lines: 0,
            first: None,
            last: None,
            ended: ms(1.0),
        });
        assert!((a.size(0, 1).entry_ms.unwrap() - 10.0).abs() < 1e-6);
    }

    #[test]
    fn cap_is_total() {
        assert_eq!(cap(f64::NAN), 1);
        assert_eq!(cap(-3.0), 1);
        assert_eq!(cap(0.5), 1);
        assert_eq!(cap(2.9), 2);
        assert_eq!(cap(f64::INFINITY), 1_000_000_000);
    }

    /// The default `batch_max`: one message per request, whatever the backlog, until a handled
    /// reply says the receiver takes batches; back to one after a reply that does not say so.
    #[test]
    fn the_default_waits_for_the_receiver_to_say_it_takes_batches() {
        let mut a = Auto::new(Receiver::MustSay, 50, ms(100.0), Duration::from_secs(30));
        assert!(!a.batches_accepted() && !a.batches_seen());
        assert_eq!(a.size(1000, 1).bound, Bound::Receiver);
        for _ in 0..5 {
            a.observe(Observed::Single {
                took: ms(10.0),
                batches: false,
            });
            let s = a.size(1000, 1);
            assert_eq!((s.size, s.bound), (1, Bound::Receiver));
        }
        a.observe(single(ms(10.0)));
        assert!(a.batches_accepted());
        let s = a.size(1000, 1);
        assert_eq!(
            (s.size, s.bound),
            (2, Bound::Probe),
            "then sized as \"auto\""
        );
        a.observe(Observed::Batch {
            lines: 2,
            first: ms(8.0),
            last: ms(10.0),
        });
        assert_eq!(a.size(1000, 1).bound, Bound::Limit);
        // A batch reply says nothing about it; a handled single reply without it does.
        a.observe(Observed::Single {
            took: ms(10.0),
            batches: false,
        });
        assert!(!a.batches_accepted());
        assert_eq!(a.size(1000, 1).bound, Bound::Receiver);
        assert!(a.batches_seen(), "the prefetch stays");
    }

    /// `batch_max = "auto"` trusts the operator: the header is not needed.
    #[test]
    fn auto_does_not_wait_for_the_header() {
        let mut a = Auto::new(Receiver::Trusted, 50, ms(100.0), Duration::from_secs(30));
        a.observe(Observed::Single {
            took: ms(10.0),
            batches: false,
        });
        assert!(a.batches_accepted());
        assert_eq!(a.size(1000, 1).bound, Bound::Probe);
    }
}
