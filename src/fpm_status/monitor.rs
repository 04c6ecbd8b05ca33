//! The FPM monitor: a task that reads the status page every `fpm.status_interval` on a
//! connection of its own, the gauges it feeds, and the watch that logs each request running
//! past `fpm.slow_after` once, naming the FPM child that runs it.
//!
//! Invariant: reading the status page never blocks or fails a message. The read takes a lease
//! of its upstream's connection pool like a message does (`upstreams`), so it counts against
//! FPM's capacity and its connection is closed like theirs once unused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64};
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
use crate::upstreams::UpstreamLabel;

/// The `subject` label of the in-flight request gauges. (Its own type, not the metrics
/// module's: `telemetry::metrics` holds the monitor, so the monitor does not import it back.)
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubjectLabel {
    /// `event` or `command`.
    pub subject: String,
}

mod reader;
mod slow;

pub(crate) use reader::spawn;
use slow::Running;
pub use slow::RunningGuard;

/// Largest status page read: `full` costs ~330 bytes per child.
const MAX_STATUS_BYTES: usize = 4 * 1024 * 1024;

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

/// FPM's status as last read (one [`Snapshot`] per upstream), the requests in flight, the
/// upstreams' connection pools, and their gauges and counters.
pub struct Monitor {
    /// One read per upstream, in `fpm.address` order.
    state: watch::Sender<Vec<Snapshot>>,
    /// Wakes the status readers before their interval ends ([`Monitor::read_soon`]).
    soon: tokio::sync::Notify,
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
    pub(crate) fn new() -> Self {
        let g = Family::default;
        Self {
            state: watch::Sender::new(vec![Snapshot::empty(String::new(), "not_configured")]),
            soon: tokio::sync::Notify::new(),
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
    pub(crate) fn register(&self, registry: &mut Registry) {
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

    /// The last read of the first upstream's status page; changes are announced to
    /// [`Monitor::subscribe`].
    #[must_use]
    pub(crate) fn snapshot(&self) -> Snapshot {
        self.snapshots().swap_remove(0)
    }

    /// The last read of every upstream's status page, in `fpm.address` order.
    #[must_use]
    pub(crate) fn snapshots(&self) -> Vec<Snapshot> {
        let mut snaps = self.state.borrow().clone();
        for snap in &mut snaps {
            snap.shown.last_ok_ms_ago = snap
                .last_ok
                .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
        }
        snaps
    }

    /// Asks every status reader waiting for its next interval to read now (the autoscaler,
    /// while it grows a pool into a deep backlog: each step needs a fresh count of idle
    /// children). A reader in the middle of a read is not asked again.
    pub(crate) fn read_soon(&self) {
        self.soon.notify_waiters();
    }

    /// A receiver woken after every read.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Vec<Snapshot>> {
        self.state.subscribe()
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

#[cfg(test)]
mod tests;
