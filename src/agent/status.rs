//! What the agent reports about itself: `/status` and readiness.

use std::collections::BTreeMap;

use serde::Serialize;

use super::AgentHandle;
use crate::fpm_status::StatusState;
use crate::stats::StatsSnapshot;
use crate::upstreams::UpstreamStatus;

/// `/status` document.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Agent version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Ready to consume (every subject connected, consuming, not paused).
    pub ready: bool,
    /// Per subject.
    pub subjects: BTreeMap<String, SubjectStatus>,
    /// FPM's status page as last read (`state` says whether it could be); with several
    /// upstreams, the first one's.
    pub fpm: StatusState,
    /// Every FPM upstream (`fpm.address`): breaker, requests in flight, capacity, status page.
    pub upstreams: Vec<UpstreamStatus<StatusState>>,
}

impl Status {
    /// The document for a caller without the admin token: FPM children's request URIs without
    /// their query strings (see [`StatusState::hide_queries`]).
    #[must_use]
    pub(crate) fn without_queries(mut self) -> Self {
        self.fpm.hide_queries();
        for upstream in &mut self.upstreams {
            upstream.fpm.hide_queries();
        }
        self
    }
}

/// The span of `/status`'s quantiles.
const LAST_MINUTE: std::time::Duration = std::time::Duration::from_secs(60);

/// One subject in `/status`.
#[derive(Debug, Serialize)]
pub struct SubjectStatus {
    /// Queue consumed.
    pub queue: String,
    /// Pool size the operator or config asked for.
    pub target_pool_size: u64,
    /// `fixed` or `auto` (`pool_mode`).
    pub pool_mode: &'static str,
    /// An operator set the size (`pool set`, SIGTTIN, SIGTTOU): an auto pool is left at it
    /// until `pool auto`.
    pub pinned: bool,
    /// `min_pool_size`.
    pub min_pool_size: u16,
    /// `max_pool_size`.
    pub max_pool_size: u16,
    /// Messages ready in the queue at the last depth read (every `fpm.status_interval`).
    pub queue_depth: Option<u64>,
    /// Idle workers.
    pub idle: u64,
    /// `connected` or `disconnected`.
    pub connection: &'static str,
    /// The broker node (`host:port`) the subject is connected to.
    pub node: Option<String>,
    /// The rate limit in force (`50/s, burst 1`), or null.
    pub rate_limit: Option<String>,
    /// Messages wait longer than the subject's `wait_threshold` (an episode is under way).
    pub long_wait: bool,
    /// With `batch_max = "auto"`: the last batch size chosen, the bound that chose it and its
    /// inputs (backlog, free workers, the estimated cost of a request and of an entry).
    pub batch_auto: Option<crate::stats::AutoBatch>,
    /// FPM request durations of the last minute (ms): p50, p99 and how many (at most the latest
    /// 1,024); null without a request in that minute.
    pub runtime_ms_last_minute: Option<crate::stats::Quantiles>,
    /// Queue waits of the last minute (s, from the AMQP timestamp), as `runtime_ms_last_minute`.
    pub wait_s_last_minute: Option<crate::stats::Quantiles>,
    /// Bytes of message bodies (within `limits.max_body_bytes`) the subject's deliveries hold
    /// in memory now, prefetched or being handled.
    pub body_bytes_held: u64,
    /// The subject's share of `limits.memory_budget`: the most `body_bytes_held` reaches
    /// (one body larger than it is let in alone).
    pub body_bytes_share: u64,
    /// `consuming`, `paused` (an operator's pause), `circuit_open` (FPM unreachable, or PHP
    /// refusing the signature: consumption held until a probe succeeds) or `disconnected`.
    pub state: &'static str,
    /// An operator paused the subject (indefinitely, or until `paused_until`).
    pub operator_paused: bool,
    /// When an operator's timed pause ends and the subject resumes by itself (RFC 3339, UTC).
    pub paused_until: Option<String>,
    /// The same, as Unix seconds.
    pub paused_until_unix: Option<u64>,
    /// Counters and gauges.
    #[serde(flatten)]
    pub stats: StatsSnapshot,
}

impl AgentHandle {
    /// Why the agent is not ready (empty: ready).
    #[must_use]
    pub(crate) fn not_ready(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.alive() {
            problems.push("supervision tree stopped".to_owned());
        }
        for (name, stats) in self.stats() {
            if !stats.consuming {
                problems.push(format!("{name}: not connected to RabbitMQ"));
            } else if stats.paused {
                problems.push(format!(
                    "{name}: paused (FPM unreachable or operator pause)"
                ));
            }
        }
        problems
    }

    /// The `/status` document.
    #[must_use]
    pub fn status(&self) -> Status {
        let config = self.config();
        let subjects = self
            .inner
            .stats
            .iter()
            .map(|(name, stats)| {
                let s = stats.snapshot();
                let setting = self.setting(name);
                let operator_paused = setting.is_some_and(|s| s.pause.is_on());
                let until = setting.and_then(|s| s.pause.until()).map(|t| {
                    t.duration_since(std::time::UNIX_EPOCH)
                        .map_or(1, |d| d.as_secs().max(1))
                });
                let cfg = config.subjects.get(name);
                let auto = cfg.is_some_and(|c| c.pool_mode == crate::config::PoolMode::Auto);
                let status = SubjectStatus {
                    pool_mode: if auto { "auto" } else { "fixed" },
                    pinned: setting.is_some_and(|s| s.pinned),
                    min_pool_size: cfg.map_or(0, |c| c.min_pool_size),
                    max_pool_size: cfg.map_or(0, |c| c.max_pool_size),
                    queue_depth: Some(s.queued),
                    state: if !s.consuming {
                        "disconnected"
                    } else if operator_paused {
                        "paused"
                    } else if s.paused {
                        "circuit_open"
                    } else {
                        "consuming"
                    },
                    operator_paused,
                    paused_until: until.map(|secs| {
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
                        )
                        .to_string()
                    }),
                    paused_until_unix: until,
                    queue: config
                        .subjects
                        .get(name)
                        .map_or_else(String::new, |s| s.queue.clone()),
                    target_pool_size: setting.map_or(0, |s| s.target as u64),
                    idle: s.pool_size.saturating_sub(s.busy),
                    connection: if s.consuming {
                        "connected"
                    } else {
                        "disconnected"
                    },
                    node: stats.node(),
                    rate_limit: setting
                        .and_then(|s| s.rate)
                        .map(|l| format!("{}, burst {}", l.rate, l.burst)),
                    long_wait: stats.long_wait.load(std::sync::atomic::Ordering::Relaxed),
                    batch_auto: stats.batch_sizing(),
                    runtime_ms_last_minute: stats
                        .runtime_window
                        .quantiles(std::time::Instant::now(), LAST_MINUTE),
                    wait_s_last_minute: stats
                        .wait_window
                        .quantiles(std::time::Instant::now(), LAST_MINUTE),
                    body_bytes_held: self.inner.body_gate.held_by(name),
                    body_bytes_share: self.inner.body_gate.share(),
                    stats: s,
                };
                (name.clone(), status)
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.inner.started.elapsed().as_secs(),
            ready: self.not_ready().is_empty(),
            subjects,
            fpm: self.inner.monitor.snapshot().shown,
            upstreams: self.upstreams(),
        }
    }

    fn upstreams(&self) -> Vec<UpstreamStatus<StatusState>> {
        let monitor = &self.inner.monitor;
        let mut reads = monitor.snapshots().into_iter().map(|s| s.shown);
        let Some(upstreams) = self.fpm_upstreams() else {
            return Vec::new();
        };
        upstreams
            .status()
            .into_iter()
            .map(|u| {
                let fpm = reads
                    .next()
                    .unwrap_or_else(|| StatusState::empty(u.address.clone(), "not_configured"));
                u.with_fpm(fpm)
            })
            .collect()
    }
}
