//! The steady load (persistent messages, publisher confirms, paced) and the dead-letter
//! consumers that record every dead-lettered message while the soak runs.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::{Lane, Rng, now_us};

/// What the handler is asked to do with a message (see examples/php/soak-handler.php).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Ok,
    FailOnce,
    FailAlways,
    Exit,
    Slow,
}

impl Kind {
    pub const ALL: [Self; 5] = [
        Self::Ok,
        Self::FailOnce,
        Self::FailAlways,
        Self::Exit,
        Self::Slow,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::FailOnce => "fail_once",
            Self::FailAlways => "fail_always",
            Self::Exit => "exit",
            Self::Slow => "slow",
        }
    }

    /// Innocent: must be handled, never dead-lettered.
    pub fn innocent(self) -> bool {
        matches!(self, Self::Ok | Self::FailOnce)
    }

    /// Share of the load, per 10,000 messages.
    fn share(self) -> u64 {
        match self {
            Self::Ok => 10_000 - 300 - 100 - 100 - 50,
            Self::FailOnce => 300,
            Self::FailAlways => 100,
            Self::Exit => 100,
            Self::Slow => 50,
        }
    }

    fn draw(rng: &mut Rng) -> Self {
        let mut x = rng.below(10_000);
        for kind in Self::ALL {
            if x < kind.share() {
                return kind;
            }
            x -= kind.share();
        }
        Self::Ok
    }
}

/// One published message.
#[derive(Debug, Clone)]
pub struct Sent {
    pub lane: usize,
    pub kind: Kind,
    pub published_us: u64,
    /// The broker confirmed it (`None` while unconfirmed, `Some(false)` nacked or failed).
    pub confirmed: Option<bool>,
}

/// The soak's own connection: publishes (confirms on) and counts and deletes queues.
pub struct Publisher {
    conn: Connection,
    channel: Channel,
    admin: Channel,
    run: String,
}

impl Publisher {
    pub async fn connect(url: &str, run: &str) -> anyhow::Result<Self> {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("soak publisher {run}").into());
        let conn = Connection::connect(url, props)
            .await
            .with_context(|| format!("cannot connect to RabbitMQ at {url}"))?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let admin = conn.create_channel().await?;
        Ok(Self {
            conn,
            channel,
            admin,
            run: run.to_owned(),
        })
    }

    /// Publishes `rate` messages per second, round-robin over `lanes`, for `duration` or until
    /// `stop`; then waits (at most 30 s) for the outstanding confirms. When its connection
    /// breaks (RabbitMQ restarted by someone else on a shared machine), the message being
    /// published counts as unconfirmed and the publisher connects again (`reconnects`).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        url: String,
        rate: f64,
        duration: Duration,
        lanes: Vec<Lane>,
        seed: u64,
        sent: Arc<Mutex<Vec<Sent>>>,
        stop: Arc<AtomicBool>,
        reconnects: Arc<AtomicUsize>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send + 'static {
        let mut channel = self.channel.clone();
        let run = self.run.clone();
        async move {
            let mut rng = Rng::new(seed ^ 0x9E37_79B9_7F4A_7C15);
            let started = Instant::now();
            let mut confirms = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut n: u64 = 0;
            let pad = "x".repeat(160);
            // Kept alive with the channel it carries (the first is the Publisher's own).
            let mut _conn: Option<Connection> = None;
            while started.elapsed() < duration && !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let due = (rate * started.elapsed().as_secs_f64()) as u64;
                while n < due {
                    let lane = (n % lanes.len() as u64) as usize;
                    let kind = Kind::draw(&mut rng);
                    let published_us = now_us();
                    let body = format!(
                        r#"{{"id":"{n}","kind":"{}","published_us":{published_us},"pad":"{pad}"}}"#,
                        kind.name()
                    );
                    sent.lock().unwrap().push(Sent {
                        lane,
                        kind,
                        published_us,
                        confirmed: None,
                    });
                    let index = n as usize;
                    n += 1;
                    let props = BasicProperties::default()
                        .with_message_id(format!("soak-{run}-{index}").into())
                        .with_content_type("application/json".into())
                        .with_delivery_mode(2);
                    let published = channel
                        .basic_publish(
                            "".into(),
                            lanes[lane].queue.as_str().into(),
                            BasicPublishOptions::default(),
                            body.as_bytes(),
                            props,
                        )
                        .await;
                    let confirm = match published {
                        Ok(confirm) => confirm,
                        Err(e) => {
                            sent.lock().unwrap()[index].confirmed = Some(false);
                            eprintln!("  publisher: {e}; connecting again");
                            reconnects.fetch_add(1, Ordering::Relaxed);
                            let (c, ch) = reconnect(&url, &run, started + duration).await?;
                            _conn = Some(c);
                            channel = ch;
                            break;
                        }
                    };
                    let sent = sent.clone();
                    confirms.spawn(async move {
                        let ok = matches!(confirm.await, Ok(c) if c.is_ack());
                        sent.lock().unwrap()[index].confirmed = Some(ok);
                    });
                }
                // Reap finished confirm tasks as we go.
                while confirms.try_join_next().is_some() {}
            }
            let _ = tokio::time::timeout(Duration::from_secs(30), async {
                while confirms.join_next().await.is_some() {}
            })
            .await;
            Ok(())
        }
    }

    /// (ready messages, consumers) of `queue`; `None` when it does not exist.
    pub async fn ready_count(&self, queue: &str) -> Option<(u32, u32)> {
        let opts = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = self
            .admin
            .queue_declare(queue.into(), opts, FieldTable::default())
            .await
            .ok()?;
        Some((q.message_count(), q.consumer_count()))
    }

    /// The queues of every lane: main, delay queues, dead letters.
    pub fn queues(lanes: &[Lane]) -> Vec<String> {
        let mut out = Vec::new();
        for lane in lanes {
            out.push(lane.queue.clone());
            for ms in [500, 1000] {
                out.push(format!("{}.retry.{ms}ms", lane.queue));
            }
            out.push(format!("{}.dead", lane.queue));
        }
        out
    }

    pub async fn delete_queues(&self, lanes: &[Lane]) {
        for q in Self::queues(lanes) {
            // A channel error (e.g. a queue that does not exist) closes the channel: a fresh
            // one for each queue.
            if let Ok(ch) = self.conn.create_channel().await {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
                let _ = ch.close(200, "soak done".into()).await;
            }
        }
    }
}

/// A new connection and confirm channel, tried every second until `deadline` (at least 60 s).
async fn reconnect(
    url: &str,
    run: &str,
    deadline: Instant,
) -> anyhow::Result<(Connection, Channel)> {
    let deadline = deadline.max(Instant::now() + Duration::from_secs(60));
    loop {
        let attempt = async {
            let props = ConnectionProperties::default()
                .with_connection_name(format!("soak publisher {run}").into());
            let conn = Connection::connect(url, props).await?;
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            anyhow::Ok((conn, channel))
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(pair)) => return Ok(pair),
            Ok(Err(e)) if Instant::now() >= deadline => return Err(e.context("reconnecting")),
            Err(_) if Instant::now() >= deadline => anyhow::bail!("reconnecting timed out"),
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// One message read from a dead-letter queue.
#[derive(Debug, Clone)]
pub struct Dead {
    pub id: u64,
    pub reason: String,
}

/// Consumers of every lane's dead-letter queue (auto-ack: the soak is the one reader), on a
/// connection of their own that a background task opens again whenever it broke (RabbitMQ
/// restarted by another process on a shared machine): what waits in the queues meanwhile is
/// read after the reconnection.
pub struct DeadLetters {
    seen: Arc<Mutex<Vec<Dead>>>,
    connected: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl DeadLetters {
    pub fn start(url: &str, lanes: &[Lane]) -> Self {
        let seen: Arc<Mutex<Vec<Dead>>> = Arc::default();
        let connected = Arc::new(AtomicBool::new(false));
        let queues: Vec<String> = lanes.iter().map(|l| format!("{}.dead", l.queue)).collect();
        let url = url.to_owned();
        let task = tokio::spawn({
            let seen = seen.clone();
            let connected = connected.clone();
            async move {
                let mut conn: Option<Connection> = None;
                loop {
                    if !conn.as_ref().is_some_and(|c| c.status().connected()) {
                        connected.store(false, Ordering::Relaxed);
                        match consume(&url, &queues, &seen).await {
                            Ok(c) => {
                                conn = Some(c);
                                connected.store(true, Ordering::Relaxed);
                            }
                            Err(e) => eprintln!("  dead-letter reader: {e:#} (trying again)"),
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
        Self {
            seen,
            connected,
            task,
        }
    }

    /// Whether the consumers are up (the drain waits for them before it trusts the counts).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Vec<Dead> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for DeadLetters {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A connection with one consumer per dead-letter queue, each read by a task into `seen`.
async fn consume(
    url: &str,
    queues: &[String],
    seen: &Arc<Mutex<Vec<Dead>>>,
) -> anyhow::Result<Connection> {
    let props =
        ConnectionProperties::default().with_connection_name("soak dead-letter reader".into());
    let conn = tokio::time::timeout(Duration::from_secs(10), Connection::connect(url, props))
        .await
        .context("connect timed out")??;
    for queue in queues {
        let channel = conn.create_channel().await?;
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "soak".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {queue}"))?;
        let seen = seen.clone();
        tokio::spawn(async move {
            let _channel = channel;
            while let Some(Ok(delivery)) = consumer.next().await {
                let id = serde_json::from_slice::<serde_json::Value>(&delivery.data)
                    .ok()
                    .and_then(|v| v["id"].as_str().and_then(|s| s.parse().ok()))
                    .unwrap_or(u64::MAX);
                let reason = delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get("x-agent-reason").cloned())
                    .map_or_else(|| "?".to_owned(), |v| value_text(&v));
                seen.lock().unwrap().push(Dead { id, reason });
            }
        });
    }
    Ok(conn)
}

fn value_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        other => format!("{other:?}"),
    }
}
