//! Settling a delivery on its decision: ack; or publish its retry or dead-letter copy (confirmed)
//! and then ack; or, when the copy was not stored, nack it back to its queue.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, LongString};
use tracing::{debug, error, info, warn};

use super::{EXCERPT, truncate};
use crate::actors::SubjectRuntime;
use crate::actors::acks::{Acked, Acks};
use crate::broker::{BrokerError, Publisher};
use crate::contract::{self, ATTEMPT_HEADER, LAST_ERROR_HEADER};
use crate::outcome::{Decision, Verdict};
use crate::printable::printable;
use crate::provenance::{self, Binding};
use crate::telemetry::{self, events::Event};

/// The delivery being settled (the original of any retry or dead-letter copy) and what
/// identifies it.
pub(in crate::actors) struct Original<'a> {
    pub(in crate::actors) delivery: &'a Delivery,
    pub(in crate::actors) message_id: &'a str,
    pub(in crate::actors) generated: bool,
    pub(in crate::actors) attempt: u32,
    /// Where the message was first published (trusted, see `provenance`).
    pub(in crate::actors) exchange: &'a str,
    pub(in crate::actors) routing_key: &'a str,
    /// The message's process span: outcome recorded on it, its context carried by copies.
    pub(in crate::actors) span: &'a tracing::Span,
}

/// Settles a delivery handled with success: the ack, without any await (the common case needs
/// no future: [`settle`] is for any decision).
pub(in crate::actors) fn ack(acks: &Acks, original: &Original<'_>) {
    debug!("Handled");
    original.span.record("outcome", "ack");
    acks.ack(original.delivery.delivery_tag, Acked::Handled);
}

/// Acts on the decision: ack, or republish (confirmed) then ack, or nack on failure.
pub(in crate::actors) async fn settle(
    runtime: &SubjectRuntime,
    publisher: &Publisher,
    acks: &Acks,
    original: Original<'_>,
    verdict: &Verdict,
    decision: Decision,
) {
    let tag = original.delivery.delivery_tag;
    let published = match &decision {
        Decision::Ack => {
            ack(acks, &original);
            return;
        }
        Decision::Retry {
            delay,
            next_attempt,
        } => {
            publish_retry(
                runtime,
                publisher,
                &original,
                verdict,
                *delay,
                *next_attempt,
            )
            .await
        }
        Decision::DeadLetter { reason } => {
            publish_dead(runtime, publisher, &original, verdict, reason).await
        }
    };
    match or_lean(runtime, publisher, &original, verdict, published).await {
        Ok(reason) => {
            match (&decision, reason) {
                (Decision::Retry { .. }, reason) if reason != COPY_REFUSED => {
                    runtime.events.emit(Event::Retried { reason });
                }
                (_, reason) => runtime.events.emit(Event::DeadLettered { reason }),
            }
            acks.ack(tag, Acked::CopyStored);
        }
        Err(e) => {
            error!(error = %e, "Could not store the retry/dead-letter copy; returning the message to its queue");
            // A short pause so a broker that refuses every publish does not spin the message.
            tokio::time::sleep(Duration::from_millis(500)).await;
            acks.nack(tag);
        }
    }
}

/// `published`, or when the copy could not be stored as it is (it would not fit a frame, or the
/// broker refused it and closed the channel over it) a lean dead-letter copy, which carries only
/// what the agent writes and is sure to be accepted.
async fn or_lean(
    runtime: &SubjectRuntime,
    publisher: &Publisher,
    original: &Original<'_>,
    verdict: &Verdict,
    published: Result<&'static str, BrokerError>,
) -> Result<&'static str, BrokerError> {
    match published {
        Err(e) if e.is_refused() || matches!(e, BrokerError::CopyTooLarge(_)) => {
            warn!(error = %e, "The broker would not take this message's copy; dead-lettering a lean copy");
            publish_lean(runtime, publisher, original, verdict, &e).await
        }
        other => other,
    }
}

/// `x-agent-reason` of a lean copy: the full copy was refused or would not fit a frame.
const COPY_REFUSED: &str = "copy_refused";

/// Publishes the retry copy (attempt + 1, the failure as `x-agent-last-error`) to the delay
/// queue of `delay`; returns the failure's reason once the broker confirmed it.
async fn publish_retry(
    runtime: &SubjectRuntime,
    publisher: &Publisher,
    original: &Original<'_>,
    verdict: &Verdict,
    delay: Duration,
    next_attempt: u32,
) -> Result<&'static str, BrokerError> {
    let (reason, detail) = describe(verdict);
    info!(reason, detail = %printable(&detail).capped(EXCERPT), delay = ?delay, next_attempt, "Attempt failed; retrying later");
    original.span.record("outcome", "retry");
    original.span.record("otel.status_code", "ERROR");
    let retry_headers = |h: &mut FieldTable, last_error: &str| {
        h.insert(
            ATTEMPT_HEADER.into(),
            AMQPValue::LongLongInt(i64::from(next_attempt)),
        );
        h.insert(LAST_ERROR_HEADER.into(), text(last_error));
    };
    let limit =
        (publisher.frame_max() as usize).saturating_sub(contract::copy::DEAD_LETTERING_GROWTH);
    let mut props = republished(runtime, original, Keep::All, |h| {
        retry_headers(h, &format!("{reason}: {detail}"));
    });
    if contract::copy::header_frame_len(&props) > limit {
        // The original's headers stay whole; what the agent adds is cut to the minimum.
        props = republished(runtime, original, Keep::Untraced, |h| {
            retry_headers(h, reason);
        });
    }
    let len = contract::copy::header_frame_len(&props);
    if len > limit {
        return Err(BrokerError::CopyTooLarge(format!(
            "the retry copy's content header would be {len} bytes, over frame_max less room for x-death ({limit})"
        )));
    }
    publisher
        .publish_delayed(delay, &original.delivery.data, props)
        .await
        .map(|()| reason)
}

/// Publishes the lean dead-letter copy: the body, `delivery_mode`, the message id and content
/// type when they are clean, and the agent's own headers only (the original's headers and
/// other properties are left out, and `x-agent-last-error` says why).
async fn publish_lean(
    runtime: &SubjectRuntime,
    publisher: &Publisher,
    original: &Original<'_>,
    verdict: &Verdict,
    refused: &BrokerError,
) -> Result<&'static str, BrokerError> {
    let (cause, detail) = describe(verdict);
    original.span.record("outcome", "dead_letter");
    let status = status_of(verdict);
    let why = truncate(
        &format!(
            "{cause}: {detail}; the full copy was not stored ({refused}), so this copy carries the body and the agent's headers only"
        ),
        EXCERPT,
    );
    let props = republished(runtime, original, Keep::Lean, |h| {
        dead_headers(h, runtime, original, COPY_REFUSED, status, &why);
    });
    publisher
        .publish_dead(&original.delivery.data, props)
        .await
        .map(|()| COPY_REFUSED)
}

fn status_of(verdict: &Verdict) -> Option<u16> {
    match verdict {
        Verdict::Transient { status, .. } | Verdict::Permanent { status, .. } => *status,
        Verdict::Success => None,
    }
}

/// The headers of a dead-letter copy.
fn dead_headers(
    h: &mut FieldTable,
    runtime: &SubjectRuntime,
    original: &Original<'_>,
    reason: &str,
    status: Option<u16>,
    last_error: &str,
) {
    h.insert(contract::REASON_HEADER.into(), text(reason));
    h.insert(
        contract::STATUS_HEADER.into(),
        AMQPValue::LongLongInt(status.map_or(0, i64::from)),
    );
    h.insert(
        contract::ATTEMPTS_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(original.attempt)),
    );
    h.insert(LAST_ERROR_HEADER.into(), text(last_error));
    h.insert(contract::SUBJECT_HEADER.into(), text(&runtime.name));
    h.insert(
        contract::DEAD_LETTERED_AT_HEADER.into(),
        AMQPValue::Timestamp(contract::unix_now()),
    );
}

/// Publishes the dead-letter copy with why, the last status, the attempts, the subject and when;
/// returns `reason` once the broker confirmed it.
async fn publish_dead(
    runtime: &SubjectRuntime,
    publisher: &Publisher,
    original: &Original<'_>,
    verdict: &Verdict,
    reason: &'static str,
) -> Result<&'static str, BrokerError> {
    let (cause, detail) = describe(verdict);
    warn!(reason, cause, detail = %printable(&detail).capped(EXCERPT), "Dead-lettering message");
    original.span.record("outcome", "dead_letter");
    original.span.record("otel.status_code", "ERROR");
    let status = status_of(verdict);
    let props = republished(runtime, original, Keep::All, |h| {
        // Headers too deep to encode (or cut by the AMQP parser), and the largest ones when the
        // copy would not fit in one frame, are left out of the copy; x-agent-last-error names
        // them.
        let mut removed = contract::remove_too_deep(h, runtime.config.limits.max_header_depth);
        let budget = (publisher.frame_max() as usize).saturating_sub(contract::COPY_FRAME_RESERVE);
        removed.extend(contract::shrink_to_fit(h, budget));
        let detail = if removed.is_empty() {
            detail
        } else {
            truncate(
                &format!("{detail}; left out of this copy: {}", removed.join(", ")),
                EXCERPT,
            )
        };
        dead_headers(
            h,
            runtime,
            original,
            reason,
            status,
            &format!("{cause}: {detail}"),
        );
    });
    let len = contract::copy::header_frame_len(&props);
    let frame_max = publisher.frame_max() as usize;
    if len > frame_max {
        return Err(BrokerError::CopyTooLarge(format!(
            "the dead-letter copy's content header would be {len} bytes, over frame_max {frame_max}"
        )));
    }
    publisher
        .publish_dead(&original.delivery.data, props)
        .await
        .map(|()| reason)
}

pub(super) fn describe(verdict: &Verdict) -> (&'static str, String) {
    match verdict {
        Verdict::Success => ("success", String::new()),
        Verdict::Transient { reason, detail, .. } | Verdict::Permanent { reason, detail, .. } => {
            (reason, truncate(detail, EXCERPT))
        }
    }
}

/// What a copy keeps of its original.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Every property and header the broker accepts again, and the trace context.
    All,
    /// The same without the trace context (a copy at the edge of `frame_max`).
    Untraced,
    /// Only `delivery_mode`, a clean message id and content type, and the agent's headers.
    Lean,
}

/// Properties of a retry or dead-letter copy: the original's, less what the broker could refuse
/// (see `contract::copy`), with the edited headers, the (possibly generated) message id, where
/// the message was first published (so later attempts still tell PHP the original exchange and
/// routing key) and the agent's seal over that state.
/// What a copy keeps of the original's properties: what the broker is sure to accept
/// (`contract::copy::sanitized`), and of that only the message id and content type when lean.
fn kept(original: &BasicProperties, keep: Keep) -> BasicProperties {
    let (clean, moved) = contract::copy::sanitized(original);
    if !moved.is_empty() {
        debug!(moved = ?moved, "Copy keeps these properties as headers");
    }
    if keep != Keep::Lean {
        return clean;
    }
    let mut lean = BasicProperties::default();
    if let Some(id) = clean.message_id() {
        lean = lean.with_message_id(id.clone());
    }
    if let Some(t) = clean.content_type() {
        lean = lean.with_content_type(t.clone());
    }
    lean
}

fn republished(
    runtime: &SubjectRuntime,
    original: &Original<'_>,
    keep: Keep,
    edit: impl FnOnce(&mut FieldTable),
) -> BasicProperties {
    let delivery = original.delivery;
    let props = kept(&delivery.properties, keep);
    let mut headers = props.headers().clone().unwrap_or_default();
    // Overwritten, never kept: the delivery's own values may be a publisher's forgery.
    headers.insert(
        ATTEMPT_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(original.attempt)),
    );
    headers.insert(
        contract::ORIGINAL_EXCHANGE_HEADER.into(),
        text(original.exchange),
    );
    headers.insert(
        contract::ORIGINAL_ROUTING_KEY_HEADER.into(),
        text(original.routing_key),
    );
    // The next attempt continues this trace.
    if keep == Keep::All {
        telemetry::inject_into_headers(original.span, &mut headers);
    }
    edit(&mut headers);
    let message_id = if original.generated {
        crate::broker::short(original.message_id)
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
    let mut out = props.with_headers(headers);
    if original.generated {
        out = out.with_message_id(message_id);
    }
    if delivery.properties.delivery_mode().is_none() || keep == Keep::Lean {
        out = out.with_delivery_mode(2);
    }
    out
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}
