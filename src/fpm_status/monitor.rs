//! The FPM monitor: a task that reads the status page every `fpm.status_interval` on a
//! connection of its own, the gauges it feeds, and the watch that logs each request running
//! past `fpm.slow_after` once, naming the FPM child that runs it.
//!
//! Invariant: reading the status page never blocks or fails a message. The read takes a lease
//! of its upstream's connection pool like a message does (`upstreams`), so it counts against
//! FPM's capacity and its connection is closed like theirs once unused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{FpmProcess, FpmStatus, StatusError, StatusState};
use crate::config::Config;
use crate::telemetry::metrics::SubjectLabel;
use crate::upstreams::{Upstream, UpstreamMetrics, Upstreams};

/// Largest status page read: `full` costs ~330 bytes per child.
const MAX_STATUS_BYTES: usize = 4 * 1024 * 1024;

/// `upstream` label of the FPM gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    /// The FPM address (`fpm.address`).
    pub upstream: String,
}

/// The last read of the status page.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// What `/status` shows.
    pub shown: StatusState,
    /// The parsed page, when the last read succeeded.
    pub status: Option<Arc<FpmStatus>>,
    /// When the last read finished (successful or not).
    pub read_at: Option<Instant>,
    /// When the last successful read finished.
    pub last_ok: Option<Instant>,
}

/// A request the worker has sent to FPM and not yet finished.
struct Running {
    subject: String,
    message_id: String,
    started: Instant,
    reported: bool,
    /// Index of the upstream it went to (in `fpm.address`).
    upstream: usize,
}

/// FPM's status as last read (one [`Snapshot`] per upstream), the requests in flight, the
/// upstreams' connection pools, and their gauges and counters.
pub struct Monitor {
    /// One read per upstream, in `fpm.address` order.
    state: watch::Sender<Vec<Snapshot>>,
    running: Mutex<HashMap<u64, Running>>,
    next: AtomicU64,
    /// `fpm_slow_messages{subject}`: requests that ran past `fpm.slow_after`.
    pub slow: Family<SubjectLabel, Counter>,
    up: Family<UpstreamLabel, Gauge>,
    gauges: [(&'static str, &'static str, Family<UpstreamLabel, Gauge>); 7],
    /// The upstreams of the `[fpm]` in force (replaced when a reload changes it).
    upstreams: Mutex<Option<Arc<Upstreams>>>,
    upstream_up: Family<UpstreamLabel, Gauge>,
    upstream_in_flight: Family<UpstreamLabel, Gauge>,
    upstream_requests: Family<UpstreamLabel, Counter>,
    upstream_refused: Family<UpstreamLabel, Counter>,
    backlog_waits: Family<UpstreamLabel, Counter>,
}

impl Default for Monitor {
    fn default() -> Self {
        Self::new()
    }
}

impl Monitor {
    /// A monitor that has read nothing yet.
    #[must_use]
    pub fn new() -> Self {
        let g = Family::default;
        Self {
            state: watch::Sender::new(vec![Snapshot::empty(String::new(), "not_configured")]),
            upstreams: Mutex::default(),
            upstream_up: Family::default(),
            upstream_in_flight: Family::default(),
            upstream_requests: Family::default(),
            upstream_refused: Family::default(),
            backlog_waits: Family::default(),
            running: Mutex::default(),
            next: AtomicU64::new(0),
            slow: Family::default(),
            up: Family::default(),
            gauges: [
                (
                    "fpm_max_children",
                    "FPM's pm.max_children (static pools, or fpm.max_children)",
                    g(),
                ),
                (
                    "fpm_active_processes",
                    "FPM children handling a request (the status request not counted)",
                    g(),
                ),
                (
                    "fpm_idle_processes",
                    "FPM children waiting for a request",
                    g(),
                ),
                (
                    "fpm_listen_queue",
                    "Requests waiting in FPM's listen backlog for a free child",
                    g(),
                ),
                (
                    "fpm_max_children_reached",
                    "Times FPM reached pm.max_children (FPM's counter)",
                    g(),
                ),
                (
                    "fpm_slow_requests",
                    "Requests past FPM's request_slowlog_timeout (FPM's counter)",
                    g(),
                ),
                (
                    "fpm_accepted_connections",
                    "Connections FPM accepted (FPM's counter)",
                    g(),
                ),
            ],
        }
    }

    /// Registers the FPM gauges and counters.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "fpm_status_up",
            "1 while FPM's status page is read successfully",
            self.up.clone(),
        );
        for (name, help, family) in &self.gauges {
            registry.register(*name, *help, family.clone());
        }
        registry.register(
            "fpm_slow_messages",
            "Requests that ran past fpm.slow_after",
            self.slow.clone(),
        );
        registry.register(
            "fpm_upstream_up",
            "1 while the upstream's circuit breaker is closed (it accepts connections)",
            self.upstream_up.clone(),
        );
        registry.register(
            "fpm_upstream_in_flight",
            "Requests and status reads in flight on the upstream (capped by its max_children)",
            self.upstream_in_flight.clone(),
        );
        registry.register(
            "fpm_upstream_requests",
            "Requests sent to the upstream",
            self.upstream_requests.clone(),
        );
        registry.register(
            "fpm_upstream_refused",
            "Connections the upstream refused",
            self.upstream_refused.clone(),
        );
        registry.register(
            "fpm_backlog_waits",
            "Requests with no reply byte at fpm.timeout while FPM's listen queue was not empty, given more time instead of a retry",
            self.backlog_waits.clone(),
        );
    }

    /// The upstreams of `config`'s `[fpm]`: the ones in use when they serve the same `[fpm]`,
    /// else new ones (a reload that changes `[fpm]` restarts the consumers, whose workers then
    /// take the new ones).
    pub fn upstreams_for(&self, config: &Config) -> Arc<Upstreams> {
        let mut current = self.upstreams.lock().expect("upstreams lock");
        if let Some(u) = current.as_ref().filter(|u| u.serves(config)) {
            return u.clone();
        }
        let upstreams = Arc::new(Upstreams::new(config, |label| UpstreamMetrics {
            up: self.upstream_up.get_or_create(label).clone(),
            in_flight: self.upstream_in_flight.get_or_create(label).clone(),
            requests: self.upstream_requests.get_or_create(label).clone(),
            refused: self.upstream_refused.get_or_create(label).clone(),
            backlog_waits: self.backlog_waits.get_or_create(label).clone(),
        }));
        *current = Some(upstreams.clone());
        upstreams
    }

    /// The upstreams in use, if any were made yet.
    #[must_use]
    pub fn upstreams(&self) -> Option<Arc<Upstreams>> {
        self.upstreams.lock().expect("upstreams lock").clone()
    }

    /// The last read of the first upstream's status page; changes are announced to
    /// [`Monitor::subscribe`].
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        self.snapshots().swap_remove(0)
    }

    /// The last read of every upstream's status page, in `fpm.address` order.
    #[must_use]
    pub fn snapshots(&self) -> Vec<Snapshot> {
        let mut snaps = self.state.borrow().clone();
        for snap in &mut snaps {
            snap.shown.last_ok_ms_ago = snap
                .last_ok
                .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
        }
        snaps
    }

    /// A receiver woken after every read.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Vec<Snapshot>> {
        self.state.subscribe()
    }

    /// Notes a request sent to FPM until the returned guard drops.
    #[must_use]
    pub fn running(&self, subject: &str, message_id: &str) -> RunningGuard<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.running.lock().expect("running lock").insert(
            id,
            Running {
                subject: subject.to_owned(),
                message_id: message_id.to_owned(),
                started: Instant::now(),
                reported: false,
                upstream: 0,
            },
        );
        RunningGuard { monitor: self, id }
    }

    fn record(
        &self,
        index: usize,
        address: &str,
        path: &str,
        config: &Config,
        result: Result<FpmStatus, StatusError>,
    ) {
        let now = Instant::now();
        let (previous, last_ok) = {
            let reads = self.state.borrow();
            let read = reads.get(index);
            (
                read.map_or("pending", |r| r.shown.state),
                read.and_then(|r| r.last_ok),
            )
        };
        let label = UpstreamLabel {
            upstream: address.to_owned(),
        };
        let snapshot = match result {
            Ok(status) => {
                if previous != "ok" {
                    info!(upstream = address, "FPM status page read");
                }
                let shown = StatusState::from_status(
                    address.to_owned(),
                    &status,
                    path,
                    config.fpm.max_children,
                );
                let values = [
                    shown.max_children.unwrap_or(0),
                    shown.active.unwrap_or(0),
                    status.idle(path),
                    status.listen_queue,
                    status.max_children_reached,
                    status.slow_requests,
                    status.accepted_conn,
                ];
                for ((_, _, family), v) in self.gauges.iter().zip(values) {
                    set(family, &label, v);
                }
                set(&self.up, &label, 1);
                Snapshot {
                    shown,
                    status: Some(Arc::new(status)),
                    read_at: Some(now),
                    last_ok: Some(now),
                }
            }
            Err(error) => {
                let state = error.state();
                if previous != state {
                    warn!(upstream = address, state, %error, "FPM status page unreadable; pool sizes are left as they are");
                }
                set(&self.up, &label, 0);
                let mut shown = StatusState::empty(address.to_owned(), state);
                shown.error = Some(error.to_string());
                Snapshot {
                    shown,
                    status: None,
                    read_at: Some(now),
                    last_ok,
                }
            }
        };
        self.state.send_modify(|reads| {
            if let Some(read) = reads.get_mut(index) {
                *read = snapshot;
            }
        });
    }

    /// Logs and counts, once each, the requests running past `slow_after`. When the status page
    /// is read, waits for a read taken after the threshold so the child can be named.
    fn check_slow(&self, config: &Config, now: Instant) {
        let slow_after = config.slow_after();
        let polled = config.fpm.status_path.is_some();
        let patience = slow_after + 2 * config.fpm.status_interval + status_timeout(config);
        let snaps = self.state.borrow().clone();
        let mut running = self.running.lock().expect("running lock");
        for r in running.values_mut().filter(|r| !r.reported) {
            let age = now.saturating_duration_since(r.started);
            if age < slow_after {
                continue;
            }
            let Some(snap) = snaps.get(r.upstream).or(snaps.first()) else {
                continue;
            };
            let read_at = snap.read_at.filter(|t| *t >= r.started + slow_after);
            if polled && read_at.is_none() && age < patience {
                continue;
            }
            let child = match (&snap.status, read_at, &config.fpm.status_path) {
                (Some(status), Some(at), Some(path)) => {
                    match_child(status, path, at.saturating_duration_since(r.started))
                }
                _ => None,
            };
            r.reported = true;
            self.slow
                .get_or_create(&SubjectLabel {
                    subject: r.subject.clone(),
                })
                .inc();
            warn!(
                subject = %r.subject,
                message_id = %r.message_id,
                upstream = %config.fpm.address.0.get(r.upstream).map_or("?", String::as_str),
                fpm_pid = %child.map_or_else(|| "unknown".to_owned(), |c| c.pid.to_string()),
                fpm_uri = %child.map_or("-", |c| c.request_uri.as_str()),
                running_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                slow_after = ?slow_after,
                "Request running past fpm.slow_after"
            );
        }
    }
}

/// Removes its request from the monitor when the request finishes (or its future is dropped).
pub struct RunningGuard<'a> {
    monitor: &'a Monitor,
    id: u64,
}

impl RunningGuard<'_> {
    /// Notes the upstream the request went to (index in `fpm.address`).
    pub fn set_upstream(&self, upstream: usize) {
        if let Some(r) = self
            .monitor
            .running
            .lock()
            .expect("running lock")
            .get_mut(&self.id)
        {
            r.upstream = upstream;
        }
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.monitor
            .running
            .lock()
            .expect("running lock")
            .remove(&self.id);
    }
}

fn set(family: &Family<UpstreamLabel, Gauge>, label: &UpstreamLabel, v: u64) {
    let gauge: &Gauge<i64, AtomicI64> = &family.get_or_create(label);
    gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
}

fn status_timeout(config: &Config) -> Duration {
    config
        .fpm
        .timeout
        .min(config.fpm.status_interval.max(Duration::from_secs(1)))
}

/// The busy child most likely to run a request that, at the time of the read, had been running
/// for `expected`: the one whose request duration is closest to it. FPM's duration can only be
/// shorter (the request may have waited in the listen backlog), plus clock slack. Only children
/// in state `Running` count: a child held by an idle keep-alive connection is `Reading headers`
/// with URI `-` and a duration that grows from the connection's start.
#[must_use]
pub fn match_child<'a>(
    status: &'a FpmStatus,
    status_path: &'a str,
    expected: Duration,
) -> Option<&'a FpmProcess> {
    let expected = u64::try_from(expected.as_micros()).unwrap_or(u64::MAX);
    let slack = 250_000;
    status
        .busy_children(status_path)
        .filter(|p| p.state == "Running" && p.request_duration_us <= expected.saturating_add(slack))
        .min_by_key(|p| p.request_duration_us.abs_diff(expected))
}

/// Starts the monitor's tasks for `config`: one status reader per upstream (when
/// `fpm.status_path` is set), the upstreams' upkeep (idle connections, breaker probes) and the
/// slow-request watch. Abort the handles to stop them (on reload and stop).
#[must_use]
pub fn spawn(monitor: Arc<Monitor>, config: Arc<Config>) -> Vec<tokio::task::JoinHandle<()>> {
    let upstreams = monitor.upstreams_for(&config);
    let mut tasks = vec![tokio::spawn(upstreams.clone().maintain())];
    let state = if config.fpm.status_path.is_some() {
        "pending"
    } else {
        "not_configured"
    };
    monitor.state.send_replace(
        upstreams
            .list()
            .iter()
            .map(|u| Snapshot::empty(u.label.clone(), state))
            .collect(),
    );
    if let Some(path) = config.fpm.status_path.clone() {
        for (index, upstream) in upstreams.list().iter().enumerate() {
            let (m, c, u, p) = (
                monitor.clone(),
                config.clone(),
                upstream.clone(),
                path.clone(),
            );
            tasks.push(tokio::spawn(async move {
                read_loop(&m, &c, index, &u, &p).await;
            }));
        }
    }
    let tick = (config.slow_after() / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    tasks.push(tokio::spawn(async move {
        let mut every = tokio::time::interval(tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            monitor.check_slow(&config, Instant::now());
        }
    }));
    tasks
}

impl Snapshot {
    fn empty(address: String, state: &'static str) -> Self {
        Self {
            shown: StatusState::empty(address, state),
            status: None,
            read_at: None,
            last_ok: None,
        }
    }
}

/// How long an upstream counts as contended after a read that saw a listen queue.
fn contention_hold(config: &Config) -> Duration {
    (config.fpm.status_interval * 10).max(Duration::from_secs(2))
}

/// Reads `upstream`'s status page every `fpm.status_interval`. The read takes a lease like a
/// message does: it counts against the upstream's capacity, waits its turn in the agent, and
/// may reuse a connection already open to a child (so no child has to be kept free for it).
async fn read_loop(
    monitor: &Monitor,
    config: &Config,
    index: usize,
    upstream: &Arc<Upstream>,
    path: &str,
) {
    let timeout = status_timeout(config);
    let mut every = tokio::time::interval(config.fpm.status_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let started = Instant::now();
        // Only a request that FPM itself left unanswered says children are held by others; a
        // read that found every slot of this agent busy says nothing about FPM's backlog.
        let mut fpm_timed_out = false;
        let result = match tokio::time::timeout(timeout, upstream.acquire()).await {
            Ok(mut lease) => {
                let left = timeout.saturating_sub(started.elapsed());
                let reply = lease
                    .client()
                    .status_page(path, left.max(Duration::from_millis(1)), MAX_STATUS_BYTES)
                    .await;
                fpm_timed_out = matches!(reply, Err(crate::fastcgi::FpmError::Timeout(_)));
                reply.map_err(|e| StatusError::Fpm(e.to_string()))
            }
            Err(_) => Err(StatusError::Fpm(format!(
                "timed out after {timeout:?} waiting for a free slot: every FPM child is busy with this agent's requests"
            ))),
        };
        let parsed = result.and_then(|reply| super::parse_reply(&reply.stdout));
        let hold = contention_hold(config);
        match &parsed {
            Ok(status) => {
                upstream.answered();
                let cap = status.max_children(config.fpm.max_children);
                upstream.set_capacity(cap.map(|c| usize::try_from(c).unwrap_or(usize::MAX)));
                upstream.note_status(Some(status.listen_queue), false, hold);
            }
            Err(_) => upstream.note_status(None, fpm_timed_out, hold),
        }
        monitor.record(index, &upstream.label, path, config, parsed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closest_busy_child_is_named() {
        let body = include_str!("testdata/saturated.json");
        let mut status: FpmStatus = serde_json::from_str(body).unwrap();
        status.processes[0].state = "Running".to_owned();
        let durations: Vec<_> = status
            .busy_children("/fpm-status")
            .map(|p| (p.pid, p.request_duration_us))
            .collect();
        assert_eq!(durations.len(), 2);
        for (pid, us) in &durations {
            let found = match_child(&status, "/fpm-status", Duration::from_micros(us + 20_000));
            assert_eq!(found.map(|p| p.pid), Some(*pid), "{durations:?}");
        }
        // A child held by an idle keep-alive connection runs nothing.
        status.processes[0].state = "Reading headers".to_owned();
        let long = Duration::from_micros(status.processes[0].request_duration_us);
        assert_eq!(
            match_child(&status, "/fpm-status", long).map(|p| p.pid),
            Some(2079)
        );
        let idle: FpmStatus = serde_json::from_str(include_str!("testdata/idle.json")).unwrap();
        assert!(match_child(&idle, "/fpm-status", Duration::from_secs(1)).is_none());
    }
}
