//! FPM worker: handles one delivery at a time, on a FastCGI connection leased per request from
//! the agent's pool (`crate::upstreams`).
//!
//! Invariant: a delivery is acked only after FPM answered with success, or after its retry or
//! dead-letter copy was confirmed by the broker. Every other path leaves it unacked or nacks it
//! back to its queue.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use lapin::BasicProperties;
use lapin::message::Delivery;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, DerivedActorRef};
use tracing::{Instrument, warn};

use super::SubjectRuntime;
use super::acks::Acks;
use crate::broker::Publisher;
use crate::contract::{self, Envelope};
use crate::printable::printable;
use crate::provenance::{self, Binding};
use crate::telemetry::{self, events::Event};
use crate::trace_context;

pub(crate) mod batch;
mod entry;
mod fpm;
mod settle;

use entry::{Entry, Settler};
pub(super) use fpm::fastcgi_span;
use fpm::request;
pub(super) use settle::{Original, ack, settle};

/// Longest `x-agent-last-error` / log excerpt of PHP output, in bytes.
pub(super) const EXCERPT: usize = 1024;

/// The worker actor.
pub(crate) struct FpmWorker;

/// A worker's state. Its FastCGI connection is leased per request from the agent's pool
/// (`upstreams`), so a worker with nothing to do holds no FPM child.
pub(crate) struct WorkerState {
    pub(super) runtime: Arc<SubjectRuntime>,
    consumer: DerivedActorRef<WorkerIdle>,
}

/// Messages a worker accepts.
pub(crate) enum WorkerMsg {
    /// Handle this delivery, then report back to the consumer.
    Handle(Box<Job>),
    /// Handle these deliveries in one request (`batch_max` > 1), then report back.
    Batch(Box<batch::BatchJob>),
}

/// One delivery and the publisher of the consumer incarnation that received it.
pub(crate) struct Job {
    /// The delivery (its acker is bound to the channel it came from).
    pub delivery: Delivery,
    /// Confirm-mode channel for retry and dead-letter copies.
    pub publisher: Arc<Publisher>,
    /// Settles the delivery on its channel.
    pub acks: Acks,
}

/// What a worker is started with.
pub(crate) struct WorkerArgs {
    /// The subject's shared runtime.
    pub runtime: Arc<SubjectRuntime>,
    /// The consumer to report to.
    pub consumer: DerivedActorRef<WorkerIdle>,
}

/// What a worker reports to its consumer after each message: it is idle again, and what the
/// consumer must act on. The consumer accepts it as one of its messages; the worker does not
/// know the consumer's message type.
#[derive(Debug)]
pub(crate) struct WorkerIdle {
    /// Which worker.
    pub worker: ActorId,
    /// FPM could not be reached for that message (opens the circuit breaker).
    pub fpm_unreachable: bool,
    /// PHP refused the request's signature (401): the secrets differ, the subject pauses.
    pub signature_rejected: bool,
    /// The publish channel is closed; this consumer incarnation must be replaced.
    pub publisher_broken: bool,
    /// The request's timing, when every message got an outcome (`batch_max = "auto"` learns
    /// from it).
    pub observed: Option<crate::batch::auto::Observed>,
}

/// What handling a message or a batch tells the worker's report.
#[derive(Debug, Default)]
pub(super) struct Handled {
    /// FPM could not be reached.
    pub fpm_unreachable: bool,
    /// PHP refused a signature (401).
    pub signature_rejected: bool,
    /// See [`WorkerIdle::observed`].
    pub observed: Option<crate::batch::auto::Observed>,
}

impl Actor for FpmWorker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        Ok(WorkerState {
            runtime: args.runtime,
            consumer: args.consumer,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: WorkerMsg,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Handle(job) => {
                if let Some(hook) = &state.runtime.hook {
                    hook(&job.delivery);
                }
                let publisher = job.publisher.clone();
                let handled = handle_job(state, *job).await;
                let report = WorkerIdle {
                    worker: myself.get_id(),
                    fpm_unreachable: handled.fpm_unreachable,
                    signature_rejected: handled.signature_rejected,
                    publisher_broken: !publisher.usable(),
                    observed: handled.observed,
                };
                // The consumer may be gone during shutdown; nothing to report to then.
                let _ = state.consumer.send_message(report);
            }
            WorkerMsg::Batch(job) => {
                if let Some(hook) = &state.runtime.hook {
                    for delivery in &job.deliveries {
                        hook(delivery);
                    }
                }
                let publisher = job.publisher.clone();
                let handled = batch::handle_batch(state, *job).await;
                let report = WorkerIdle {
                    worker: myself.get_id(),
                    fpm_unreachable: handled.fpm_unreachable,
                    signature_rejected: handled.signature_rejected,
                    publisher_broken: !publisher.usable(),
                    observed: handled.observed,
                };
                let _ = state.consumer.send_message(report);
            }
        }
        Ok(())
    }
}

/// Longest wait for the channel's held acks before a suspect runs (a broker that blocks the
/// connection writes nothing).
const SUSPECT_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Handles one delivery end to end.
async fn handle_job(state: &mut WorkerState, job: Job) -> Handled {
    let Job {
        delivery,
        publisher,
        acks,
    } = job;
    let runtime = state.runtime.clone();
    // Crash-loop protection: the start record is written before FPM is called, the done
    // record when the entry is settled.
    let key = crate::poison::journal::key_of(&delivery);
    let tracked = runtime.crashes.begin(&key, delivery.redelivered).await;
    let entry = Entry::new(
        &runtime,
        &delivery,
        message_id(&delivery.properties),
        tracked,
    );
    if entry.alone() {
        // A suspect may kill the agent again: the acks its channel still holds back (messages
        // settled before it, up to `acks::HOLD_MAX` behind an older tag) are written first, so
        // that they are not handled a second time after that crash.
        let _ = tokio::time::timeout(SUSPECT_FLUSH_TIMEOUT, acks.flush()).await;
    }
    let settler = Settler::new(&runtime, &publisher, &acks);
    // A redelivery that was in flight during `agent.poison_after` crashes never reaches FPM.
    let attempt = match entry.poison() {
        Some(crashes) => fpm::Attempt::unsent(crate::poison::verdict(crashes)),
        None => {
            request(&runtime, &entry)
                .instrument(entry.span.clone())
                .await
        }
    };
    settler.settle(&entry, attempt.verdict).await;
    Handled {
        fpm_unreachable: attempt.unreached,
        signature_rejected: settler.pauses(),
        observed: attempt.observed,
    }
}

/// The message id of a delivery, or a generated one (true).
pub(super) fn message_id(props: &BasicProperties) -> (Cow<'_, str>, bool) {
    match props.message_id() {
        Some(id) if !id.as_str().is_empty() => (Cow::Borrowed(id.as_str()), false),
        _ => (Cow::Owned(uuid::Uuid::new_v4().to_string()), true),
    }
}

/// The envelope of a delivery: attempt and original route only from headers the agent sealed
/// (see `provenance`), and why the others were ignored.
pub(super) fn envelope_of<'a>(
    runtime: &'a SubjectRuntime,
    delivery: &'a Delivery,
    message_id: Cow<'a, str>,
    generated: bool,
) -> (Envelope<'a>, Option<provenance::Untrusted>) {
    let props = &delivery.properties;
    let headers = props.headers().as_ref();
    let (agent_state, untrusted) = provenance::read(
        headers,
        &runtime.config.fpm.signing_secrets,
        &Binding {
            queue: &runtime.subject().queue,
            message_id: props.message_id().as_ref().map_or("", |id| id.as_str()),
            body: &delivery.data,
        },
    );
    let envelope = Envelope {
        subject: &runtime.name,
        message_id,
        message_id_generated: generated,
        attempt: agent_state.attempt,
        redelivered: delivery.redelivered,
        routing_key: agent_state
            .original_routing_key
            .unwrap_or(delivery.routing_key.as_str()),
        exchange: agent_state
            .original_exchange
            .unwrap_or(delivery.exchange.as_str()),
        content_type: props.content_type().as_ref().map(|s| s.as_str()),
        kind: props.kind().as_ref().map(|s| s.as_str()),
        correlation_id: props.correlation_id().as_ref().map(|s| s.as_str()),
        timestamp: *props.timestamp(),
        headers,
    };
    (envelope, untrusted)
}

/// The `message` span of a delivery (`<queue> process`; with export on, a child of its
/// `traceparent`), with its trace id and queue wait recorded.
pub(super) fn message_span(
    runtime: &SubjectRuntime,
    delivery: &Delivery,
    message_id: &str,
    attempt: u32,
    incoming: &trace_context::Incoming<'_>,
) -> tracing::Span {
    let queue = &runtime.subject().queue;
    let props = &delivery.properties;
    // OpenTelemetry messaging conventions; `subject`, `message_id`, `attempt` and `trace_id`
    // also appear on every log line emitted inside the span.
    // Exported spans carry OpenTelemetry's messaging attributes; without an exporter the span
    // only holds what log lines need, so the per-message cost stays small.
    let span = if telemetry::enabled() {
        tracing::info_span!(
            "message",
            otel.name = %format!("{queue} process"),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "process",
            messaging.destination.name = %queue,
            messaging.message.id = %printable(message_id),
            messaging.rabbitmq.destination.routing_key = %printable(delivery.routing_key.as_str()),
            messaging.message.body.size = delivery.data.len(),
            subject = %runtime.name,
            message_id = %printable(message_id),
            attempt,
            redelivered = delivery.redelivered,
            queue_wait_ms = tracing::field::Empty,
            outcome = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        )
    } else {
        tracing::info_span!(
            "message",
            subject = %runtime.name,
            message_id = %printable(message_id),
            attempt,
            trace_id = tracing::field::Empty,
        )
    };
    telemetry::set_parent_from_headers(&span, props.headers().as_ref());
    if let Some(id) = telemetry::trace_id(&span).or_else(|| incoming.trace_id().map(str::to_owned))
    {
        span.record("trace_id", id.as_str());
    }
    if let Some(ts) = *props.timestamp() {
        let wait = contract::unix_now().saturating_sub(ts);
        span.record("queue_wait_ms", wait * 1000);
        runtime.events.emit(Event::QueueWait { seconds: wait });
    }
    span
}

/// Inside the message's span: logs what is wrong with the delivery (a generated id, ignored
/// state headers, a malformed `traceparent`).
pub(super) fn admitted(
    runtime: &SubjectRuntime,
    generated: bool,
    untrusted: Option<&provenance::Untrusted>,
    incoming: &trace_context::Incoming<'_>,
) {
    if generated {
        runtime.events.emit(Event::MissingMessageId);
        if let Some(count) = runtime.missing_id_log.note(Instant::now()) {
            warn!(
                count,
                "Messages without message_id (count since the last such line, at most one a minute): \
                 the agent generates ids; set the AMQP message_id when publishing (see docs/php-frameworks.md#message-ids)"
            );
        }
    }
    if let Some(why) = untrusted {
        warn_untrusted(runtime, why);
    }
    if let Some(tp) = incoming.malformed {
        warn!(traceparent = %printable(tp), "Malformed traceparent header; not forwarded to PHP");
    }
}

/// Logs that a delivery's state headers were ignored, at most once a minute per subject.
fn warn_untrusted(runtime: &SubjectRuntime, why: &provenance::Untrusted) {
    let Some(count) = runtime.untrusted_state_log.note(Instant::now()) else {
        return;
    };
    let value = match why {
        provenance::Untrusted::Malformed(raw) => raw.as_str(),
        _ => "",
    };
    warn!(
        reason = why.reason(),
        value = %printable(value),
        count,
        "Ignoring x-agent-* state headers the agent did not set; handling the message as attempt 1 on its own route ({count} such message(s) since the last warning)"
    );
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = contract::clean(&s[..end]).into_owned();
    if end < s.len() {
        out.push('…');
    }
    out
}
