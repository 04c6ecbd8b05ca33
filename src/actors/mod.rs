//! The supervision tree.
//!
//! ```text
//! Root supervisor ── restarts consumers with backoff, escalates past the restart intensity
//!   └─ Consumer (one per subject) ── owns the AMQP connection, dispatches deliveries
//!        └─ FpmWorker × pool_size ── one message at a time, on a FastCGI connection leased
//!                                    per request from the agent's pool (`crate::upstreams`)
//! ```
//!
//! Each actor file follows ractor's example layout: the actor (unit struct), its `State`, its
//! `Msg`, its `Arguments`, then the `Actor` impl.

pub mod acks;
pub(crate) mod consumer;
pub(crate) mod depth;
pub(crate) mod exit;
pub mod hook;
pub(crate) mod root;
pub(crate) mod worker;

use std::sync::Arc;

use crate::config::Config;
use crate::contract::RequestTemplate;
use crate::outcome::RetryPolicy;

/// Everything a subject's actors share, computed once from the config.
pub struct SubjectRuntime {
    /// Subject name (`event` / `command`).
    pub name: String,
    /// The full configuration this runtime was built from.
    pub config: Arc<Config>,
    /// Fixed part of every FastCGI request.
    pub template: RequestTemplate,
    /// Retry schedule.
    pub policy: RetryPolicy,
    /// Counters and gauges, shared with the status endpoint.
    pub stats: Arc<crate::stats::SubjectStats>,
    /// Prometheus metrics of the agent.
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// This subject's events: each feeds its `/status` counter and its metric in one call (the
    /// metrics resolved once for the per-message path).
    pub events: crate::telemetry::events::SubjectEvents,
    /// One warning a minute for messages without `message_id`, however many arrive.
    pub missing_id_log: crate::telemetry::log_limit::LogEvery,
    /// One warning a minute for ignored (unsealed) agent state headers.
    pub untrusted_state_log: crate::telemetry::log_limit::LogEvery,
    /// Crash-loop protection: the agent's in-flight journal (shared by every subject).
    pub crashes: Arc<crate::poison::journal::Tracker>,
    /// The FPM upstreams and their connection pools (shared by every subject of the agent).
    pub upstreams: Arc<crate::upstreams::Upstreams>,
    /// FPM's status page and the requests in flight (`fpm.slow_after`), shared by every
    /// subject; the agent owns it.
    pub monitor: Arc<crate::fpm_status::monitor::Monitor>,
    /// Tests only: called by a worker with each delivery before handling it (see [`hook`]).
    pub hook: Option<hook::DeliveryHook>,
    /// Bodies over `limits.max_body_bytes`: one held at a time (shared by every subject).
    pub body_gate: Arc<crate::broker::gate::OversizeGate>,
}

impl SubjectRuntime {
    /// Builds the runtime of `subject` (which must be configured).
    #[must_use]
    pub fn new(
        config: Arc<Config>,
        subject: &str,
        stats: Arc<crate::stats::SubjectStats>,
        metrics: Arc<crate::telemetry::metrics::Metrics>,
        upstreams: Arc<crate::upstreams::Upstreams>,
    ) -> Self {
        let wait_threshold = config.subjects[subject].wait_threshold;
        let body_gate = crate::broker::gate::OversizeGate::new(config.limits.max_body_bytes);
        body_gate.follow(&config);
        Self {
            name: subject.to_owned(),
            template: RequestTemplate::new(&config, subject),
            policy: RetryPolicy {
                delays: config.retry.delays.clone(),
                max_attempts: config.retry.max_attempts,
                max_retry_after: config.retry.max_retry_after,
                extra_queues: config.amqp.declare,
            },
            upstreams,
            monitor: Arc::default(),
            config,
            events: crate::telemetry::events::SubjectEvents::new(
                subject,
                stats.clone(),
                metrics.clone(),
            )
            .with_wait_threshold(wait_threshold),
            stats,
            metrics,
            missing_id_log: crate::telemetry::log_limit::LogEvery::new(
                std::time::Duration::from_secs(60),
            ),
            untrusted_state_log: crate::telemetry::log_limit::LogEvery::new(
                std::time::Duration::from_secs(60),
            ),
            crashes: Arc::new(crate::poison::journal::Tracker::disabled()),
            hook: None,
            body_gate,
        }
    }

    /// The same runtime, sharing `gate` (the agent's one) and moving it to this configuration's
    /// `limits.max_body_bytes` and `limits.memory_budget`.
    #[must_use]
    pub(crate) fn with_body_gate(mut self, gate: Arc<crate::broker::gate::OversizeGate>) -> Self {
        gate.follow(&self.config);
        self.body_gate = gate;
        self
    }

    /// With the agent's FPM status monitor (a fresh one otherwise).
    #[must_use]
    pub(crate) fn with_monitor(
        mut self,
        monitor: Arc<crate::fpm_status::monitor::Monitor>,
    ) -> Self {
        self.monitor = monitor;
        self
    }

    /// The same runtime, recording in-flight messages in `crashes`.
    #[must_use]
    pub(crate) fn with_crashes(mut self, crashes: Arc<crate::poison::journal::Tracker>) -> Self {
        self.crashes = crashes;
        self
    }

    /// The same runtime, calling `hook` with each delivery a worker is given (tests).
    #[must_use]
    pub(crate) fn with_hook(mut self, hook: Option<hook::DeliveryHook>) -> Self {
        self.hook = hook;
        self
    }

    /// The subject's configuration.
    #[must_use]
    pub(crate) fn subject(&self) -> &crate::config::SubjectConfig {
        &self.config.subjects[&self.name]
    }
}
