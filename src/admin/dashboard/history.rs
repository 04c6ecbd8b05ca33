//! The dashboard's memory of the last hour: one fixed-size ring buffer per subject, sampled
//! from the agent's own counters every [`SAMPLE_EVERY`].
//!
//! Invariant: bounded. Each ring holds at most [`SAMPLES`] points, allocated once; the set of
//! subjects is the agent's (fixed at start), so the whole history takes
//! `SAMPLES × (8 + subjects × size_of::<Point>())` bytes (about 24 KiB per subject), whatever
//! the traffic or the uptime.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::stats::StatsSnapshot;

/// How often a point is taken.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Points kept per subject: one hour.
pub(crate) const SAMPLES: usize = 720;

/// One subject at one sample: rates over the interval since the previous sample, gauges as
/// they were. `NaN` where nothing was measured (a mean over no request), shown as a gap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Point {
    /// Messages settled (acked, retried or dead-lettered) per second.
    pub rate: f32,
    /// Workers busy.
    pub busy: f32,
    /// Pool size.
    pub pool: f32,
    /// Deliveries held by the agent.
    pub in_flight: f32,
    /// Mean FPM runtime, milliseconds.
    pub runtime_ms: f32,
    /// Mean queue wait of the messages handed over (AMQP timestamp), seconds.
    pub wait_s: f32,
    /// Retries per minute.
    pub retries_pm: f32,
    /// Dead letters per minute.
    pub dead_pm: f32,
}

/// The history of every subject.
#[derive(Debug)]
pub(crate) struct History {
    /// Unix seconds of each sample (shared by every subject's ring).
    times: VecDeque<u64>,
    subjects: BTreeMap<String, Ring>,
}

#[derive(Debug)]
struct Ring {
    points: VecDeque<Point>,
    last: Option<(Instant, StatsSnapshot)>,
}

/// One subject's series, columnar (uPlot's layout).
#[derive(Debug, Default, Serialize)]
pub(crate) struct Series {
    /// See [`Point`].
    pub rate: Vec<f32>,
    /// See [`Point`].
    pub busy: Vec<f32>,
    /// See [`Point`].
    pub pool: Vec<f32>,
    /// See [`Point`].
    pub in_flight: Vec<f32>,
    /// See [`Point`].
    pub runtime_ms: Vec<f32>,
    /// See [`Point`].
    pub wait_s: Vec<f32>,
    /// See [`Point`].
    pub retries_pm: Vec<f32>,
    /// See [`Point`].
    pub dead_pm: Vec<f32>,
}

/// The history as `/dashboard/history.json` serves it.
#[derive(Debug, Serialize)]
pub(crate) struct HistoryView {
    /// Seconds between samples.
    pub every_seconds: u64,
    /// Unix seconds of each sample.
    pub t: Vec<u64>,
    /// Per subject.
    pub subjects: BTreeMap<String, Series>,
}

impl History {
    /// An empty history for these subjects, every ring allocated at its full size.
    #[must_use]
    pub(crate) fn new<'a>(subjects: impl IntoIterator<Item = &'a String>) -> Self {
        Self {
            times: VecDeque::with_capacity(SAMPLES),
            subjects: subjects
                .into_iter()
                .map(|name| {
                    let ring = Ring {
                        points: VecDeque::with_capacity(SAMPLES),
                        last: None,
                    };
                    (name.clone(), ring)
                })
                .collect(),
        }
    }

    /// Bytes the rings take at most (their allocations, which never grow).
    #[must_use]
    pub(crate) fn bytes(&self) -> usize {
        self.times.capacity() * size_of::<u64>()
            + self
                .subjects
                .values()
                .map(|r| r.points.capacity() * size_of::<Point>())
                .sum::<usize>()
    }

    /// Records one sample taken at `now` (`unix`: the same instant as Unix seconds). A subject
    /// not in `stats` gets a gap.
    pub(crate) fn record(
        &mut self,
        now: Instant,
        unix: u64,
        stats: &BTreeMap<String, StatsSnapshot>,
    ) {
        if self.times.len() == SAMPLES {
            self.times.pop_front();
        }
        self.times.push_back(unix);
        for (name, ring) in &mut self.subjects {
            let point = stats.get(name).map_or_else(Point::gap, |s| {
                let point = ring.last.map_or_else(
                    || Point::first(s),
                    |(at, before)| Point::between(&before, s, now.saturating_duration_since(at)),
                );
                ring.last = Some((now, *s));
                point
            });
            if ring.points.len() == SAMPLES {
                ring.points.pop_front();
            }
            ring.points.push_back(point);
        }
    }

    /// The latest point of `subject`.
    #[must_use]
    pub(crate) fn latest(&self, subject: &str) -> Option<Point> {
        self.subjects.get(subject)?.points.back().copied()
    }

    /// The whole history; only the rate series when `rates_only` (the overview's sparklines).
    #[must_use]
    pub(crate) fn view(&self, rates_only: bool) -> HistoryView {
        let subjects = self
            .subjects
            .iter()
            .map(|(name, ring)| {
                let column = |f: fn(&Point) -> f32| ring.points.iter().map(f).collect();
                let mut series = Series {
                    rate: column(|p| p.rate),
                    ..Series::default()
                };
                if !rates_only {
                    series.busy = column(|p| p.busy);
                    series.pool = column(|p| p.pool);
                    series.in_flight = column(|p| p.in_flight);
                    series.runtime_ms = column(|p| p.runtime_ms);
                    series.wait_s = column(|p| p.wait_s);
                    series.retries_pm = column(|p| p.retries_pm);
                    series.dead_pm = column(|p| p.dead_pm);
                }
                (name.clone(), series)
            })
            .collect();
        HistoryView {
            every_seconds: SAMPLE_EVERY.as_secs(),
            t: self.times.iter().copied().collect(),
            subjects,
        }
    }
}

#[allow(clippy::cast_precision_loss)]
impl Point {
    /// A point with no value (drawn as a gap).
    pub(super) fn gap() -> Self {
        Self {
            rate: f32::NAN,
            busy: f32::NAN,
            pool: f32::NAN,
            in_flight: f32::NAN,
            runtime_ms: f32::NAN,
            wait_s: f32::NAN,
            retries_pm: f32::NAN,
            dead_pm: f32::NAN,
        }
    }

    /// The first sample: gauges only, no interval to measure rates over.
    fn first(s: &StatsSnapshot) -> Self {
        Self {
            busy: s.busy as f32,
            pool: s.pool_size as f32,
            in_flight: s.in_flight as f32,
            ..Self::gap()
        }
    }

    fn between(before: &StatsSnapshot, after: &StatsSnapshot, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64().max(0.001);
        let delta = |f: fn(&StatsSnapshot) -> u64| f(after).saturating_sub(f(before)) as f64;
        let settled = delta(|s| s.acked) + delta(|s| s.retried) + delta(|s| s.dead_lettered);
        let mean = |sum: f64, n: f64| if n > 0.0 { sum / n } else { f64::NAN };
        #[allow(clippy::cast_possible_truncation)]
        Self {
            rate: (settled / secs) as f32,
            busy: after.busy as f32,
            pool: after.pool_size as f32,
            in_flight: after.in_flight as f32,
            runtime_ms: (mean(delta(|s| s.fpm_micros), delta(|s| s.fpm_requests)) / 1000.0) as f32,
            wait_s: mean(delta(|s| s.queue_wait_seconds), delta(|s| s.queue_waits)) as f32,
            retries_pm: (delta(|s| s.retried) * 60.0 / secs) as f32,
            dead_pm: (delta(|s| s.dead_lettered) * 60.0 / secs) as f32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(acked: u64, fpm_requests: u64, fpm_micros: u64) -> StatsSnapshot {
        let mut s = crate::stats::SubjectStats::default().snapshot();
        s.acked = acked;
        s.fpm_requests = fpm_requests;
        s.fpm_micros = fpm_micros;
        s.pool_size = 4;
        s
    }

    #[test]
    fn rates_come_from_counter_deltas() {
        let names = ["event".to_owned()];
        let mut h = History::new(&names);
        let t0 = Instant::now();
        let stats = |s| BTreeMap::from([("event".to_owned(), s)]);
        h.record(t0, 100, &stats(snapshot(10, 10, 10_000)));
        let first = h.latest("event").unwrap();
        assert!(first.rate.is_nan() && first.runtime_ms.is_nan());
        assert!((first.pool - 4.0).abs() < f32::EPSILON);
        h.record(t0 + SAMPLE_EVERY, 105, &stats(snapshot(60, 20, 60_000)));
        let p = h.latest("event").unwrap();
        assert!((p.rate - 10.0).abs() < 1e-3, "{p:?}");
        assert!((p.runtime_ms - 5.0).abs() < 1e-3, "{p:?}");
        assert!(p.wait_s.is_nan(), "no wait measured: a gap");
        let view = serde_json::to_value(h.view(true)).unwrap();
        assert_eq!(view["t"], serde_json::json!([100, 105]));
        assert_eq!(
            view["subjects"]["event"]["rate"][0],
            serde_json::Value::Null
        );
    }

    #[test]
    fn memory_is_bounded_whatever_the_uptime() {
        let names = ["event".to_owned(), "command".to_owned()];
        let mut h = History::new(&names);
        let before = h.bytes();
        let t0 = Instant::now();
        let s = BTreeMap::from([("event".to_owned(), snapshot(1, 1, 1))]);
        for i in 0..(3 * SAMPLES as u64) {
            h.record(t0 + SAMPLE_EVERY * i as u32, i, &s);
        }
        assert_eq!(h.bytes(), before, "no ring grew");
        assert_eq!(h.view(false).t.len(), SAMPLES);
        assert_eq!(h.view(false).subjects["command"].rate.len(), SAMPLES);
        // 720 × (8 + 2 × 32) bytes.
        assert_eq!(size_of::<Point>(), 32);
        assert!((SAMPLES * (8 + 2 * 32)..2 * SAMPLES * (8 + 2 * 32)).contains(&before));
    }
}
