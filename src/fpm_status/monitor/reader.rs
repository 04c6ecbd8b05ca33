//! The monitor's tasks: one status-page reader per upstream, the upstreams' upkeep and the
//! slow-request watch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{MAX_STATUS_BYTES, Monitor, Snapshot, StatusError, StatusState, status_timeout};
use crate::config::Config;
use crate::upstreams::Upstream;

/// Starts the monitor's tasks for `config` and its `upstreams`: one status reader per upstream
/// (when `fpm.status_path` is set), the upstreams' upkeep (idle connections, breaker probes) and
/// the slow-request watch. Abort the handles to stop them (on reload and stop).
#[must_use]
pub(crate) fn spawn(
    monitor: Arc<Monitor>,
    upstreams: Arc<crate::upstreams::Upstreams>,
    config: Arc<Config>,
) -> Vec<tokio::task::JoinHandle<()>> {
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
    pub(super) fn empty(address: String, state: &'static str) -> Self {
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
        tokio::select! {
            _ = every.tick() => {}
            () = monitor.soon.notified() => every.reset(),
        }
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
        let parsed = result.and_then(|reply| crate::fpm_status::parse_reply(&reply.stdout));
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
