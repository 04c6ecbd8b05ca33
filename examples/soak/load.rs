//! The steady load (persistent messages, publisher confirms, paced) and the dead-letter
//! consumers that record every dead-lettered message while the soak runs.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::{Brokers, Lane, Rng, now_us};

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

/// The soak's own connection to one broker: publishes (confirms on) and counts and deletes
/// queues.
struct Link {
    conn: Connection,
    channel: Channel,
    admin: Channel,
}

/// The soak's own connections, one per broker (`--amqp-url`; with `--cluster`, one node of the
/// cluster too).
pub struct Publisher {
    links: Vec<Link>,
    run: String,
}

impl Publisher {
    pub async fn connect(brokers: &Brokers, run: &str) -> anyhow::Result<Self> {
        let mut links = Vec::new();
        for urls in brokers {
            let url = &urls[0];
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
            links.push(Link {
                conn,
                channel,
                admin,
            });
        }
        Ok(Self {
            links,
            run: run.to_owned(),
        })
    }

    /// Publishes `rate` messages per second, round-robin over `lanes`, for `duration` or until
    /// `stop`; then waits (at most 30 s) for the outstanding confirms. When a connection breaks
    /// (a cluster node killed; RabbitMQ restarted by someone else on a shared machine), the
    /// message being published counts as unconfirmed and the publisher connects again to that
    /// broker, to its next node (`reconnects`).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        brokers: Brokers,
        rate: f64,
        duration: Duration,
        lanes: Vec<Lane>,
        seed: u64,
        sent: Arc<Mutex<Vec<Sent>>>,
        stop: Arc<AtomicBool>,
        reconnects: Arc<AtomicUsize>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send + 'static {
        let mut channels: Vec<Channel> = self.links.iter().map(|l| l.channel.clone()).collect();
        // Per broker, the node connected to (in its list of URLs).
        let mut nodes = vec![0usize; brokers.len()];
        let run = self.run.clone();
        async move {
            let mut rng = Rng::new(seed ^ 0x9E37_79B9_7F4A_7C15);
            let started = Instant::now();
            let mut confirms = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut n: u64 = 0;
            let pad = "x".repeat(160);
            // Kept alive with the channels they carry (the first are the Publisher's own).
            let mut _conns: Vec<Option<Connection>> = brokers.iter().map(|_| None).collect();
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
                    let broker = lanes[lane].broker;
                    let published = channels[broker]
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
                            let urls = &brokers[broker];
                            let (c, ch) =
                                reconnect(urls, &mut nodes[broker], &run, started + duration)
                                    .await?;
                            _conns[broker] = Some(c);
                            channels[broker] = ch;
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

    /// (ready messages, consumers) of `queue` on broker `broker`; `None` when it does not
    /// exist or cannot be asked (its node was killed).
    pub async fn ready_count(&self, broker: usize, queue: &str) -> Option<(u32, u32)> {
        let opts = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = self
            .links
            .get(broker)?
            .admin
            .queue_declare(queue.into(), opts, FieldTable::default())
            .await
            .ok()?;
        Some((q.message_count(), q.consumer_count()))
    }

    /// The queues of every lane, with the lane's broker: main, delay queues, dead letters.
    pub fn queues(lanes: &[Lane]) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for lane in lanes {
            out.push((lane.broker, lane.queue.clone()));
            for ms in [500, 1000] {
                out.push((lane.broker, format!("{}.retry.{ms}ms", lane.queue)));
            }
            out.push((lane.broker, format!("{}.dead", lane.queue)));
        }
        out
    }

    /// Deletes the lanes' queues on `--amqp-url` (the cluster goes with its nodes).
    pub async fn delete_queues(&self, lanes: &[Lane]) {
        for (broker, q) in Self::queues(lanes) {
            if broker != 0 {
                continue;
            }
            // A channel error (e.g. a queue that does not exist) closes the channel: a fresh
            // one for each queue.
            if let Ok(ch) = self.links[0].conn.create_channel().await {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
                let _ = ch.close(200, "soak done".into()).await;
            }
        }
    }
}

/// A new connection and confirm channel to the next of `urls` after `node` (which it updates),
/// tried every second until `deadline` (at least 60 s).
async fn reconnect(
    urls: &[String],
    node: &mut usize,
    run: &str,
    deadline: Instant,
) -> anyhow::Result<(Connection, Channel)> {
    let deadline = deadline.max(Instant::now() + Duration::from_secs(60));
    loop {
        *node = (*node + 1) % urls.len();
        let url = &urls[*node];
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

/// Consumers of every lane's dead-letter queue (the soak is the one reader; each message acked
/// once recorded), per broker on a connection of their own that a background task opens again,
/// to the broker's next node, whenever it broke (a cluster node killed; RabbitMQ restarted by
/// another process on a shared machine): what waits in the queues meanwhile is read after the
/// reconnection. A message the broker delivers again (`redelivered`, its ack lost with the
/// connection) is counted once.
pub struct DeadLetters {
    seen: Arc<Mutex<Vec<Dead>>>,
    connected: Vec<Arc<AtomicBool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DeadLetters {
    pub fn start(brokers: &Brokers, lanes: &[Lane]) -> Self {
        let seen: Arc<Mutex<Vec<Dead>>> = Arc::default();
        let mut connected = Vec::new();
        let mut tasks = Vec::new();
        for (broker, urls) in brokers.iter().enumerate() {
            let queues: Vec<String> = lanes
                .iter()
                .filter(|l| l.broker == broker)
                .map(|l| format!("{}.dead", l.queue))
                .collect();
            let up = Arc::new(AtomicBool::new(false));
            connected.push(up.clone());
            let urls = urls.clone();
            let seen = seen.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn: Option<(Connection, Arc<AtomicBool>)> = None;
                let mut node = 0;
                loop {
                    // A consumer that ended (cancelled by the broker) on a connection still up
                    // counts as broken too: the connection is closed and opened again.
                    if !conn.as_ref().is_some_and(|(c, ended)| {
                        c.status().connected() && !ended.load(Ordering::Relaxed)
                    }) {
                        up.store(false, Ordering::Relaxed);
                        if let Some((c, _)) = conn.take() {
                            let _ = c.close(200, "soak: reconnecting".into()).await;
                        }
                        match consume(&urls[node], &queues, &seen).await {
                            Ok(c) => {
                                conn = Some(c);
                                up.store(true, Ordering::Relaxed);
                            }
                            Err(e) => {
                                eprintln!("  dead-letter reader: {e:#} (trying again)");
                                node = (node + 1) % urls.len();
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }));
        }
        Self {
            seen,
            connected,
            tasks,
        }
    }

    /// Whether the consumers are up (the drain waits for them before it trusts the counts).
    pub fn connected(&self) -> bool {
        self.connected.iter().all(|c| c.load(Ordering::Relaxed))
    }

    pub fn snapshot(&self) -> Vec<Dead> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for DeadLetters {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A connection with one consumer per dead-letter queue, each read by a task into `seen`; the
/// flag is set when one of them ends.
async fn consume(
    url: &str,
    queues: &[String],
    seen: &Arc<Mutex<Vec<Dead>>>,
) -> anyhow::Result<(Connection, Arc<AtomicBool>)> {
    let ended = Arc::new(AtomicBool::new(false));
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
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {queue}"))?;
        let seen = seen.clone();
        let ended = ended.clone();
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
                {
                    let mut seen = seen.lock().unwrap();
                    // Read before, its ack lost with a broken connection: the same message.
                    let again = delivery.redelivered && seen.iter().any(|d| d.id == id);
                    if !again {
                        seen.push(Dead { id, reason });
                    }
                }
                if delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            ended.store(true, Ordering::Relaxed);
        });
    }
    Ok((conn, ended))
}

fn value_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        other => format!("{other:?}"),
    }
}
