//! Per-subject counters and gauges, updated by the actors and read by status output and tests.
//!
//! Invariant: observations. Decisions read few of them (the autoscaler: busy, in flight and
//! queued; readiness: consuming and paused); what an operator or the autoscaler sets lives in
//! `settings`, the next broker endpoint in the root's child record. Counters with a Prometheus
//! twin are written by `telemetry::events` only.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters of one subject. Relaxed atomics: each value is independent.
#[derive(Debug, Default)]
pub struct SubjectStats {
    /// Deliveries received from the broker.
    pub received: AtomicU64,
    /// Deliveries acked after PHP handled them successfully (not counting the acks that
    /// follow a confirmed retry or dead-letter copy).
    pub acked: AtomicU64,
    /// Attempts that failed and were republished to a delay queue.
    pub retried: AtomicU64,
    /// Messages published to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Deliveries returned to the queue unacked (nack/requeue, failed worker).
    pub requeued: AtomicU64,
    /// Deliveries currently held by the agent (dispatched or waiting for a worker).
    pub in_flight: AtomicU64,
    /// Workers currently handling a message.
    pub busy: AtomicU64,
    /// Messages ready in the queue at the last read (every `fpm.status_interval`; 0 when
    /// unread): the backlog the autoscaler sees besides `in_flight`.
    pub queued: AtomicU64,
    /// Messages waiting in the subject's delay queues (`retry.delays`) at the last read.
    pub delayed: AtomicU64,
    /// Messages in the subject's dead-letter queue (`Q.dead`) at the last read.
    pub dead: AtomicU64,
    /// Current pool size.
    pub pool_size: AtomicU64,
    /// Consumer (re)starts, the first one included.
    pub consumer_starts: AtomicU64,
    /// Worker actors replaced after a failure.
    pub worker_restarts: AtomicU64,
    /// FPM replies (or errors) timed, and their total time in microseconds: the dashboard's
    /// mean runtime per interval (the Prometheus histogram has the distribution).
    pub fpm_requests: AtomicU64,
    /// See `fpm_requests`.
    pub fpm_micros: AtomicU64,
    /// Deliveries whose AMQP timestamp gave a queue wait, the waits' sum and the last one
    /// (whole seconds).
    pub queue_waits: AtomicU64,
    /// See `queue_waits`.
    pub queue_wait_seconds: AtomicU64,
    /// See `queue_waits`.
    pub queue_wait_last_seconds: AtomicU64,
    /// True while the subject's consumer is connected and consuming.
    pub consuming: AtomicBool,
    /// True while consumption is paused because FPM is unreachable (circuit open) or an
    /// operator paused it.
    pub paused: AtomicBool,
    /// The broker node (`host:port`) the consumer is connected to.
    pub node: Mutex<Option<String>>,
    /// Messages wait in the queue longer than the subject's `wait_threshold` (an episode).
    pub long_wait: AtomicBool,
    /// With `batch_max = "auto"`: the last sizing decision, for `/status`.
    pub batch_sizing: Mutex<Option<AutoBatch>>,
    /// FPM request durations (ms) of the last minute, for `/status`'s p50 and p99.
    pub runtime_window: Window,
    /// Queue waits (s, from the AMQP timestamp) of the last minute, for p50 and p99.
    pub wait_window: Window,
}

/// The latest values of one measure, at most [`Window::CAPACITY`] of them (a fixed-size ring:
/// memory does not grow with traffic), for its quantiles over a recent span of time.
#[derive(Debug, Default)]
pub struct Window {
    values: Mutex<std::collections::VecDeque<(std::time::Instant, f32)>>,
}

/// p50 and p99 of a [`Window`] over its span, and how many values they are of.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Quantiles {
    /// The median.
    pub p50: f32,
    /// The 99th percentile (nearest rank).
    pub p99: f32,
    /// The largest: for queue waits, the oldest message handed over in the span.
    pub max: f32,
    /// Values in the span (at most `Window::CAPACITY`: a busy minute is its latest values).
    pub n: usize,
}

impl Window {
    /// Values kept: 1,024 (24 KiB per window: an `Instant` and an `f32` each).
    pub const CAPACITY: usize = 1024;

    /// Records `value`, observed at `at`.
    pub(crate) fn record(&self, at: std::time::Instant, value: f32) {
        let mut values = self.values.lock().expect("window lock");
        if values.len() == Self::CAPACITY {
            values.pop_front();
        }
        values.push_back((at, value));
    }

    /// p50 and p99 of the values observed within `span` before `now`; `None` without any.
    #[must_use]
    pub(crate) fn quantiles(
        &self,
        now: std::time::Instant,
        span: std::time::Duration,
    ) -> Option<Quantiles> {
        let mut recent: Vec<f32> = self
            .values
            .lock()
            .expect("window lock")
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) <= span)
            .map(|(_, v)| *v)
            .collect();
        if recent.is_empty() {
            return None;
        }
        recent.sort_by(f32::total_cmp);
        let rank = |q: f64| {
            // Nearest rank: the smallest value with at least q of the values at or below it.
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let r = (q * recent.len() as f64).ceil() as usize;
            recent[r.clamp(1, recent.len()) - 1]
        };
        Some(Quantiles {
            p50: rank(0.50),
            p99: rank(0.99),
            max: recent[recent.len() - 1],
            n: recent.len(),
        })
    }
}

/// A `batch_max = "auto"` decision as `/status` shows it (`batch::auto::Sizing`, copied by the
/// consumer that made it).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct AutoBatch {
    /// Messages in the request.
    pub size: usize,
    /// The bound that chose it (`backlog`, `latency`, `timeout`, `limit`, `unmeasured`,
    /// `probe`).
    pub bound: &'static str,
    /// Prefetched deliveries waiting.
    pub backlog: usize,
    /// Workers free to take them.
    pub free_workers: usize,
    /// Estimated cost of a request, ms.
    pub boot_ms: Option<f64>,
    /// Estimated cost of an entry, ms.
    pub entry_ms: Option<f64>,
}

impl SubjectStats {
    /// Adds one to a counter.
    pub(crate) fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts one from a gauge, never below zero.
    pub(crate) fn decr(gauge: &AtomicU64) {
        let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(1))
        });
    }

    /// Records the node the consumer is connected to (`None`: not connected).
    pub(crate) fn set_node(&self, node: Option<String>) {
        *self.node.lock().expect("node lock") = node;
    }

    /// Records a `batch_max = "auto"` decision; returns the one before.
    pub(crate) fn set_batch_sizing(&self, sizing: AutoBatch) -> Option<AutoBatch> {
        self.batch_sizing
            .lock()
            .expect("batch sizing lock")
            .replace(sizing)
    }

    /// The last `batch_max = "auto"` decision.
    #[must_use]
    pub(crate) fn batch_sizing(&self) -> Option<AutoBatch> {
        *self.batch_sizing.lock().expect("batch sizing lock")
    }

    /// The node the consumer is connected to.
    #[must_use]
    pub(crate) fn node(&self) -> Option<String> {
        self.node.lock().expect("node lock").clone()
    }

    /// A plain copy for status output.
    #[must_use]
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            received: get(&self.received),
            acked: get(&self.acked),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            requeued: get(&self.requeued),
            in_flight: get(&self.in_flight),
            busy: get(&self.busy),
            queued: get(&self.queued),
            delayed: get(&self.delayed),
            dead: get(&self.dead),
            pool_size: get(&self.pool_size),
            consumer_starts: get(&self.consumer_starts),
            worker_restarts: get(&self.worker_restarts),
            fpm_requests: get(&self.fpm_requests),
            fpm_micros: get(&self.fpm_micros),
            queue_waits: get(&self.queue_waits),
            queue_wait_seconds: get(&self.queue_wait_seconds),
            queue_wait_last_seconds: get(&self.queue_wait_last_seconds),
            consuming: self.consuming.load(Ordering::Relaxed),
            paused: self.paused.load(Ordering::Relaxed),
        }
    }
}

/// A copy of [`SubjectStats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[allow(missing_docs)]
pub struct StatsSnapshot {
    pub received: u64,
    pub acked: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub requeued: u64,
    pub in_flight: u64,
    pub busy: u64,
    pub queued: u64,
    pub delayed: u64,
    pub dead: u64,
    pub pool_size: u64,
    pub consumer_starts: u64,
    pub worker_restarts: u64,
    pub fpm_requests: u64,
    pub fpm_micros: u64,
    pub queue_waits: u64,
    pub queue_wait_seconds: u64,
    pub queue_wait_last_seconds: u64,
    pub consuming: bool,
    pub paused: bool,
}

#[cfg(test)]
mod window_tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn quantiles_over_the_span_by_nearest_rank() {
        let w = Window::default();
        let now = Instant::now();
        assert_eq!(w.quantiles(now, Duration::from_secs(60)), None);
        for v in 1..=100 {
            w.record(now, v as f32);
        }
        let q = w.quantiles(now, Duration::from_secs(60)).unwrap();
        assert_eq!((q.p50, q.p99, q.max, q.n), (50.0, 99.0, 100.0, 100));
        // Values older than the span do not count.
        let later = now + Duration::from_secs(61);
        assert_eq!(w.quantiles(later, Duration::from_secs(60)), None);
        w.record(later, 7.0);
        let q = w.quantiles(later, Duration::from_secs(60)).unwrap();
        assert_eq!((q.p50, q.p99, q.max, q.n), (7.0, 7.0, 7.0, 1));
    }

    #[test]
    fn the_ring_keeps_the_latest_values_only() {
        let w = Window::default();
        let now = Instant::now();
        for v in 0..(Window::CAPACITY + 500) {
            w.record(now, v as f32);
        }
        let q = w.quantiles(now, Duration::from_secs(60)).unwrap();
        assert_eq!(q.n, Window::CAPACITY);
        assert!(q.p50 >= 500.0, "{q:?}");
    }
}

#[cfg(test)]
mod size_tests {
    /// The memory the docs state for a window: 1,024 values of 24 bytes.
    #[test]
    fn a_window_value_is_24_bytes() {
        assert_eq!(std::mem::size_of::<(std::time::Instant, f32)>(), 24);
    }
}
