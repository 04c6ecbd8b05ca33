//! Checking a subject's topology passively against what exists (`check-config --broker`, and
//! the start with `amqp.declare = false`), and reading what the broker says when a declaration
//! is refused (`Inequivalence`).

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::{QueueSpec, binding_keys, classify, declare_queue, exchange_kind, subject_queues};
use crate::broker::{BrokerError, amqp};
use crate::config::{Config, SubjectConfig};

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
    pub(crate) fn parse(name: &str, message: &str) -> Self {
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
pub(crate) async fn check_subject(
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
pub(crate) async fn check_queue(
    connection: &Connection,
    spec: &QueueSpec,
) -> Result<Check, BrokerError> {
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
pub(crate) async fn verify_subject(
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
