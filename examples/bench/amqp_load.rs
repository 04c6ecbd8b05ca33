//! Load through RabbitMQ: publishing a backlog or at a steady rate, RabbitMQ alone (a bare
//! consumer), and the process-per-message reference.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use futures_util::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};

use crate::bench::{Bench, WARMUP_SECS};
use crate::messages::{body, message_id, queue_name, run_id};
use crate::records::{Check, Latency, Records, latency_of};
use crate::{CLI_HANDLER, CONFIRM_WINDOW, POLL, SUBJECTS, now_us};

impl Bench {
    /// Persistent JSON with the bench's message id.
    fn props(run: &str, index: usize) -> BasicProperties {
        BasicProperties::default()
            .with_message_id(message_id(run, index).as_str().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
    }

    /// Publishes message `index` of `run` to its subject's queue; returns its confirm and publish
    /// time (µs).
    async fn publish_one(
        &self,
        run: &str,
        index: usize,
        sleep_ms: u64,
    ) -> anyhow::Result<(PublisherConfirm, u64)> {
        let subject = SUBJECTS[index % 2];
        let published = now_us();
        let body = body(run, index, published, sleep_ms, self.args.body_bytes);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = self
            .publish
            .basic_publish(
                "".into(),
                queue_name(run, subject).as_str().into(),
                options,
                body.as_bytes(),
                Self::props(run, index),
            )
            .await?;
        Ok((confirm, published))
    }

    /// Publishes messages 0..n, pipelined (up to CONFIRM_WINDOW unconfirmed); returns msg/s.
    pub async fn publish_backlog(&self, run: &str, n: usize, sleep_ms: u64) -> anyhow::Result<f64> {
        let started = Instant::now();
        let mut pending = VecDeque::with_capacity(CONFIRM_WINDOW);
        for index in 0..n {
            let (confirm, _) = self.publish_one(run, index, sleep_ms).await?;
            pending.push_back(confirm);
            if pending.len() >= CONFIRM_WINDOW {
                confirmed(pending.pop_front().expect("non-empty").await?)?;
            }
        }
        while let Some(confirm) = pending.pop_front() {
            confirmed(confirm.await?)?;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    }

    /// Reference: the model of rabbitmq-cli-consumer / `amqp-consume`. One consumer per subject
    /// (prefetch 1) starts `php bench-cli-handler.php` for every message, body on stdin, and
    /// acks when it exits 0. msg/s from the consumers' start to the last exit.
    pub async fn process_per_message(&mut self, n: usize) -> anyhow::Result<(f64, Check)> {
        let run = run_id();
        self.declare(&run, false).await?;
        self.publish_backlog(&run, n, 0).await?;
        let conn = Connection::connect(&self.args.amqp_url, ConnectionProperties::default())
            .await
            .context("process-per-message reference: cannot connect")?;
        let started = Instant::now();
        let mut consumers = Vec::new();
        for (k, subject) in SUBJECTS.iter().enumerate() {
            // Index i goes to SUBJECTS[i % 2].
            let count = (n + SUBJECTS.len() - 1 - k) / SUBJECTS.len();
            let (channel, consumer) = consume(
                &conn,
                &queue_name(&run, subject),
                1,
                "bench-process-per-message",
            )
            .await?;
            consumers.push(tokio::spawn(spawn_per_message(
                consumer,
                count,
                self.args.php_cli.clone(),
                self.records.clone(),
                channel,
            )));
        }
        for consumer in consumers {
            consumer.await??;
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        let _ = conn.close(200, "bench done".into()).await;
        self.delete_run_queues(&run).await;
        let mut records = Records::new(&self.records, &run);
        records.poll()?;
        Ok((rate, records.check(n)))
    }

    /// The broker alone: the same paced publishing, consumed by a bare lapin consumer in this
    /// process (own connection, one channel per subject, the agent's window, each delivery
    /// acked on arrival). Publish -> delivery latency: what RabbitMQ costs any consumer.
    pub async fn broker_alone(
        &mut self,
        rate: f64,
        secs: u64,
        window: u16,
    ) -> anyhow::Result<Latency> {
        let run = run_id();
        self.declare(&run, false).await?;
        let n = (rate * (secs + WARMUP_SECS) as f64).round() as usize;
        let conn = Connection::connect(&self.args.amqp_url, ConnectionProperties::default())
            .await
            .context("broker baseline: cannot connect")?;
        let received = Arc::new(std::sync::Mutex::new(vec![0u64; n]));
        let count = Arc::new(AtomicUsize::new(0));
        let mut readers = Vec::new();
        for subject in SUBJECTS {
            let (channel, consumer) = consume(
                &conn,
                &queue_name(&run, subject),
                window,
                "bench-broker-baseline",
            )
            .await?;
            readers.push(tokio::spawn(stamp_deliveries(
                consumer,
                format!("{run}-"),
                received.clone(),
                count.clone(),
                channel,
            )));
        }
        let (published, _) = self.publish_paced(&run, n, rate, 0).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while count.load(Ordering::Relaxed) < n {
            ensure!(
                Instant::now() < deadline,
                "broker baseline: only {} of {n} messages delivered within 30 s",
                count.load(Ordering::Relaxed)
            );
            tokio::time::sleep(POLL).await;
        }
        let _ = conn.close(200, "bench done".into()).await;
        for reader in readers {
            reader.abort();
        }
        self.delete_run_queues(&run).await;
        let received = received.lock().expect("not poisoned");
        let warm_end = published.first().copied().unwrap_or(0) + WARMUP_SECS * 1_000_000;
        Ok(latency_of(
            published
                .iter()
                .zip(received.iter())
                .filter(|(p, _)| **p >= warm_end)
                .map(|(p, r)| *r as i64 - *p as i64)
                .collect(),
        ))
    }

    /// Publishes messages 0..n at `rate`; returns each message's publish time (µs) and the
    /// achieved rate. Confirms are awaited by a separate task, so they do not pace publishing.
    pub async fn publish_paced(
        &self,
        run: &str,
        n: usize,
        rate: f64,
        sleep_ms: u64,
    ) -> anyhow::Result<(Vec<u64>, f64)> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PublisherConfirm>();
        let checker = tokio::spawn(async move {
            while let Some(confirm) = rx.recv().await {
                confirmed(confirm.await?)?;
            }
            anyhow::Ok(())
        });
        let mut published = vec![0u64; n];
        let started = Instant::now();
        let mut sent = 0;
        while sent < n {
            let due = ((started.elapsed().as_secs_f64() * rate) as usize + 1).min(n);
            while sent < due {
                let (confirm, at) = self.publish_one(run, sent, sleep_ms).await?;
                published[sent] = at;
                tx.send(confirm).ok().context("confirm checker gone")?;
                sent += 1;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let achieved = n as f64 / started.elapsed().as_secs_f64();
        drop(tx);
        checker.await??;
        Ok((published, achieved))
    }
}

/// A new channel on `conn` with `prefetch`, consuming `queue` (manual acks).
async fn consume(
    conn: &Connection,
    queue: &str,
    prefetch: u16,
    tag: &str,
) -> anyhow::Result<(Channel, lapin::Consumer)> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

fn confirmed(confirmation: Confirmation) -> anyhow::Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => bail!("publish returned unroutable"),
        other => bail!("publish not confirmed: {other:?}"),
    }
}

/// One consumer of the process-per-message reference: `count` deliveries, each handed to a new
/// `php` process on stdin and acked when it exits 0. Returns the channel, kept open until then.
async fn spawn_per_message(
    mut consumer: lapin::Consumer,
    count: usize,
    php: PathBuf,
    records: PathBuf,
    channel: Channel,
) -> anyhow::Result<Channel> {
    use tokio::io::AsyncWriteExt as _;
    for _ in 0..count {
        let delivery = consumer
            .next()
            .await
            .context("the consumer ended early")??;
        let mut child = tokio::process::Command::new(&php)
            .arg(CLI_HANDLER)
            .env("RECORD_DIR", &records)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", php.display()))?;
        let mut stdin = child.stdin.take().context("no stdin")?;
        stdin.write_all(&delivery.data).await?;
        drop(stdin);
        let status = child.wait().await?;
        ensure!(status.success(), "{CLI_HANDLER} exited with {status}");
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    Ok(channel)
}

/// One consumer of the broker baseline: acks every delivery on arrival and stamps its arrival
/// (µs) at its index (the message id after `prefix`) in `received`.
async fn stamp_deliveries(
    mut consumer: lapin::Consumer,
    prefix: String,
    received: Arc<std::sync::Mutex<Vec<u64>>>,
    count: Arc<AtomicUsize>,
    channel: Channel,
) -> anyhow::Result<Channel> {
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let at = now_us();
        let index = delivery
            .properties
            .message_id()
            .as_ref()
            .and_then(|id| id.as_str().strip_prefix(prefix.as_str()))
            .and_then(|i| i.parse::<usize>().ok())
            .context("broker baseline: a message without a bench id")?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        received.lock().expect("not poisoned")[index] = at;
        count.fetch_add(1, Ordering::Relaxed);
    }
    Ok(channel)
}
