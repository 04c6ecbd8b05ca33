//! The fleet's link to the broker ([`crate::fleet`]): a connection of its own, two exchanges
//! every agent declares alike, and a queue per agent that hears every heartbeat and the commands
//! and replies addressed to it.
//!
//! The fleet's messages are not the application's: they are transient, unconfirmed and
//! consumed without acks. A heartbeat expires after three intervals; a queue goes with its
//! agent's connection (exclusive, auto-delete).

use futures_util::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

use super::{BrokerError, amqp};
use crate::config::Config;

/// Fanout exchange of the heartbeats.
pub const HEARTBEATS: &str = "amqp-agent.fleet";
/// Direct exchange of commands and replies; the routing key is the addressee's fleet id.
pub const DIRECT: &str = "amqp-agent.fleet.direct";
/// The header holding a fleet message's signature.
pub const SIGNATURE: &str = "x-fleet-signature";

/// A fleet message as received.
#[derive(Debug)]
pub struct Received {
    /// Its AMQP `type` (`heartbeat`, `command`, `reply`).
    pub kind: String,
    /// Its signature, if it carries one.
    pub signature: Option<String>,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// The agent's fleet connection.
pub struct Link {
    connection: Connection,
    channel: Channel,
    consumer: lapin::Consumer,
}

impl Link {
    /// Connects, declares the exchanges and this agent's queue (`amqp-agent.fleet.<id>`), and
    /// starts consuming it.
    ///
    /// # Errors
    /// When the broker cannot be reached or refuses a declaration.
    pub(crate) async fn open(config: &Config, agent: &str) -> Result<Self, BrokerError> {
        let connection = super::connect(config, "fleet").await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(amqp("cannot open the fleet channel"))?;
        for (name, kind) in [
            (HEARTBEATS, ExchangeKind::Fanout),
            (DIRECT, ExchangeKind::Direct),
        ] {
            channel
                .exchange_declare(
                    name.into(),
                    kind,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(amqp(format!("cannot declare the exchange `{name}`")))?;
        }
        let queue = format!("amqp-agent.fleet.{agent}");
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp(format!("cannot declare `{queue}`")))?;
        for (exchange, key) in [(HEARTBEATS, ""), (DIRECT, agent)] {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(amqp(format!("cannot bind `{queue}` to `{exchange}`")))?;
        }
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                format!("{queue}.consumer").as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp(format!("cannot consume `{queue}`")))?;
        Ok(Self {
            connection,
            channel,
            consumer,
        })
    }

    /// The next fleet message; `None` once the connection or the consumer is gone.
    pub(crate) async fn next(&mut self) -> Option<Received> {
        let delivery = self.consumer.next().await?.ok()?;
        let props = &delivery.properties;
        let signature = props.headers().as_ref().and_then(|h| {
            h.inner().get(SIGNATURE).and_then(|v| match v {
                AMQPValue::LongString(s) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                _ => None,
            })
        });
        Some(Received {
            kind: props
                .kind()
                .as_ref()
                .map(|k| k.as_str().to_owned())
                .unwrap_or_default(),
            signature,
            body: delivery.data,
        })
    }

    /// Publishes a fleet message: a heartbeat to everyone (`to` = `None`, expiring after
    /// `ttl_ms`), or a command or reply to agent `to`.
    ///
    /// # Errors
    /// When the channel is closed.
    pub(crate) async fn publish(
        &self,
        kind: &str,
        to: Option<&str>,
        body: &[u8],
        signature: Option<&str>,
        ttl_ms: Option<u64>,
    ) -> Result<(), BrokerError> {
        let mut headers = FieldTable::default();
        if let Some(sig) = signature {
            headers.insert(
                SIGNATURE.into(),
                AMQPValue::LongString(LongString::from(sig)),
            );
        }
        let mut props = BasicProperties::default()
            .with_type(kind.into())
            .with_content_type("application/json".into())
            .with_headers(headers);
        if let Some(ttl) = ttl_ms {
            props = props.with_expiration(ttl.to_string().as_str().into());
        }
        let (exchange, key) = match to {
            None => (HEARTBEATS, ""),
            Some(agent) => (DIRECT, agent),
        };
        self.channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .map_err(amqp(format!("cannot publish to `{exchange}`")))?;
        Ok(())
    }

    /// Closes the connection (its queue goes with it).
    pub(crate) async fn close(self) {
        let _ = self.connection.close(200, "fleet link closed".into()).await;
    }
}
