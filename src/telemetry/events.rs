//! The agent's internal events (vector's pattern): each event the actors count, in `/status`,
//! in `/metrics` or both, is one typed value, emitted once where it happens.
//!
//! Invariant: an event's `/status` counter ([`SubjectStats`]) and its Prometheus metric are
//! updated here and nowhere else, so the two can never disagree on what was counted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::metrics::{ActorLabels, Metrics, SubjectMetrics};
use crate::stats::SubjectStats;

/// Something that happened to one subject's messages or actors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    /// A delivery arrived from the broker.
    Received,
    /// `n` deliveries were acked after PHP handled them (acks after a stored copy excluded).
    Acked(u64),
    /// A delivery went back to its queue unacked (nack with requeue).
    Requeued,
    /// A failed attempt was republished to a delay queue, for `reason`.
    Retried {
        /// Machine-readable reason (`http_status`, `timeout`, …).
        reason: &'a str,
    },
    /// A message was published to the dead-letter queue, for `reason`.
    DeadLettered {
        /// Machine-readable reason (`max_attempts`, `poison`, …).
        reason: &'a str,
    },
    /// A worker failed and is replaced.
    WorkerFailed,
    /// A consumer incarnation starts (before it connects).
    ConsumerStarting,
    /// A consumer incarnation consumes; after the first one this is a reconnect.
    Consuming,
    /// A consumer failed and the root restarts it.
    ConsumerFailed,
    /// FPM replied to a request (or a batch) with `status`, or the error's reason.
    FpmReplied {
        /// HTTP status of the reply, or the error reason when there was none.
        status: &'a str,
        /// How long the request took.
        elapsed: Duration,
    },
    /// A delivery's AMQP timestamp says it waited `seconds` before handling began.
    QueueWait {
        /// Whole seconds since publication.
        seconds: u64,
    },
    /// A batch of `size` deliveries goes to FPM as one request.
    BatchSent {
        /// Deliveries in the batch.
        size: usize,
    },
    /// A delivery came without an AMQP `message_id` (the agent generated one).
    MissingMessageId,
    /// PHP refused a request for its signature (401): the secrets differ.
    SignatureRejected,
    /// A delivery over `limits.max_body_bytes` came without its body (another such body was
    /// held): it goes back to its queue unread.
    BodyDeferred,
    /// Ready messages and an idle worker wait `waited` for the rate limit's next token.
    RateLimited {
        /// Until the next token.
        waited: Duration,
    },
    /// `basic.ack` frames went out: one `multiple` ack (or none) and `single` others.
    AckFrames {
        /// A `multiple` ack was sent.
        multiple: bool,
        /// Single acks sent.
        single: u64,
    },
}

/// Where one subject's events go: its `/status` counters and its metrics, resolved once.
#[derive(Clone)]
pub struct SubjectEvents {
    subject: String,
    stats: Arc<SubjectStats>,
    hot: SubjectMetrics,
    metrics: Arc<Metrics>,
    /// `subjects.<name>.wait_threshold`: long-wait detection, off when `None`.
    wait_threshold: Option<Duration>,
}

impl SubjectEvents {
    /// The events of `subject`, counted in `stats` and `metrics`.
    #[must_use]
    pub(crate) fn new(subject: &str, stats: Arc<SubjectStats>, metrics: Arc<Metrics>) -> Self {
        Self {
            subject: subject.to_owned(),
            hot: metrics.for_subject(subject),
            stats,
            metrics,
            wait_threshold: None,
        }
    }

    /// With long-wait detection at `threshold` (`subjects.<name>.wait_threshold`).
    #[must_use]
    pub(crate) fn with_wait_threshold(mut self, threshold: Option<Duration>) -> Self {
        self.wait_threshold = threshold;
        self
    }

    /// A message handed over after `seconds` in the queue: starts or ends a long-wait episode.
    fn long_wait(&self, seconds: u64) {
        let Some(threshold) = self.wait_threshold else {
            return;
        };
        let long = Duration::from_secs(seconds) >= threshold;
        let was = self.stats.long_wait.swap(long, Ordering::Relaxed);
        match (was, long) {
            (false, true) => {
                self.hot.long_wait.set(1);
                self.hot.long_wait_episodes.inc();
                tracing::warn!(subject = %self.subject, waited_s = seconds, threshold = ?threshold, "Long wait detected: messages wait in the queue longer than subjects.<name>.wait_threshold (a larger pool, more agents, or a rate limit too low?)");
            }
            (true, false) => {
                self.hot.long_wait.set(0);
                tracing::info!(subject = %self.subject, waited_s = seconds, "Long wait over: messages wait less than the threshold again");
            }
            _ => {}
        }
    }

    /// Counts `event` in `/status` and in `/metrics`.
    pub(crate) fn emit(&self, event: Event<'_>) {
        let stats = &self.stats;
        match event {
            Event::Received => {
                SubjectStats::incr(&stats.received);
                self.hot.received.inc();
            }
            Event::Acked(n) => {
                SubjectStats::add(&stats.acked, n);
                self.hot.acked.inc_by(n);
            }
            Event::Requeued => {
                SubjectStats::incr(&stats.requeued);
                self.hot.requeued.inc();
            }
            Event::Retried { reason } => {
                SubjectStats::incr(&stats.retried);
                Metrics::settled(&self.metrics.retried, &self.subject, reason);
            }
            Event::DeadLettered { reason } => {
                SubjectStats::incr(&stats.dead_lettered);
                Metrics::settled(&self.metrics.dead_lettered, &self.subject, reason);
            }
            Event::WorkerFailed => {
                SubjectStats::incr(&stats.worker_restarts);
                self.actor_restart("worker");
            }
            Event::ConsumerStarting => SubjectStats::incr(&stats.consumer_starts),
            Event::Consuming => {
                stats.consuming.store(true, Ordering::Relaxed);
                if stats.consumer_starts.load(Ordering::Relaxed) > 1 {
                    self.metrics
                        .reconnects
                        .get_or_create(&Metrics::subject(&self.subject))
                        .inc();
                }
            }
            Event::ConsumerFailed => self.actor_restart("consumer"),
            Event::FpmReplied { status, elapsed } => {
                self.hot.fpm_duration.observe(elapsed.as_secs_f64());
                #[allow(clippy::cast_possible_truncation)]
                stats.runtime_window.record(
                    std::time::Instant::now(),
                    (elapsed.as_secs_f64() * 1e3) as f32,
                );
                SubjectStats::incr(&stats.fpm_requests);
                SubjectStats::add(
                    &stats.fpm_micros,
                    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                );
                if status == "200" {
                    self.hot.fpm_ok.inc();
                } else {
                    self.metrics.fpm_response(&self.subject, status);
                }
            }
            #[allow(clippy::cast_precision_loss)]
            Event::QueueWait { seconds } => {
                self.long_wait(seconds);
                stats
                    .wait_window
                    .record(std::time::Instant::now(), seconds as f32);
                self.hot.queue_wait.observe(seconds as f64);
                SubjectStats::incr(&stats.queue_waits);
                SubjectStats::add(&stats.queue_wait_seconds, seconds);
                stats
                    .queue_wait_last_seconds
                    .store(seconds, Ordering::Relaxed);
            }
            #[allow(clippy::cast_precision_loss)]
            Event::BatchSent { size } => self
                .metrics
                .batch_size
                .get_or_create(&Metrics::subject(&self.subject))
                .observe(size as f64),
            Event::MissingMessageId => {
                self.hot.missing_message_id.inc();
            }
            Event::SignatureRejected => {
                self.hot.signature_rejected.inc();
            }
            Event::BodyDeferred => {
                self.hot.body_deferred.inc();
            }
            Event::RateLimited { waited } => {
                self.hot.rate_limit_wait.inc_by(waited.as_secs_f64());
            }
            Event::AckFrames { multiple, single } => {
                if multiple {
                    self.hot.ack_multiple.inc();
                }
                if single > 0 {
                    self.hot.ack_single.inc_by(single);
                }
            }
        }
    }

    fn actor_restart(&self, actor: &str) {
        let labels = ActorLabels {
            subject: self.subject.clone(),
            actor: actor.to_owned(),
        };
        self.metrics.actor_restarts.get_or_create(&labels).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn each_event_feeds_status_and_metrics_once() {
        let stats = Arc::new(SubjectStats::default());
        let metrics = Arc::new(Metrics::new(
            std::collections::BTreeMap::from([("event".to_owned(), stats.clone())]),
            &crate::upstreams::InForce::default(),
            &crate::fpm_status::monitor::Monitor::default(),
        ));
        let events = SubjectEvents::new("event", stats.clone(), metrics.clone());
        events.emit(Event::Received);
        events.emit(Event::Acked(3));
        events.emit(Event::Requeued);
        events.emit(Event::Retried { reason: "timeout" });
        events.emit(Event::DeadLettered {
            reason: "max_attempts",
        });
        events.emit(Event::WorkerFailed);
        events.emit(Event::FpmReplied {
            status: "200",
            elapsed: Duration::from_millis(3),
        });
        events.emit(Event::FpmReplied {
            status: "timeout",
            elapsed: Duration::from_secs(1),
        });
        events.emit(Event::MissingMessageId);
        events.emit(Event::SignatureRejected);
        events.emit(Event::BodyDeferred);
        events.emit(Event::RateLimited {
            waited: Duration::from_millis(250),
        });
        events.emit(Event::AckFrames {
            multiple: true,
            single: 2,
        });
        let s = stats.snapshot();
        assert_eq!(
            (s.received, s.acked, s.requeued, s.retried, s.dead_lettered),
            (1, 3, 1, 1, 1)
        );
        assert_eq!(s.worker_restarts, 1);
        let text = metrics.encode();
        for line in [
            r#"amqp_agent_rate_limit_wait_seconds_total{subject="event"} 0.25"#,
            r#"amqp_agent_signature_rejected_total{subject="event"} 1"#,
            r#"amqp_agent_body_deferred_total{subject="event"} 1"#,
            r#"amqp_agent_messages_received_total{subject="event"} 1"#,
            r#"amqp_agent_messages_acked_total{subject="event"} 3"#,
            r#"amqp_agent_messages_requeued_total{subject="event"} 1"#,
            r#"amqp_agent_messages_retried_total{subject="event",reason="timeout"} 1"#,
            r#"amqp_agent_messages_dead_lettered_total{subject="event",reason="max_attempts"} 1"#,
            r#"amqp_agent_actor_restarts_total{subject="event",actor="worker"} 1"#,
            r#"amqp_agent_fpm_responses_total{subject="event",status="200"} 1"#,
            r#"amqp_agent_fpm_responses_total{subject="event",status="timeout"} 1"#,
            r#"amqp_agent_fpm_request_duration_seconds_count{subject="event"} 2"#,
            r#"amqp_agent_messages_without_message_id_total{subject="event"} 1"#,
            r#"amqp_agent_ack_frames_total{subject="event",kind="multiple"} 1"#,
            r#"amqp_agent_ack_frames_total{subject="event",kind="single"} 2"#,
        ] {
            assert!(count(&text, line), "{line} in\n{text}");
        }
    }

    #[test]
    fn only_a_second_start_counts_as_a_reconnect() {
        let stats = Arc::new(SubjectStats::default());
        let metrics = Arc::new(Metrics::new(
            std::collections::BTreeMap::new(),
            &crate::upstreams::InForce::default(),
            &crate::fpm_status::monitor::Monitor::default(),
        ));
        let events = SubjectEvents::new("event", stats.clone(), metrics.clone());
        let reconnects = r#"amqp_agent_reconnects_total{subject="event"} 1"#;
        events.emit(Event::ConsumerStarting);
        events.emit(Event::Consuming);
        assert!(!count(&metrics.encode(), reconnects));
        assert!(stats.snapshot().consuming);
        events.emit(Event::ConsumerStarting);
        events.emit(Event::Consuming);
        assert!(count(&metrics.encode(), reconnects));
        assert_eq!(stats.snapshot().consumer_starts, 2);
    }

    #[test]
    fn a_long_wait_is_one_episode_until_a_message_waits_less() {
        let stats = Arc::new(SubjectStats::default());
        let metrics = Arc::new(Metrics::new(
            std::collections::BTreeMap::new(),
            &crate::upstreams::InForce::default(),
            &crate::fpm_status::monitor::Monitor::default(),
        ));
        let events = SubjectEvents::new("event", stats.clone(), metrics.clone())
            .with_wait_threshold(Some(Duration::from_secs(60)));
        for seconds in [5, 61, 90, 120] {
            events.emit(Event::QueueWait { seconds });
        }
        let text = metrics.encode();
        assert!(
            text.contains(r#"amqp_agent_long_wait{subject="event"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"amqp_agent_long_wait_episodes_total{subject="event"} 1"#),
            "{text}"
        );
        assert!(stats.long_wait.load(Ordering::Relaxed));
        events.emit(Event::QueueWait { seconds: 2 });
        events.emit(Event::QueueWait { seconds: 75 });
        let text = metrics.encode();
        assert!(
            text.contains(r#"amqp_agent_long_wait_episodes_total{subject="event"} 2"#),
            "{text}"
        );
        // Off without a threshold.
        let quiet = SubjectEvents::new("command", stats.clone(), metrics.clone());
        quiet.emit(Event::QueueWait { seconds: 10_000 });
        assert!(
            !metrics
                .encode()
                .contains(r#"amqp_agent_long_wait_episodes_total{subject="command"} 1"#)
        );
    }
}
