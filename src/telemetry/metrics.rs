//! Prometheus metrics (prometheus-client encodes the exposition format).
//!
//! Invariant: one [`Metrics`] per agent; counters are incremented where the event happens (a
//! counter that `/status` shows too, through [`super::events`] only), gauges are copied from the
//! actors' [`SubjectStats`] when `/metrics` is scraped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::stats::SubjectStats;

/// `subject` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubjectLabel {
    /// `event` / `command`.
    pub subject: String,
}

/// `subject` + `node` labels of the `connected_node` gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// `event` / `command`.
    pub subject: String,
    /// `host:port` of the broker node.
    pub node: String,
}

/// `subject` + `reason` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `event` / `command`.
    pub subject: String,
    /// Machine-readable reason (`http_status`, `timeout`, `max_attempts`, …).
    pub reason: String,
}

/// `subject` + `status` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// `event` / `command`.
    pub subject: String,
    /// HTTP status of PHP's reply, or the error reason when there was none.
    pub status: String,
}

/// `subject` + `actor` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Subject name.
    pub subject: String,
    /// `multiple` or `single`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActorLabels {
    /// `event` / `command`.
    pub subject: String,
    /// `consumer` or `worker`.
    pub actor: String,
}

fn batch_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0])
}

fn seconds_histogram() -> Histogram {
    // 0.5 ms … ~65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// A subject's label-bound metrics, resolved once: the per-message path then updates atomics
/// without building a label set and looking it up in a family each time.
#[derive(Clone)]
pub struct SubjectMetrics {
    /// `messages_received{subject}`.
    pub received: Counter,
    /// `messages_acked{subject}`.
    pub acked: Counter,
    /// `fpm_request_duration_seconds{subject}`.
    pub fpm_duration: Histogram,
    /// `queue_wait_seconds{subject}`.
    pub queue_wait: Histogram,
    /// `fpm_responses{subject, status="200"}`, the common case.
    pub fpm_ok: Counter,
    /// `messages_requeued{subject}`.
    pub requeued: Counter,
    /// `ack_frames{subject, kind="multiple"}`.
    pub ack_multiple: Counter,
    /// `ack_frames{subject, kind="single"}`.
    pub ack_single: Counter,
    /// `messages_without_message_id{subject}`.
    pub missing_message_id: Counter,
    /// `signature_rejected{subject}`.
    pub signature_rejected: Counter,
    /// `body_deferred{subject}`.
    pub body_deferred: Counter,
    /// `rate_limit_wait_seconds{subject}`.
    pub rate_limit_wait: Counter<f64, std::sync::atomic::AtomicU64>,
    /// `long_wait{subject}`.
    pub long_wait: Gauge,
    /// `long_wait_episodes{subject}`.
    pub long_wait_episodes: Counter,
}

/// Every metric of the agent.
pub struct Metrics {
    registry: Registry,
    /// Deliveries received.
    pub received: Family<SubjectLabel, Counter>,
    /// Deliveries acked after success.
    pub acked: Family<SubjectLabel, Counter>,
    /// Attempts republished to a delay queue.
    pub retried: Family<ReasonLabels, Counter>,
    /// Messages dead-lettered.
    pub dead_lettered: Family<ReasonLabels, Counter>,
    /// Deliveries returned to their queue unacked.
    pub requeued: Family<SubjectLabel, Counter>,
    /// FastCGI replies by status (or error reason).
    pub fpm_responses: Family<StatusLabels, Counter>,
    /// FastCGI request duration.
    pub fpm_duration: Family<SubjectLabel, Histogram, fn() -> Histogram>,
    /// Time between publish (AMQP timestamp) and the start of handling.
    pub queue_wait: Family<SubjectLabel, Histogram, fn() -> Histogram>,
    /// Messages per batch request (subjects with `batch_max` > 1).
    pub batch_size: Family<SubjectLabel, Histogram, fn() -> Histogram>,
    /// Consumer reconnects (restarts after the first start).
    pub reconnects: Family<SubjectLabel, Counter>,
    /// Actors restarted after a failure.
    pub actor_restarts: Family<ActorLabels, Counter>,
    /// `basic.ack` frames sent, by kind.
    pub ack_frames: Family<KindLabels, Counter>,
    /// Deliveries without an AMQP `message_id` (the agent generated one).
    pub missing_message_id: Family<SubjectLabel, Counter>,
    /// Requests PHP refused for their signature (401): the secrets differ.
    pub signature_rejected: Family<SubjectLabel, Counter>,
    /// Deliveries over `limits.max_body_bytes` not received while another such body was held.
    pub body_deferred: Family<SubjectLabel, Counter>,
    /// Seconds ready messages and an idle worker waited for the rate limit.
    pub rate_limit_wait: Family<SubjectLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// 1 while a subject's messages wait longer than its `wait_threshold`.
    pub long_wait: Family<SubjectLabel, Gauge>,
    /// Long-wait episodes begun.
    pub long_wait_episodes: Family<SubjectLabel, Counter>,
    in_flight: Family<SubjectLabel, Gauge>,
    pool_size: Family<SubjectLabel, Gauge>,
    busy: Family<SubjectLabel, Gauge>,
    consuming: Family<SubjectLabel, Gauge>,
    paused: Family<SubjectLabel, Gauge>,
    body_bytes_held: Family<SubjectLabel, Gauge>,
    body_bytes_share: Gauge,
    node: Family<NodeLabels, Gauge>,
    stats: BTreeMap<String, Arc<SubjectStats>>,
    /// The agent's body gate, read at each scrape (set once by the agent).
    bodies: std::sync::OnceLock<Arc<crate::broker::gate::OversizeGate>>,
    /// 1 while crash-loop protection journals messages; 0 when off by config or degraded (a
    /// full disk at start). Set once by the agent when it opens the journal.
    pub crash_loop_protection: Gauge,
}

impl Metrics {
    /// Registers every metric; `stats` feeds the gauges. The FPM upstreams' and the FPM status
    /// monitor's gauges and counters are their own: registered here, owned there.
    #[must_use]
    pub fn new(
        stats: BTreeMap<String, Arc<SubjectStats>>,
        upstreams: &crate::upstreams::InForce,
        monitor: &crate::fpm_status::monitor::Monitor,
    ) -> Self {
        let mut registry = Registry::with_prefix("amqp_agent");
        let m = Self {
            received: Family::default(),
            acked: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            requeued: Family::default(),
            fpm_responses: Family::default(),
            fpm_duration: Family::new_with_constructor(seconds_histogram),
            queue_wait: Family::new_with_constructor(seconds_histogram),
            batch_size: Family::new_with_constructor(batch_histogram),
            reconnects: Family::default(),
            actor_restarts: Family::default(),
            ack_frames: Family::default(),
            missing_message_id: Family::default(),
            signature_rejected: Family::default(),
            body_deferred: Family::default(),
            rate_limit_wait: Family::default(),
            long_wait: Family::default(),
            long_wait_episodes: Family::default(),
            in_flight: Family::default(),
            pool_size: Family::default(),
            busy: Family::default(),
            consuming: Family::default(),
            paused: Family::default(),
            body_bytes_held: Family::default(),
            body_bytes_share: Gauge::default(),
            node: Family::default(),
            registry: Registry::default(),
            stats,
            bodies: std::sync::OnceLock::new(),
            crash_loop_protection: Gauge::default(),
        };
        monitor.register(&mut registry);
        upstreams.register(&mut registry);
        registry.register(
            "messages_received",
            "Deliveries received from RabbitMQ",
            m.received.clone(),
        );
        registry.register(
            "messages_acked",
            "Deliveries acked after PHP handled them",
            m.acked.clone(),
        );
        registry.register(
            "messages_retried",
            "Failed attempts republished to a delay queue",
            m.retried.clone(),
        );
        registry.register(
            "messages_dead_lettered",
            "Messages published to the dead-letter queue",
            m.dead_lettered.clone(),
        );
        registry.register(
            "messages_requeued",
            "Deliveries returned to their queue unacked",
            m.requeued.clone(),
        );
        registry.register(
            "fpm_responses",
            "FastCGI replies by HTTP status or error",
            m.fpm_responses.clone(),
        );
        registry.register(
            "fpm_request_duration_seconds",
            "FastCGI request duration",
            m.fpm_duration.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time from publish (AMQP timestamp) to handling",
            m.queue_wait.clone(),
        );
        registry.register(
            "batch_size",
            "Messages per batch request (docs/batches.md)",
            m.batch_size.clone(),
        );
        registry.register(
            "reconnects",
            "Consumer reconnects to RabbitMQ",
            m.reconnects.clone(),
        );
        registry.register(
            "actor_restarts",
            "Actors restarted after a failure",
            m.actor_restarts.clone(),
        );
        registry.register(
            "ack_frames",
            "basic.ack frames sent: one multiple ack settles many deliveries",
            m.ack_frames.clone(),
        );
        registry.register(
            "messages_without_message_id",
            "Deliveries without an AMQP message_id: the agent generated one (fix the publisher)",
            m.missing_message_id.clone(),
        );
        registry.register(
            "signature_rejected",
            "Requests PHP refused for their signature (401): the agent's and PHP's signing secrets differ; the subject pauses",
            m.signature_rejected.clone(),
        );
        registry.register(
            "body_deferred",
            "Deliveries over limits.max_body_bytes whose body was not received because another such body was held; returned to the queue unread, to be dead-lettered in turn",
            m.body_deferred.clone(),
        );
        registry.register(
            "rate_limit_wait_seconds",
            "Seconds during which ready messages and an idle worker waited for the subject's rate limit",
            m.rate_limit_wait.clone(),
        );
        registry.register(
            "long_wait",
            "1 while the subject's messages wait in the queue longer than its wait_threshold",
            m.long_wait.clone(),
        );
        registry.register(
            "long_wait_episodes",
            "Episodes of messages waiting longer than the subject's wait_threshold",
            m.long_wait_episodes.clone(),
        );
        registry.register(
            "in_flight",
            "Deliveries held by the agent",
            m.in_flight.clone(),
        );
        registry.register("pool_size", "FPM workers per subject", m.pool_size.clone());
        registry.register(
            "busy_workers",
            "FPM workers handling a message",
            m.busy.clone(),
        );
        registry.register(
            "consuming",
            "1 while the subject is connected and consuming",
            m.consuming.clone(),
        );
        registry.register(
            "paused",
            "1 while consumption is paused (FPM unreachable or operator)",
            m.paused.clone(),
        );
        registry.register(
            "body_bytes_held",
            "Bytes of message bodies (within limits.max_body_bytes) the subject's deliveries hold in the agent's memory",
            m.body_bytes_held.clone(),
        );
        registry.register(
            "body_bytes_share",
            "Each subject's share of limits.memory_budget, in bytes: the most its held bodies take (one body larger than it is let in alone)",
            m.body_bytes_share.clone(),
        );
        registry.register(
            "connected_node",
            "1 for the broker node (host:port) each subject is connected to",
            m.node.clone(),
        );
        registry.register(
            "crash_loop_protection",
            "1 while crash-loop protection journals messages; 0 when off by config or degraded (full disk at start)",
            m.crash_loop_protection.clone(),
        );
        Self { registry, ..m }
    }

    /// Shorthand for a subject label.
    #[must_use]
    pub(crate) fn subject(subject: &str) -> SubjectLabel {
        SubjectLabel {
            subject: subject.to_owned(),
        }
    }

    /// The label-bound metrics of `subject`.
    #[must_use]
    pub(crate) fn for_subject(&self, subject: &str) -> SubjectMetrics {
        let label = Self::subject(subject);
        SubjectMetrics {
            received: self.received.get_or_create(&label).clone(),
            acked: self.acked.get_or_create(&label).clone(),
            fpm_duration: self.fpm_duration.get_or_create(&label).clone(),
            queue_wait: self.queue_wait.get_or_create(&label).clone(),
            fpm_ok: self
                .fpm_responses
                .get_or_create(&StatusLabels {
                    subject: subject.to_owned(),
                    status: "200".to_owned(),
                })
                .clone(),
            requeued: self.requeued.get_or_create(&label).clone(),
            ack_multiple: self.ack_frame(subject, "multiple"),
            ack_single: self.ack_frame(subject, "single"),
            missing_message_id: self.missing_message_id.get_or_create(&label).clone(),
            signature_rejected: self.signature_rejected.get_or_create(&label).clone(),
            body_deferred: self.body_deferred.get_or_create(&label).clone(),
            rate_limit_wait: self.rate_limit_wait.get_or_create(&label).clone(),
            long_wait: self.long_wait.get_or_create(&label).clone(),
            long_wait_episodes: self.long_wait_episodes.get_or_create(&label).clone(),
        }
    }

    fn ack_frame(&self, subject: &str, kind: &str) -> Counter {
        self.ack_frames
            .get_or_create(&KindLabels {
                subject: subject.to_owned(),
                kind: kind.to_owned(),
            })
            .clone()
    }

    /// Counts an FPM reply by status (the duration goes to [`SubjectMetrics::fpm_duration`]).
    pub(crate) fn fpm_response(&self, subject: &str, status: &str) {
        self.fpm_responses
            .get_or_create(&StatusLabels {
                subject: subject.to_owned(),
                status: status.to_owned(),
            })
            .inc();
    }

    /// Counts a retry or dead-letter with its reason.
    pub(crate) fn settled(family: &Family<ReasonLabels, Counter>, subject: &str, reason: &str) {
        family
            .get_or_create(&ReasonLabels {
                subject: subject.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Reads each subject's held body bytes and the budget's share from `gate` at each scrape
    /// (the agent's gate; the first call wins).
    pub(crate) fn observe_bodies(&self, gate: Arc<crate::broker::gate::OversizeGate>) {
        let _ = self.bodies.set(gate);
    }

    /// The Prometheus text exposition of every metric.
    #[must_use]
    pub fn encode(&self) -> String {
        for (name, stats) in &self.stats {
            let s = stats.snapshot();
            let label = Self::subject(name);
            let set = |family: &Family<SubjectLabel, Gauge>, v: u64| {
                let gauge: &Gauge<i64, AtomicI64> = &family.get_or_create(&label);
                gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
            };
            set(&self.in_flight, s.in_flight);
            set(&self.pool_size, s.pool_size);
            set(&self.busy, s.busy);
            set(&self.consuming, u64::from(s.consuming));
            set(&self.paused, u64::from(s.paused));
            if let Some(bodies) = self.bodies.get() {
                set(&self.body_bytes_held, bodies.held_by(name));
            }
        }
        if let Some(bodies) = self.bodies.get() {
            self.body_bytes_share
                .set(i64::try_from(bodies.share()).unwrap_or(i64::MAX));
        }
        // Only the current node of each subject: a node left behind disappears.
        self.node.clear();
        for (name, stats) in &self.stats {
            if let Some(node) = stats.node() {
                let labels = NodeLabels {
                    subject: name.clone(),
                    node,
                };
                self.node.get_or_create(&labels).set(1);
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod drift_tests {
    /// The names the agent registers, read from the sources that register them: the string
    /// literal of `registry.register("name", …` or alone on the line after it, before the tests.
    fn registered() -> std::collections::BTreeSet<String> {
        let sources = [
            include_str!("metrics.rs"),
            include_str!("../fpm_status/monitor.rs"),
            include_str!("../upstreams.rs"),
        ];
        sources
            .iter()
            .flat_map(|src| {
                let code = src.split("#[cfg(test)]").next().unwrap_or(src);
                code.lines().filter_map(|l| {
                    let l = l.trim();
                    // `registry.register("name", …` on one line, or the name alone on its own.
                    let name = match l.split_once("register(\"") {
                        Some((_, rest)) => rest.split_once('"')?.0,
                        None => l.strip_prefix('"')?.strip_suffix("\",")?,
                    };
                    name.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                        .then(|| name.to_owned())
                })
            })
            .collect()
    }

    /// Every metric the agent registers is in the reference (`docs/observability.md`), and every
    /// `amqp_agent_*` name the reference's tables list is registered.
    #[test]
    fn the_metric_reference_lists_every_metric_and_nothing_else() {
        let docs = include_str!("../../docs/observability.md");
        let registered = registered();
        assert!(registered.len() > 30, "{registered:?}");
        assert!(registered.contains("messages_received") && registered.contains("fpm_status_up"));
        let missing: Vec<_> = registered
            .iter()
            .filter(|name| {
                !docs.contains(&format!("`amqp_agent_{name}`"))
                    && !docs.contains(&format!("`amqp_agent_{name}_total`"))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "not in docs/observability.md: {missing:?}"
        );
        let stale: Vec<_> = docs
            .lines()
            .filter_map(|l| l.strip_prefix("| `amqp_agent_"))
            .filter_map(|l| l.split_once('`').map(|(n, _)| n))
            .filter(|n| !registered.contains(n.strip_suffix("_total").unwrap_or(n)))
            .collect();
        assert!(stale.is_empty(), "documented but not registered: {stale:?}");
    }
}
