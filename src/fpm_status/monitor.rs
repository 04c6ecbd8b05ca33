//! The FPM monitor: a task that reads the status page every `fpm.status_interval` on a
//! connection of its own, the gauges it feeds, and the watch that logs each request running
//! past `fpm.slow_after` once, naming the FPM child that runs it.
//!
//! Invariant: reading the status page never blocks or fails a message; its connection is closed
//! after every read (php-fpm pins a child to an open connection).

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
use crate::fastcgi::FpmClient;

/// The `subject` label of the in-flight request gauges. (Its own type, not the metrics
/// module's: `telemetry::metrics` holds the monitor, so the monitor does not import it back.)
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubjectLabel {
    /// `event` or `command`.
    pub subject: String,
}

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
}

/// FPM's status as last read, the requests in flight, and their gauges and counters.
pub struct Monitor {
    state: watch::Sender<Snapshot>,
    running: Mutex<HashMap<u64, Running>>,
    next: AtomicU64,
    /// `fpm_slow_messages{subject}`: requests that ran past `fpm.slow_after`.
    pub slow: Family<SubjectLabel, Counter>,
    up: Family<UpstreamLabel, Gauge>,
    gauges: [(&'static str, &'static str, Family<UpstreamLabel, Gauge>); 7],
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
            state: watch::Sender::new(Snapshot {
                shown: StatusState::empty(String::new(), "not_configured"),
                status: None,
                read_at: None,
                last_ok: None,
            }),
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
    }

    /// The last read of the status page; changes are announced to [`Monitor::subscribe`].
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = self.state.borrow().clone();
        snap.shown.last_ok_ms_ago = snap
            .last_ok
            .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
        snap
    }

    /// A receiver woken after every read.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
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
            },
        );
        RunningGuard { monitor: self, id }
    }

    fn record(
        &self,
        address: &str,
        path: &str,
        config: &Config,
        result: Result<FpmStatus, StatusError>,
    ) {
        let now = Instant::now();
        let previous = self.state.borrow().shown.state;
        let label = UpstreamLabel {
            upstream: address.to_owned(),
        };
        let last_ok = self.state.borrow().last_ok;
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
        self.state.send_replace(snapshot);
    }

    /// Logs and counts, once each, the requests running past `slow_after`. When the status page
    /// is read, waits for a read taken after the threshold so the child can be named.
    fn check_slow(&self, config: &Config, now: Instant) {
        let slow_after = config.slow_after();
        let polled = config.fpm.status_path.is_some();
        let patience = slow_after + 2 * config.fpm.status_interval + status_timeout(config);
        let snap = self.state.borrow().clone();
        let mut running = self.running.lock().expect("running lock");
        for r in running.values_mut().filter(|r| !r.reported) {
            let age = now.saturating_duration_since(r.started);
            if age < slow_after {
                continue;
            }
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
                upstream = %config.fpm.address,
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

/// Starts the monitor's tasks for `config`: the status reader (when `fpm.status_path` is set)
/// and the slow-request watch. Abort the handles to stop them (on reload and stop).
#[must_use]
pub fn spawn(monitor: Arc<Monitor>, config: Arc<Config>) -> Vec<tokio::task::JoinHandle<()>> {
    let address = config.fpm.address.to_string();
    let mut tasks = Vec::new();
    match config.fpm.status_path.clone() {
        None => {
            monitor.state.send_replace(Snapshot {
                shown: StatusState::empty(address, "not_configured"),
                status: None,
                read_at: None,
                last_ok: None,
            });
        }
        Some(path) => {
            monitor
                .state
                .send_modify(|s| s.shown = StatusState::empty(address.clone(), "pending"));
            let (m, c) = (monitor.clone(), config.clone());
            tasks.push(tokio::spawn(async move {
                read_loop(&m, &c, &address, &path).await
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

async fn read_loop(monitor: &Monitor, config: &Config, address: &str, path: &str) {
    let mut client = FpmClient::new(
        config.fpm.address.clone(),
        status_timeout(config),
        MAX_STATUS_BYTES,
    )
    .keeping_all();
    let mut every = tokio::time::interval(config.fpm.status_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let result = client.status_page(path).await;
        client.close();
        let parsed = result
            .map_err(|e| StatusError::Fpm(e.to_string()))
            .and_then(|reply| super::parse_reply(&reply.stdout));
        monitor.record(address, path, config, parsed);
    }
}

#[cfg(test)]
mod tests;
