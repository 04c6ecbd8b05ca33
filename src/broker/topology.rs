//! What a subject needs on the broker (queues with their arguments, exchange, bindings), how to
//! declare it, and how to check it passively against what exists.

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};

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
pub fn main_queue_args(config: &Config, subject: &SubjectConfig) -> FieldTable {
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
pub fn delay_queue_args(queue_type: QueueType, queue: &str, delay: Duration) -> FieldTable {
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
pub fn dead_queue_args(queue_type: QueueType) -> FieldTable {
    typed(queue_type)
}

/// Every queue of a subject: main, dead-letter, then one per scheduled delay.
#[must_use]
pub fn subject_queues(config: &Config, subject: &SubjectConfig) -> Vec<QueueSpec> {
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
pub async fn declare_queue(channel: &Channel, spec: &QueueSpec) -> Result<(), BrokerError> {
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
pub async fn declare_subject(
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
    let BrokerError::Amqp { source, .. } = &error else {
        return error;
    };
    let lapin::ErrorKind::ProtocolError(e) = source.kind() else {
        return error;
    };
    let message = e.get_message().as_str().to_owned();
    match e.kind() {
        lapin::protocol::AMQPErrorKind::Soft(
            lapin::protocol::AMQPSoftError::PRECONDITIONFAILED,
        ) => BrokerError::Inequivalent(Inequivalence::parse(name, &message)),
        lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND) => {
            BrokerError::Missing(name.to_owned())
        }
        _ => error,
    }
}

/// What the broker said about an existing queue or exchange declared with other settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inequivalence {
    /// The queue or exchange.
    pub name: String,
    /// The argument that differs (`x-queue-type`, ...), when the broker named one.
    pub argument: Option<String>,
    /// The value the agent asked for, as the broker printed it.
    pub ours: Option<String>,
    /// The value on the broker, as it printed it.
    pub theirs: Option<String>,
    /// The broker's message.
    pub message: String,
}

impl Inequivalence {
    /// Reads RabbitMQ's `PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in
    /// vhost '/': received none but current is the value 'quorum' of type 'longstr'`.
    #[must_use]
    pub fn parse(name: &str, message: &str) -> Self {
        let between = |start: &str, end: &str| {
            let from = message.find(start)? + start.len();
            let to = message[from..].find(end)? + from;
            Some(message[from..to].to_owned())
        };
        let argument = between("inequivalent arg '", "'");
        // The agent declares classic queues without `x-queue-type`.
        let ours = between("received ", " but current is").map(|ours| {
            if ours == "none" && argument.as_deref() == Some("x-queue-type") {
                "none (queue_type = \"classic\")".to_owned()
            } else {
                ours
            }
        });
        let theirs = message
            .find("but current is ")
            .map(|i| message[i + "but current is ".len()..].trim().to_owned());
        Self {
            name: between("for queue '", "'").unwrap_or_else(|| name.to_owned()),
            argument,
            ours,
            theirs,
            message: message.to_owned(),
        }
    }
}

impl std::fmt::Display for Inequivalence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.argument, &self.ours, &self.theirs) {
            (Some(arg), Some(ours), Some(theirs)) => write!(
                f,
                "`{}` exists on the broker with other settings: argument `{arg}` is {theirs} \
                 there, the configuration asks for {ours}. Change the configuration to match \
                 (queue_type, arguments, single_active_consumer), or delete the queue \
                 (broker: {})",
                self.name, self.message
            ),
            _ => write!(
                f,
                "`{}` exists on the broker with other settings (broker: {})",
                self.name, self.message
            ),
        }
    }
}

/// The result of checking one object passively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Exists as configured.
    Ok(String),
    /// Does not exist.
    Missing(String),
    /// Exists with other settings.
    Different(String),
    /// Could not be checked.
    Unknown(String),
}

/// Checks, without creating or changing anything, every queue and exchange `subject` needs.
///
/// A queue is first declared passively (does it exist?), then with the agent's arguments
/// (RabbitMQ refuses an inequivalent redeclaration and changes nothing on an equivalent one).
/// Bindings cannot be read over AMQP 0-9-1; they are listed as not checked.
///
/// # Errors
/// When a channel cannot be opened.
pub async fn check_subject(
    connection: &Connection,
    config: &Config,
    subject: &SubjectConfig,
) -> Result<Vec<Check>, BrokerError> {
    let mut out = Vec::new();
    for spec in subject_queues(config, subject) {
        out.push(check_queue(connection, &spec).await?);
    }
    if let Some(exchange) = &subject.exchange {
        let channel = open(connection).await?;
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let kind = exchange_kind(subject.exchange_type);
        let found = channel
            .exchange_declare(
                exchange.as_str().into(),
                kind.clone(),
                passive,
                FieldTable::default(),
            )
            .await;
        let what = format!("exchange `{exchange}`");
        if found.is_err() {
            out.push(Check::Missing(what));
        } else {
            let channel = open(connection).await?;
            let options = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            match channel
                .exchange_declare(
                    exchange.as_str().into(),
                    kind,
                    options,
                    FieldTable::default(),
                )
                .await
            {
                Ok(()) => out.push(Check::Ok(what)),
                Err(e) => out.push(Check::Different(format!("{what}: {e}"))),
            }
            let _ = channel.close(200, "check done".into()).await;
        }
        for key in binding_keys(subject) {
            out.push(Check::Unknown(format!(
                "binding `{}` -> `{exchange}` with `{key}` (not readable over AMQP; declared at start when amqp.declare = true)",
                subject.queue
            )));
        }
    }
    Ok(out)
}

async fn open(connection: &Connection) -> Result<Channel, BrokerError> {
    connection
        .create_channel()
        .await
        .map_err(amqp("cannot open a channel"))
}

/// Passive existence check of one queue (fresh channel: a failed check closes it).
///
/// # Errors
/// When a channel cannot be opened.
pub async fn check_queue(connection: &Connection, spec: &QueueSpec) -> Result<Check, BrokerError> {
    let what = format!("queue `{}`", spec.name);
    let channel = open(connection).await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    if let Err(e) = channel
        .queue_declare(spec.name.as_str().into(), passive, FieldTable::default())
        .await
    {
        return Ok(match classify(&spec.name, amqp("")(e)) {
            BrokerError::Missing(_) => Check::Missing(what),
            other => Check::Unknown(format!("{what}: {other}")),
        });
    }
    let channel = open(connection).await?;
    let result = match declare_queue(&channel, spec).await {
        Ok(()) => Check::Ok(what),
        Err(BrokerError::Inequivalent(i)) => Check::Different(i.to_string()),
        Err(other) => Check::Unknown(format!("{what}: {other}")),
    };
    let _ = channel.close(200, "check done".into()).await;
    Ok(result)
}

/// Start-up check with `amqp.declare = false`: every queue must exist with the agent's
/// arguments; the first problem is returned as a configuration error.
///
/// # Errors
/// [`BrokerError::Missing`] or [`BrokerError::Inequivalent`], or a connection error.
pub async fn verify_subject(
    connection: &Connection,
    config: &Config,
    subject: &SubjectConfig,
) -> Result<(), BrokerError> {
    for spec in subject_queues(config, subject) {
        match check_queue(connection, &spec).await? {
            Check::Ok(_) | Check::Unknown(_) => {}
            Check::Missing(_) => return Err(BrokerError::Missing(spec.name)),
            Check::Different(_) => {
                let channel = open(connection).await?;
                declare_queue(&channel, &spec).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_inequivalent_arg_message_names_argument_and_values() {
        let i = Inequivalence::parse(
            "q",
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'orders' in vhost '/': received none but current is the value 'quorum' of type 'longstr'",
        );
        assert_eq!(i.name, "orders");
        assert_eq!(i.argument.as_deref(), Some("x-queue-type"));
        assert_eq!(i.ours.as_deref(), Some("none (queue_type = \"classic\")"));
        assert_eq!(
            i.theirs.as_deref(),
            Some("the value 'quorum' of type 'longstr'")
        );
        let text = i.to_string();
        assert!(
            text.contains("`orders`") && text.contains("`x-queue-type`"),
            "{text}"
        );
    }

    #[test]
    fn quorum_delay_queues_dead_letter_at_least_once() {
        let args = delay_queue_args(QueueType::Quorum, "q", Duration::from_secs(5));
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(get("x-queue-type"), Some(text("quorum")));
        assert_eq!(get("x-message-ttl"), Some(AMQPValue::LongLongInt(5000)));
        assert_eq!(get("x-dead-letter-strategy"), Some(text("at-least-once")));
        assert_eq!(get("x-overflow"), Some(text("reject-publish")));
        let classic = delay_queue_args(QueueType::Classic, "q", Duration::from_secs(5));
        assert!(classic.inner().get("x-queue-type").is_none());
        assert!(classic.inner().get("x-dead-letter-strategy").is_none());
    }
}
