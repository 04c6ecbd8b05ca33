//! FPM worker: handles one delivery at a time, on a FastCGI connection leased per request from
//! the agent's pool (`crate::upstreams`).
//!
//! Invariant: a delivery is acked only after FPM answered with success, or after its retry or
//! dead-letter copy was confirmed by the broker. Every other path leaves it unacked or nacks it
//! back to its queue.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, LongString};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{Instrument, debug, error, info, warn};

use super::SubjectRuntime;
use super::acks::Acks;
use super::consumer::ConsumerMsg;
use super::stats::SubjectStats;
use crate::broker::Publisher;
use crate::contract::{self, ATTEMPT_HEADER, Envelope, LAST_ERROR_HEADER};
use crate::fastcgi::Reply;
use crate::outcome::{self, Decision, Verdict};
use crate::printable::printable;
use crate::provenance::{self, Binding};
use crate::telemetry::{self, metrics::Metrics};

/// Longest `x-agent-last-error` / log excerpt of PHP output, in bytes.
pub(super) const EXCERPT: usize = 1024;

/// The worker actor.
pub struct FpmWorker;

/// A worker's state. Its FastCGI connection is leased per request from the agent's pool
/// (`upstreams`), so a worker with nothing to do holds no FPM child.
pub struct WorkerState {
    pub(super) runtime: Arc<SubjectRuntime>,
    consumer: ActorRef<ConsumerMsg>,
}

/// Messages a worker accepts.
pub enum WorkerMsg {
    /// Handle this delivery, then report back to the consumer.
    Handle(Box<Job>),
    /// Handle these deliveries in one request (`batch_max` > 1), then report back.
    Batch(Box<super::batch::BatchJob>),
}

/// One delivery and the publisher of the consumer incarnation that received it.
pub struct Job {
    /// The delivery (its acker is bound to the channel it came from).
    pub delivery: Delivery,
    /// Confirm-mode channel for retry and dead-letter copies.
    pub publisher: Arc<Publisher>,
    /// Settles the delivery on its channel.
    pub acks: Acks,
}

/// What a worker is started with.
pub struct WorkerArgs {
    /// The subject's shared runtime.
    pub runtime: Arc<SubjectRuntime>,
    /// The consumer to report to.
    pub consumer: ActorRef<ConsumerMsg>,
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
                let publisher_usable = {
                    let publisher = job.publisher.clone();
                    let unreached = handle_job(state, *job).await;
                    (unreached, publisher.usable())
                };
                // The consumer may be gone during shutdown; nothing to report to then.
                let _ = state.consumer.cast(ConsumerMsg::WorkerIdle {
                    worker: myself.get_id(),
                    fpm_unreachable: publisher_usable.0,
                    publisher_broken: !publisher_usable.1,
                });
            }
            WorkerMsg::Batch(job) => {
                let publisher = job.publisher.clone();
                let unreached = super::batch::handle_batch(state, *job).await;
                let _ = state.consumer.cast(ConsumerMsg::WorkerIdle {
                    worker: myself.get_id(),
                    fpm_unreachable: unreached,
                    publisher_broken: !publisher.usable(),
                });
            }
        }
        Ok(())
    }
}

/// Handles one delivery end to end. Returns true when FPM could not be reached.
async fn handle_job(state: &mut WorkerState, job: Job) -> bool {
    let Job {
        delivery,
        publisher,
        acks,
    } = job;
    let runtime = state.runtime.clone();
    let props = &delivery.properties;
    let headers = props.headers().as_ref();
    let (message_id, generated) = message_id(props);
    #[cfg(feature = "fault-injection")]
    if message_id.starts_with("__panic__") && !delivery.redelivered {
        panic!("fault injection: worker panics on {message_id}");
    }
    // Crash-loop protection: the start record is written before FPM is called; dropping
    // `tracked` when the delivery is settled records it as done.
    let key = crate::poison::journal::key_of(&delivery);
    let tracked = runtime.crashes.begin(&key, delivery.redelivered).await;
    let (envelope, untrusted) = envelope_of(&runtime, &delivery, message_id.clone(), generated);
    let attempt = envelope.attempt;
    let span = message_span(&runtime, &delivery, &message_id, attempt);
    let process_span = span.clone();
    async {
        let (traceparent, tracestate) = admitted(&runtime, headers, generated, untrusted.as_ref());
        let copy = Copy {
            delivery: &delivery,
            message_id: &message_id,
            generated,
            attempt,
            exchange: envelope.exchange,
            routing_key: envelope.routing_key,
            span: &process_span,
        };
        if let Some(crashes) = tracked.poison() {
            let verdict = crate::poison::verdict(crashes);
            let decision = runtime.policy.decide(&verdict, attempt);
            settle(&runtime, &publisher, &acks, copy, &verdict, decision).await;
            return false;
        }
        let fcgi_span = fastcgi_span(&runtime);
        // PHP continues the trace from the FastCGI span when traces are exported; otherwise
        // it gets the publisher's context unchanged.
        let exported = telemetry::context_of(&fcgi_span);
        let trace = match &exported {
            Some((parent, state)) => (Some(parent.as_str()), state.as_deref()),
            None => (traceparent, tracestate),
        };
        let now = contract::unix_now();
        let (verdict, unreached) =
            match runtime
                .template
                .params(&envelope, &delivery.data, trace, now)
            {
                Err(e) => {
                    warn!(error = %e, "Message cannot be sent to FPM; dead-lettering it");
                    let verdict = Verdict::Permanent {
                        reason: e.reason(),
                        detail: e.to_string(),
                        status: None,
                    };
                    (verdict, false)
                }
                Ok(params) => {
                    let running = runtime.metrics.fpm.running(&runtime.name, &message_id);
                    attempt_fpm(&runtime, &running, &params, &delivery.data)
                        .instrument(fcgi_span)
                        .await
                }
            };
        let decision = runtime.policy.decide(&verdict, attempt);
        settle(&runtime, &publisher, &acks, copy, &verdict, decision).await;
        unreached
    }
    .instrument(span)
    .await
}

/// The `FastCGI POST` span of a request (a `none` span without trace export).
pub(super) fn fastcgi_span(runtime: &SubjectRuntime) -> tracing::Span {
    if telemetry::enabled() {
        tracing::info_span!(
            "fastcgi",
            otel.name = "FastCGI POST",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            server.address = %runtime.config.fpm.address,
            http.request.method = "POST",
            url.path = %runtime.template.request_uri(),
            http.response.status_code = tracing::field::Empty,
            http.response.body.size = tracing::field::Empty,
            error.type = tracing::field::Empty,
            amqp_agent.batch.size = tracing::field::Empty,
        )
    } else {
        tracing::Span::none()
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

/// The message id of a delivery, or a generated one (true).
pub(super) fn message_id(props: &BasicProperties) -> (Cow<'_, str>, bool) {
    match props.message_id() {
        Some(id) if !id.as_str().is_empty() => (Cow::Borrowed(id.as_str()), false),
        _ => (Cow::Owned(uuid::Uuid::new_v4().to_string()), true),
    }
}

/// The `message` span of a delivery (`<queue> process`), a child of its `traceparent`.
pub(super) fn message_span(
    runtime: &SubjectRuntime,
    delivery: &Delivery,
    message_id: &str,
    attempt: u32,
) -> tracing::Span {
    let queue = &runtime.subject().queue;
    let props = &delivery.properties;
    let headers = props.headers().as_ref();
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
    telemetry::set_parent_from_headers(&span, headers);
    let incoming_trace = contract::string_header(headers, "traceparent");
    if let Some(id) = telemetry::trace_id(&span).or_else(|| {
        incoming_trace
            .filter(|tp| valid_traceparent(tp))
            .map(|tp| tp[3..35].to_owned())
    }) {
        span.record("trace_id", id.as_str());
    }
    if let Some(ts) = *props.timestamp() {
        let wait = contract::unix_now().saturating_sub(ts);
        span.record("queue_wait_ms", wait * 1000);
        runtime.hot.queue_wait.observe(wait as f64);
    }
    span
}

/// Inside the message's span: logs what is wrong with the delivery (a generated id, ignored
/// state headers, a malformed `traceparent`) and returns the trace context to hand to PHP.
pub(super) fn admitted<'a>(
    runtime: &SubjectRuntime,
    headers: Option<&'a FieldTable>,
    generated: bool,
    untrusted: Option<&provenance::Untrusted>,
) -> (Option<&'a str>, Option<&'a str>) {
    if generated {
        runtime.hot.missing_message_id.inc();
        if let Some(count) = runtime.missing_id_log.note(Instant::now()) {
            warn!(
                count,
                "Messages without message_id (count since the last such line, at most one a minute): \
                 the agent generates ids; set the AMQP message_id when publishing (README: Message ids)"
            );
        }
    }
    if let Some(why) = untrusted {
        warn_untrusted(runtime, why);
    }
    let traceparent = contract::string_header(headers, "traceparent").filter(|tp| {
        let ok = valid_traceparent(tp);
        if !ok {
            warn!(traceparent = %printable(tp), "Malformed traceparent header; not forwarded to PHP");
        }
        ok
    });
    (
        traceparent,
        traceparent.and(contract::string_header(headers, "tracestate")),
    )
}

/// One FastCGI request, timed and classified; records status and size on the current span.
async fn attempt_fpm(
    runtime: &SubjectRuntime,
    running: &crate::fpm_status::monitor::RunningGuard<'_>,
    params: &[(&'static str, Cow<'_, str>)],
    body: &[u8],
) -> (Verdict, bool) {
    let span = tracing::Span::current();
    let started = Instant::now();
    let sent = runtime
        .upstreams
        .request(params, body, |i| running.set_upstream(i))
        .await;
    let result = sent.result;
    let elapsed = started.elapsed();
    let require_ack = runtime.config.fpm.require_ack_header;
    let (verdict, unreached, status) = match result {
        Ok(reply) => {
            span.record("http.response.body.size", reply.size);
            match outcome::parse_head(&reply.stdout) {
                Ok(head) => {
                    span.record("http.response.status_code", head.status);
                    let verdict = outcome::classify_reply(&head, require_ack, || excerpt(&reply));
                    let status = if head.status == 200 {
                        Cow::Borrowed("200")
                    } else {
                        Cow::Owned(head.status.to_string())
                    };
                    (verdict, false, status)
                }
                Err(e) => {
                    let verdict = Verdict::Transient {
                        reason: "fpm_malformed_reply",
                        detail: format!("{e}: {}", excerpt(&reply)),
                        status: None,
                        retry_after: None,
                        counts: true,
                    };
                    (verdict, false, Cow::Borrowed("fpm_malformed_reply"))
                }
            }
        }
        Err(e) => {
            let unreached = e.unreached();
            let verdict = Verdict::Transient {
                reason: e.reason(),
                detail: e.to_string(),
                status: None,
                retry_after: None,
                counts: !unreached,
            };
            (verdict, unreached, Cow::Borrowed(e.reason()))
        }
    };
    runtime.hot.fpm_duration.observe(elapsed.as_secs_f64());
    if status == "200" {
        runtime.hot.fpm_ok.inc();
    } else {
        runtime.metrics.fpm_response(&runtime.name, &status);
    }
    if !matches!(verdict, Verdict::Success) {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", describe(&verdict).0);
    }
    (verdict, unreached)
}

/// The delivery being settled and what identifies it.
pub(super) struct Copy<'a> {
    pub(super) delivery: &'a Delivery,
    pub(super) message_id: &'a str,
    pub(super) generated: bool,
    pub(super) attempt: u32,
    /// Where the message was first published (trusted, see `provenance`).
    pub(super) exchange: &'a str,
    pub(super) routing_key: &'a str,
    /// The message's process span: outcome recorded on it, its context carried by copies.
    pub(super) span: &'a tracing::Span,
}

/// Acts on the decision: ack, or republish (confirmed) then ack, or nack on failure.
pub(super) async fn settle(
    runtime: &SubjectRuntime,
    publisher: &Publisher,
    acks: &Acks,
    copy: Copy<'_>,
    verdict: &Verdict,
    decision: Decision,
) {
    let stats = &runtime.stats;
    let delivery = copy.delivery;
    let span = copy.span;
    let published = match &decision {
        Decision::Ack => {
            debug!("Handled");
            span.record("outcome", "ack");
            acks.ack(delivery.delivery_tag, true);
            return;
        }
        Decision::Retry {
            delay,
            next_attempt,
        } => {
            let (reason, detail) = describe(verdict);
            info!(reason, detail = %printable(&detail).capped(EXCERPT), delay = ?delay, next_attempt, "Attempt failed; retrying later");
            span.record("outcome", "retry");
            span.record("otel.status_code", "ERROR");
            let props = republished(runtime, &copy, |h| {
                h.insert(
                    ATTEMPT_HEADER.into(),
                    AMQPValue::LongLongInt(i64::from(*next_attempt)),
                );
                h.insert(
                    LAST_ERROR_HEADER.into(),
                    text(&format!("{reason}: {detail}")),
                );
            });
            publisher
                .publish_delayed(*delay, &delivery.data, props)
                .await
                .map(|()| reason)
        }
        Decision::DeadLetter { reason } => {
            let (cause, detail) = describe(verdict);
            warn!(reason, cause, detail = %printable(&detail).capped(EXCERPT), "Dead-lettering message");
            span.record("outcome", "dead_letter");
            span.record("otel.status_code", "ERROR");
            let status = match verdict {
                Verdict::Transient { status, .. } | Verdict::Permanent { status, .. } => *status,
                Verdict::Success => None,
            };
            let props = republished(runtime, &copy, |h| {
                // Headers too deep to encode (or cut by the AMQP parser), and the largest ones
                // when the copy would not fit in one frame, are left out of the copy;
                // x-agent-last-error names them.
                let mut removed =
                    contract::remove_too_deep(h, runtime.config.limits.max_header_depth);
                let budget =
                    (publisher.frame_max() as usize).saturating_sub(contract::COPY_FRAME_RESERVE);
                removed.extend(contract::shrink_to_fit(h, budget));
                let detail = if removed.is_empty() {
                    detail
                } else {
                    truncate(
                        &format!("{detail}; left out of this copy: {}", removed.join(", ")),
                        EXCERPT,
                    )
                };
                h.insert("x-agent-reason".into(), text(reason));
                h.insert(
                    "x-agent-status".into(),
                    AMQPValue::LongLongInt(status.map_or(0, i64::from)),
                );
                h.insert(
                    "x-agent-attempts".into(),
                    AMQPValue::LongLongInt(i64::from(copy.attempt)),
                );
                h.insert(
                    LAST_ERROR_HEADER.into(),
                    text(&format!("{cause}: {detail}")),
                );
                h.insert("x-agent-subject".into(), text(&runtime.name));
                h.insert(
                    "x-agent-dead-lettered-at".into(),
                    AMQPValue::Timestamp(contract::unix_now()),
                );
            });
            publisher
                .publish_dead(&delivery.data, props)
                .await
                .map(|()| *reason)
        }
    };
    match published {
        Ok(reason) => {
            match decision {
                Decision::Retry { .. } => {
                    SubjectStats::incr(&stats.retried);
                    Metrics::settled(&runtime.metrics.retried, &runtime.name, reason);
                }
                _ => {
                    SubjectStats::incr(&stats.dead_lettered);
                    Metrics::settled(&runtime.metrics.dead_lettered, &runtime.name, reason);
                }
            }
            acks.ack(delivery.delivery_tag, false);
        }
        Err(e) => {
            error!(error = %e, "Could not store the retry/dead-letter copy; returning the message to its queue");
            // A short pause so a broker that refuses every publish does not spin the message.
            tokio::time::sleep(Duration::from_millis(500)).await;
            acks.nack(delivery.delivery_tag);
        }
    }
}

pub(super) fn describe(verdict: &Verdict) -> (&'static str, String) {
    match verdict {
        Verdict::Success => ("success", String::new()),
        Verdict::Transient { reason, detail, .. } | Verdict::Permanent { reason, detail, .. } => {
            (reason, truncate(detail, EXCERPT))
        }
    }
}

/// Properties of a retry or dead-letter copy: the original's, with the edited headers, the
/// (possibly generated) message id, where the message was first published (so later attempts
/// still tell PHP the original exchange and routing key) and the agent's seal over that state.
fn republished(
    runtime: &SubjectRuntime,
    copy: &Copy<'_>,
    edit: impl FnOnce(&mut FieldTable),
) -> BasicProperties {
    let delivery = copy.delivery;
    let props = &delivery.properties;
    let mut headers = props.headers().clone().unwrap_or_default();
    // Overwritten, never kept: the delivery's own values may be a publisher's forgery.
    headers.insert(
        ATTEMPT_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(copy.attempt)),
    );
    headers.insert(
        contract::ORIGINAL_EXCHANGE_HEADER.into(),
        text(copy.exchange),
    );
    headers.insert(
        contract::ORIGINAL_ROUTING_KEY_HEADER.into(),
        text(copy.routing_key),
    );
    // The next attempt continues this trace.
    telemetry::inject_into_headers(copy.span, &mut headers);
    edit(&mut headers);
    let message_id = if copy.generated {
        crate::broker::short(copy.message_id)
    } else {
        props.message_id().clone().unwrap_or_default()
    };
    provenance::seal(
        &mut headers,
        &runtime.config.fpm.signing_secrets,
        &Binding {
            queue: &runtime.subject().queue,
            message_id: message_id.as_str(),
            body: &delivery.data,
        },
    );
    let mut out = props.clone().with_headers(headers);
    if copy.generated {
        out = out.with_message_id(message_id);
    }
    if props.delivery_mode().is_none() {
        out = out.with_delivery_mode(2);
    }
    out
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

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn excerpt(reply: &Reply) -> String {
    let out = String::from_utf8_lossy(&reply.stdout);
    let body = out.split_once("\r\n\r\n").map_or(out.as_ref(), |(_, b)| b);
    let mut s = truncate(body.trim(), EXCERPT / 2);
    if !reply.stderr.is_empty() {
        s.push_str(" | stderr: ");
        s.push_str(&truncate(
            String::from_utf8_lossy(&reply.stderr).trim(),
            EXCERPT / 2,
        ));
    }
    if s.is_empty() {
        "(empty body)".to_owned()
    } else {
        s
    }
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

/// W3C traceparent: `00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero.
#[must_use]
pub fn valid_traceparent(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}
