//! What a subject needs on the broker (queues with their arguments, exchange, bindings), how to
//! declare it, and how to check it passively against what exists.

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use super::{BrokerError, amqp, dead_queue_name, delay_queue_name};
use crate::config::{Config, ExchangeType, QueueType, SubjectConfig};

/// One queue the agent needs, with the arguments it declares it with.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    /// Queue name.
    pub name: String,
    /// Declaration arguments.
    pub args: FieldTable,
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn typed(queue_type: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    // Classic queues are declared without `x-queue-type`, as before queue types existed, so
    // that queues declared by older agents stay equivalent.
    if queue_type == QueueType::Quorum {
        args.insert("x-queue-type".into(), text("quorum"));
    }
    args
}

/// Arguments of a subject's main queue: its type, `single_active_consumer`, the configured
/// `arguments`, and — with `x-delivery-limit` — broker dead-lettering to `<queue>.dead`, at
/// least once.
#[must_use]
pub(crate) fn main_queue_args(config: &Config, subject: &SubjectConfig) -> FieldTable {
    let mut args = typed(config.queue_type(subject));
    if subject.single_active_consumer {
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    for (name, value) in &subject.arguments {
        // Validated at load: every value converts.
        if let Ok(value) = crate::config::amqp_value(value) {
            args.insert(name.as_str().into(), value);
        }
    }
    if subject.arguments.contains_key("x-delivery-limit") {
        args.insert("x-dead-letter-exchange".into(), text(""));
        args.insert(
            "x-dead-letter-routing-key".into(),
            text(&dead_queue_name(&subject.queue)),
        );
        args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        args.insert("x-overflow".into(), text("reject-publish"));
    }
    args
}

/// Arguments of a delay queue: messages expire after `delay` and are dead-lettered back to
/// `queue` through the default exchange. On a quorum queue the broker dead-letters at least once
/// (`x-dead-letter-strategy`), which it does only with `x-overflow = reject-publish`.
#[must_use]
pub(crate) fn delay_queue_args(queue_type: QueueType, queue: &str, delay: Duration) -> FieldTable {
    let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    let mut args = typed(queue_type);
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
    args.insert("x-dead-letter-exchange".into(), text(""));
    args.insert("x-dead-letter-routing-key".into(), text(queue));
    if queue_type == QueueType::Quorum {
        args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        args.insert("x-overflow".into(), text("reject-publish"));
    }
    args
}

/// Arguments of a dead-letter queue.
#[must_use]
pub(crate) fn dead_queue_args(queue_type: QueueType) -> FieldTable {
    typed(queue_type)
}

/// Every queue of a subject: main, dead-letter, then one per scheduled delay.
#[must_use]
pub(crate) fn subject_queues(config: &Config, subject: &SubjectConfig) -> Vec<QueueSpec> {
    let queue_type = config.queue_type(subject);
    let queue = subject.queue.as_str();
    let mut specs = vec![
        QueueSpec {
            name: queue.to_owned(),
            args: main_queue_args(config, subject),
        },
        QueueSpec {
            name: dead_queue_name(queue),
            args: dead_queue_args(queue_type),
        },
    ];
    let delays: BTreeSet<Duration> = config.retry.delays.iter().copied().collect();
    specs.extend(delays.into_iter().map(|delay| QueueSpec {
        name: delay_queue_name(queue, delay),
        args: delay_queue_args(queue_type, queue, delay),
    }));
    specs
}

/// Declares one queue (durable), idempotently.
///
/// # Errors
/// [`BrokerError::Inequivalent`] when it exists with other arguments; other errors as they come.
pub(crate) async fn declare_queue(channel: &Channel, spec: &QueueSpec) -> Result<(), BrokerError> {
    channel
        .queue_declare(
            spec.name.as_str().into(),
            QueueDeclareOptions::durable(),
            spec.args.clone(),
        )
        .await
        .map_err(|e| {
            classify(
                &spec.name,
                amqp(format!("cannot declare queue `{}`", spec.name))(e),
            )
        })?;
    Ok(())
}

fn exchange_kind(kind: ExchangeType) -> ExchangeKind {
    match kind {
        ExchangeType::Direct => ExchangeKind::Direct,
        ExchangeType::Topic => ExchangeKind::Topic,
        ExchangeType::Fanout => ExchangeKind::Fanout,
        ExchangeType::Headers => ExchangeKind::Headers,
    }
}

/// Declares, idempotently, everything a subject needs: its queue, its delay queues and its
/// dead-letter queue, plus the optional exchange and bindings.
///
/// # Errors
/// When a declaration fails; the message names the queue or exchange. A queue that exists with
/// other arguments is a [`BrokerError::Inequivalent`], a configuration error.
pub(crate) async fn declare_subject(
    channel: &Channel,
    config: &Config,
    subject: &SubjectConfig,
) -> Result<(), BrokerError> {
    for spec in subject_queues(config, subject) {
        declare_queue(channel, &spec).await?;
    }
    let queue = subject.queue.as_str();
    let Some(exchange) = &subject.exchange else {
        return Ok(());
    };
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            exchange.as_str().into(),
            exchange_kind(subject.exchange_type),
            options,
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            classify(
                exchange,
                amqp(format!("cannot declare exchange `{exchange}`"))(e),
            )
        })?;
    for key in binding_keys(subject) {
        channel
            .queue_bind(
                queue.into(),
                exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp(format!(
                "cannot bind `{queue}` to `{exchange}` with `{key}`"
            )))?;
    }
    Ok(())
}

fn binding_keys(subject: &SubjectConfig) -> Vec<String> {
    if subject.binding_keys.is_empty() {
        vec![subject.queue.clone()]
    } else {
        subject.binding_keys.clone()
    }
}

/// Turns a refused declaration into a configuration error when the broker says why:
/// `PRECONDITION_FAILED` (inequivalent argument or type) or `NOT_FOUND` (passive check).
fn classify(name: &str, error: BrokerError) -> BrokerError {
    if error.is_not_found() {
        return BrokerError::Missing(name.to_owned());
    }
    let inequivalent = error.broker_error().and_then(|e| {
        matches!(
            e.kind(),
            lapin::protocol::AMQPErrorKind::Soft(
                lapin::protocol::AMQPSoftError::PRECONDITIONFAILED
            )
        )
        .then(|| Inequivalence::parse(name, e.get_message().as_str()))
    });
    inequivalent.map_or(error, BrokerError::Inequivalent)
}

mod check;
pub use check::{Check, Inequivalence};
pub(crate) use check::{check_subject, verify_subject};

#[cfg(test)]
mod tests;
