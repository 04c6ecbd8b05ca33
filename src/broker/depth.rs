//! How many messages wait in a subject's queue: its `message_count`, read by a passive
//! `queue.declare` on a channel of its own (the autoscaler's backlog signal).
//!
//! Invariant: a read never changes the queue (passive), and a failed read closes only its own
//! channel: the next read opens another.

use std::sync::Arc;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::{BrokerError, amqp, short};

/// Reads the depths of a subject's queues on the connection of its consumer.
pub(crate) struct QueueDepth {
    connection: Arc<Connection>,
    channel: Option<Channel>,
}

impl QueueDepth {
    /// Reads depths on `connection` (no channel is opened before the first read).
    #[must_use]
    pub(crate) fn new(connection: Arc<Connection>) -> Self {
        Self {
            connection,
            channel: None,
        }
    }

    /// Messages ready in `queue` (the subject's queue, its dead-letter or a delay queue):
    /// waiting for a consumer, not counting those delivered and not yet acked.
    ///
    /// # Errors
    /// When no channel can be opened or the queue cannot be declared passively (deleted, or
    /// the connection is gone); a queue that does not exist ([`BrokerError::is_not_found`],
    /// a delay queue not used yet) is an error, and the next read opens a new channel.
    pub(crate) async fn read_queue(&mut self, queue: &str) -> Result<u32, BrokerError> {
        let channel = match self.channel.take().filter(|c| c.status().connected()) {
            Some(channel) => channel,
            None => self
                .connection
                .create_channel()
                .await
                .map_err(amqp("cannot open a channel to read the queue depth"))?,
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare(short(queue), passive, FieldTable::default())
            .await
            .map_err(amqp(format!("cannot read the depth of `{queue}`")))?;
        self.channel = Some(channel);
        Ok(queue.message_count())
    }
}
