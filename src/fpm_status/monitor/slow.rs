//! The slow-request watch: the requests in flight, and each one past `fpm.slow_after` logged and
//! counted once, with the FPM child that runs it when the status page is read.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::warn;

use super::{FpmProcess, FpmStatus, Monitor, SubjectLabel, status_timeout};
use crate::config::Config;

/// A request the worker has sent to FPM and not yet finished.
pub(super) struct Running {
    pub(super) subject: String,
    pub(super) message_id: String,
    pub(super) started: Instant,
    pub(super) reported: bool,
    /// Index of the upstream it went to (in `fpm.address`).
    pub(super) upstream: usize,
}

impl Monitor {
    /// Notes a request sent to FPM until the returned guard drops.
    #[must_use]
    pub(crate) fn running(&self, subject: &str, message_id: &str) -> RunningGuard<'_> {
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

    /// Logs and counts, once each, the requests running past `slow_after`. When the status page
    /// is read, waits for a read taken after the threshold so the child can be named.
    pub(super) fn check_slow(&self, config: &Config, now: Instant) {
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
                upstream = %config.fpm.address.0.get(r.upstream).map_or_else(|| "?".to_owned(), ToString::to_string),
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
    pub(crate) fn set_upstream(&self, upstream: usize) {
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

/// The busy child most likely to run a request that, at the time of the read, had been running
/// for `expected`: the one whose request duration is closest to it. FPM's duration can only be
/// shorter (the request may have waited in the listen backlog), plus clock slack. Only children
/// in state `Running` count: a child held by an idle keep-alive connection is `Reading headers`
/// with URI `-` and a duration that grows from the connection's start.
#[must_use]
pub(crate) fn match_child<'a>(
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
