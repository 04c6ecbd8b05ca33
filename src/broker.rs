//! The AMQP side: connections, topology and confirmed publishing.
//!
//! Invariant: this is the only module that declares queues or publishes. Every publish on the
//! retry and dead-letter paths is `mandatory` and waits for the broker's confirm; anything but a
//! positive, routed confirm is an error, so the caller never acks an original whose copy is not
//! safely stored.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection};

use crate::config::{Config, QueueType};

pub(crate) mod depth;
pub(crate) mod endpoints;
pub mod fleet;
pub(crate) mod gate;
pub(crate) mod session;
pub mod topology;

pub use topology::Inequivalence;
pub(crate) use topology::declare_subject;

/// A broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The AMQP client reported an error.
    #[error("{context}: {source}")]
    Amqp {
        /// What we were doing.
        context: String,
        /// The client error.
        source: lapin::Error,
    },
    /// The broker negatively acknowledged a publish.
    #[error("broker refused (nack) the publish to `{0}`")]
    Nacked(String),
    /// A mandatory publish could not be routed to any queue.
    #[error("publish to `{0}` was returned unroutable (does the queue exist?)")]
    Unroutable(String),
    /// No confirm arrived in time.
    #[error("no publisher confirm for `{0}` within {1:?}")]
    ConfirmTimeout(String, Duration),
    /// A queue exists with other arguments than the configuration's (`PRECONDITION_FAILED`).
    #[error("configuration does not match the broker: {0}")]
    Inequivalent(Inequivalence),
    /// A queue or exchange the configuration needs does not exist (and `amqp.declare = false`).
    #[error(
        "`{0}` does not exist on the broker (amqp.declare = false: create it, or set amqp.declare = true)"
    )]
    Missing(String),
    /// The configuration cannot be used to connect (TLS files, URL).
    #[error("{0}")]
    Config(String),
    /// A copy's content header would not fit one frame (it was not sent).
    #[error("{0}")]
    CopyTooLarge(String),
    /// A node did not answer a connection attempt in time.
    #[error("{0}")]
    Timeout(String),
}

impl BrokerError {
    /// True when the broker could not be reached at all (refused, reset, timed out, DNS):
    /// worth retrying for as long as it takes. Other errors (a refused login, a queue declared
    /// with other arguments) will not fix themselves and count as crashes.
    #[must_use]
    pub(crate) fn is_unreachable(&self) -> bool {
        match self {
            Self::Amqp { source, .. } => lost_connection(source),
            Self::Timeout(_) => true,
            _ => false,
        }
    }

    /// True when the broker refused this publish itself (it closed the channel over it, or
    /// nacked it): the copy, not the connection, is at fault, and another copy may go through.
    #[must_use]
    pub(crate) fn is_refused(&self) -> bool {
        match self {
            Self::Amqp { source, .. } => matches!(
                source.kind(),
                lapin::ErrorKind::ProtocolError(e)
                    if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(_))
            ),
            Self::Nacked(_) => true,
            _ => false,
        }
    }

    /// True when the error is the configuration's, not the moment's: a restart cannot fix it,
    /// so the agent stops once with this message instead of crash-restarting.
    #[must_use]
    pub(crate) fn is_config_error(&self) -> bool {
        matches!(
            self,
            Self::Inequivalent(_) | Self::Missing(_) | Self::Config(_)
        )
    }
}

/// True when a client error means the connection is gone (I/O, a connection no longer open,
/// missed heartbeats): worth reconnecting for, not a crash.
#[must_use]
pub(crate) fn lost_connection(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::IOError(_)
            | lapin::ErrorKind::InvalidConnectionState(_)
            | lapin::ErrorKind::MissingHeartbeatError
    )
}

impl BrokerError {
    /// The broker's own error behind this one (a `channel.close` or `connection.close` it sent),
    /// if any.
    pub(crate) fn broker_error(&self) -> Option<&lapin::protocol::AMQPError> {
        let Self::Amqp { source, .. } = self else {
            return None;
        };
        match source.kind() {
            lapin::ErrorKind::ProtocolError(e) => Some(e),
            _ => None,
        }
    }

    /// True when the broker answered `NOT_FOUND` (a passive declaration of a missing queue).
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Missing(_))
            || self.broker_error().is_some_and(|e| {
                matches!(
                    e.kind(),
                    lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND)
                )
            })
    }
}

fn amqp(context: impl Into<String>) -> impl FnOnce(lapin::Error) -> BrokerError {
    let context = context.into();
    move |source| BrokerError::Amqp { context, source }
}

/// Opens a connection named after the agent and `role`, so operators can tell them apart, to
/// the first configured node that answers (see [`endpoints`]).
///
/// # Errors
/// When no node can be reached, or one refuses the login.
pub(crate) async fn connect(config: &Config, role: &str) -> Result<Connection, BrokerError> {
    let cursor = std::sync::atomic::AtomicUsize::new(0);
    Ok(endpoints::connect(config, role, &cursor).await?.0)
}

/// Name of the queue that holds messages of `queue` waiting `delay` before their next attempt.
#[must_use]
pub fn delay_queue_name(queue: &str, delay: Duration) -> String {
    format!("{queue}.retry.{}ms", delay.as_millis())
}

/// Name of the dead-letter queue of `queue`.
#[must_use]
pub fn dead_queue_name(queue: &str) -> String {
    format!("{queue}.dead")
}

/// A channel in confirm mode for the retry and dead-letter paths of one subject. When the
/// broker closes it over one copy (a property it refuses, say), the next publish opens a new
/// one on the same connection: one message's copy never takes the subject down.
pub struct Publisher {
    connection: Arc<Connection>,
    channel: Mutex<Channel>,
    /// Held while a closed channel is replaced, so that workers open one new channel, not many.
    reopening: tokio::sync::Mutex<()>,
    queue: Arc<str>,
    confirm_timeout: Duration,
    /// `amqp.declare`: missing queues may be (re)declared.
    declare: bool,
    /// Type of the subject's delay and dead-letter queues.
    queue_type: QueueType,
    /// Delay queues known to exist (the scheduled ones, plus those made for `Retry-After`).
    delays: Arc<Mutex<HashSet<Duration>>>,
    /// The connection's negotiated `frame_max`: a copy's content header must fit in one frame.
    frame_max: u32,
}

impl Publisher {
    /// Opens a confirm-mode channel on `connection` for `queue`.
    ///
    /// # Errors
    /// When the channel cannot be opened.
    pub(crate) async fn open(
        connection: Arc<Connection>,
        queue: &str,
        queue_type: QueueType,
        config: &Config,
    ) -> Result<Self, BrokerError> {
        let channel = confirm_channel(&connection).await?;
        let frame_max = connection.configuration().frame_max();
        Ok(Self {
            connection,
            channel: Mutex::new(channel),
            reopening: tokio::sync::Mutex::new(()),
            queue: queue.into(),
            confirm_timeout: config.amqp.confirm_timeout,
            declare: config.amqp.declare,
            queue_type,
            delays: Arc::new(Mutex::new(config.retry.delays.iter().copied().collect())),
            frame_max,
        })
    }

    /// The channel to publish on: the current one, or a new one if the broker closed it (over
    /// a copy it refused) while the connection is still up.
    async fn channel(&self) -> Result<Channel, BrokerError> {
        let current = self.channel.lock().expect("publish channel lock").clone();
        if current.status().connected() || !self.connection.status().connected() {
            return Ok(current);
        }
        let _one = self.reopening.lock().await;
        let current = self.channel.lock().expect("publish channel lock").clone();
        if current.status().connected() {
            return Ok(current);
        }
        let fresh = confirm_channel(&self.connection).await?;
        tracing::info!(queue = %self.queue, "Reopened the retry/dead-letter publish channel");
        *self.channel.lock().expect("publish channel lock") = fresh.clone();
        Ok(fresh)
    }

    /// The negotiated `frame_max`, the largest content header a copy may have.
    #[must_use]
    pub(crate) fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// False once the connection is lost: the consumer that owns it must be restarted. A
    /// channel closed by the broker is replaced by the next publish.
    #[must_use]
    pub(crate) fn usable(&self) -> bool {
        self.connection.status().connected()
    }

    /// Publishes to the delay queue for `delay`, declaring it first if it is not a scheduled one.
    ///
    /// # Errors
    /// See [`Publisher::publish`].
    pub(crate) async fn publish_delayed(
        &self,
        delay: Duration,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), BrokerError> {
        let known = self.delays.lock().expect("delay set lock").contains(&delay);
        if !known && self.declare {
            self.declare_delay_queue(delay).await?;
            self.delays.lock().expect("delay set lock").insert(delay);
        }
        let target = delay_queue_name(&self.queue, delay);
        match self.publish("", &target, body, props.clone()).await {
            // Someone deleted the delay queue: declare it again and retry once.
            Err(BrokerError::Unroutable(_)) if self.declare => {
                tracing::warn!(queue = %target, "Delay queue is missing; declaring it again");
                self.declare_delay_queue(delay).await?;
                self.publish("", &target, body, props).await
            }
            other => other,
        }
    }

    /// Publishes to the subject's dead-letter queue.
    ///
    /// # Errors
    /// See [`Publisher::publish`].
    pub(crate) async fn publish_dead(
        &self,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), BrokerError> {
        let target = dead_queue_name(&self.queue);
        match self.publish("", &target, body, props.clone()).await {
            Err(BrokerError::Unroutable(_)) if self.declare => {
                tracing::warn!(queue = %target, "Dead-letter queue is missing; declaring it again");
                let spec = topology::QueueSpec {
                    name: target.clone(),
                    args: topology::dead_queue_args(self.queue_type),
                };
                topology::declare_queue(&self.channel().await?, &spec).await?;
                self.publish("", &target, body, props).await
            }
            other => other,
        }
    }

    /// Declares the delay queue for `delay` (for a `Retry-After` or a deleted queue).
    async fn declare_delay_queue(&self, delay: Duration) -> Result<(), BrokerError> {
        let spec = topology::QueueSpec {
            name: delay_queue_name(&self.queue, delay),
            args: topology::delay_queue_args(self.queue_type, &self.queue, delay),
        };
        topology::declare_queue(&self.channel().await?, &spec).await
    }

    /// Publishes with `mandatory` and waits for a positive, routed confirm.
    ///
    /// # Errors
    /// A [`BrokerError`] for a channel error, nack, return or confirm timeout.
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), BrokerError> {
        publish_confirmed(
            &self.channel().await?,
            exchange,
            routing_key,
            body,
            props,
            self.confirm_timeout,
        )
        .await
    }
}

async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(amqp("cannot open publish channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp("cannot enable publisher confirms"))?;
    Ok(channel)
}

/// Publishes one message as `mandatory` and waits for its confirm on a confirm-mode `channel`.
///
/// # Errors
/// A [`BrokerError`] for a channel error, nack, return or confirm timeout.
pub(crate) async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
    timeout: Duration,
) -> Result<(), BrokerError> {
    let target = if exchange.is_empty() {
        routing_key.to_owned()
    } else {
        format!("{exchange}/{routing_key}")
    };
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirm = async {
        channel
            .basic_publish(short(exchange), short(routing_key), options, body, props)
            .await
            .map_err(amqp(format!("cannot publish to `{target}`")))?
            .await
            .map_err(amqp(format!("no confirm for `{target}`")))
    };
    match tokio::time::timeout(timeout, confirm).await {
        Err(_) => Err(BrokerError::ConfirmTimeout(target, timeout)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(BrokerError::Unroutable(target)),
        Ok(Ok(Confirmation::Nack(_) | Confirmation::NotRequested)) => {
            Err(BrokerError::Nacked(target))
        }
    }
}

/// A ShortString that never panics: AMQP short strings hold at most 255 bytes.
#[must_use]
pub fn short(text: &str) -> ShortString {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&text[..end])
}
