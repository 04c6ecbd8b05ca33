//! An operator's short session with the broker (the CLI's `publish` and `dead-letters`): one
//! connection, one channel, messages taken one at a time (`basic.get`) and settled singly, and
//! confirmed publishes. The agent's own consuming is the consumer actor's.

use std::time::Duration;

use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};

use super::{BrokerError, amqp, publish_confirmed};
use crate::config::Config;

/// How long a publish of a session waits for its confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection with one channel, in confirm mode when it publishes.
pub(crate) struct Session {
    connection: Connection,
    channel: Channel,
}

/// A message taken from a queue, unsettled until [`Taken::ack`] or [`Taken::requeue`] (or the
/// session's close, which returns it to its queue).
pub(crate) struct Taken(BasicGetMessage);

impl Session {
    /// Connects as `role` (shown in the broker's connection list) and opens the channel; with
    /// `confirm`, in confirm mode so that [`Session::publish`] waits for the broker's confirm.
    ///
    /// # Errors
    /// When no node can be reached or the channel cannot be opened.
    pub(crate) async fn open(
        config: &Config,
        role: &str,
        confirm: bool,
    ) -> Result<Self, BrokerError> {
        let connection = super::connect(config, role).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(amqp("cannot open a channel"))?;
        if confirm {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(amqp("cannot enable publisher confirms"))?;
        }
        Ok(Self {
            connection,
            channel,
        })
    }

    /// Takes the next message of `queue`, if any.
    ///
    /// # Errors
    /// When the channel fails (a missing queue closes it).
    pub(crate) async fn get(&self, queue: &str) -> Result<Option<Taken>, BrokerError> {
        let message = self
            .channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .map_err(amqp(format!("cannot take a message from `{queue}`")))?;
        Ok(message.map(Taken))
    }

    /// Publishes to `queue` through the default exchange, mandatory and confirmed.
    ///
    /// # Errors
    /// A [`BrokerError`] for a channel error, nack, return or confirm timeout.
    pub(crate) async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), BrokerError> {
        publish_confirmed(&self.channel, "", queue, body, props, CONFIRM_TIMEOUT).await
    }

    /// Closes the connection; messages taken and not settled go back to their queue.
    pub(crate) async fn close(self) {
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

impl Taken {
    /// The message as delivered.
    #[must_use]
    pub(crate) fn delivery(&self) -> &Delivery {
        &self.0.delivery
    }

    /// How many messages the queue held besides this one when it was taken.
    #[must_use]
    pub(crate) fn remaining(&self) -> u32 {
        self.0.message_count
    }

    /// Removes the message from its queue.
    ///
    /// # Errors
    /// When the channel fails.
    pub(crate) async fn ack(&self) -> Result<(), BrokerError> {
        self.0
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(amqp("cannot ack"))
            .map(drop)
    }

    /// Returns this message, and every one taken before it on this session and not settled
    /// yet, to their queue (one `basic.nack`, `multiple`).
    ///
    /// # Errors
    /// When the channel fails.
    pub(crate) async fn requeue_through(&self) -> Result<(), BrokerError> {
        let requeue = BasicNackOptions {
            requeue: true,
            multiple: true,
        };
        self.0
            .delivery
            .acker
            .nack(requeue)
            .await
            .map_err(amqp("cannot requeue"))
            .map(drop)
    }
}
