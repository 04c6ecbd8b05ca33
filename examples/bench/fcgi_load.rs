//! Direct FastCGI load on the bench's php-fpm pool, no RabbitMQ: the ceiling. Each request is
//! built by the agent's own [`RequestTemplate`] and its reply judged by the agent's own
//! [`outcome::parse_head`] and [`outcome::classify_reply`], so the ceiling cannot drift from
//! what the agent sends.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use amqp_agent::contract::{self, Envelope, RequestTemplate};
use amqp_agent::outcome::{self, Verdict};
use anyhow::Context as _;
use fastcgi_client::conn::KeepAlive;
use fastcgi_client::io::TokioCompat;
use fastcgi_client::{Client, Params, Request};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::bench::Bench;
use crate::messages::{body, message_id, queue_name, run_id};
use crate::records::{Records, latency_of};
use crate::results::CeilingResult;
use crate::sampling::{clock_ticks_per_sec, cpu_snapshot};
use crate::{POLL, SUBJECTS, now_us};

/// A connection to the bench's php-fpm, over TCP (`TCP_NODELAY`) or a Unix socket.
type FpmStream = std::pin::Pin<Box<dyn FpmIo>>;
trait FpmIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send> FpmIo for T {}

async fn connect_fpm(address: &str) -> anyhow::Result<FpmStream> {
    Ok(match address.strip_prefix("unix:") {
        Some(path) => Box::pin(tokio::net::UnixStream::connect(path).await?),
        None => {
            let stream = TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            Box::pin(stream)
        }
    })
}

type FcgiClient<S> = Client<TokioCompat<S>, KeepAlive>;

/// What the requests of one ceiling run share.
struct RequestCtx {
    run: String,
    sleep_ms: u64,
    body_bytes: usize,
    /// The agent's request template of each of [`SUBJECTS`], in that order.
    templates: Vec<RequestTemplate>,
}

impl RequestCtx {
    /// One request as the agent would send it for message `index` of the run (attempt 1, as
    /// published by the bench); true when the agent would ack PHP's reply.
    async fn call<S>(
        &self,
        client: &mut FcgiClient<S>,
        index: usize,
        published_us: u64,
    ) -> anyhow::Result<bool>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let subject = SUBJECTS[index % 2];
        let body = body(
            &self.run,
            index,
            published_us,
            self.sleep_ms,
            self.body_bytes,
        );
        let id = message_id(&self.run, index);
        let routing_key = queue_name(&self.run, subject);
        let envelope = Envelope {
            subject,
            message_id: Cow::Borrowed(&id),
            message_id_generated: false,
            attempt: 1,
            redelivered: false,
            routing_key: &routing_key,
            exchange: "",
            content_type: Some("application/json"),
            kind: None,
            correlation_id: None,
            timestamp: None,
            headers: None,
        };
        let params = self.templates[index % 2].params(
            &envelope,
            body.as_bytes(),
            (None, None),
            contract::unix_now(),
        )?;
        let mut fcgi_params = Params::default();
        for (name, value) in &params {
            fcgi_params = fcgi_params.custom(*name, value.as_ref());
        }
        let response = client
            .execute(Request::new_tokio(fcgi_params, body.as_bytes()))
            .await?;
        Ok(acked(response.stdout.as_deref().unwrap_or_default()))
    }
}

/// The agent's verdict on a reply (`require_ack_header = true`) is success.
fn acked(stdout: &[u8]) -> bool {
    outcome::parse_head(stdout).is_ok_and(|head| {
        matches!(
            outcome::classify_reply(&head, true, String::new),
            Verdict::Success
        )
    })
}

/// Where a ceiling connection takes its next request from.
#[derive(Clone)]
enum Source {
    /// As fast as possible: indexes 0..n from a shared counter, stamped when taken.
    Counter(Arc<AtomicUsize>, usize),
    /// Open loop: (index, release µs) from a scheduler that runs at a fixed rate.
    Paced(Arc<tokio::sync::Mutex<UnboundedReceiver<(usize, u64)>>>),
}

/// One ceiling connection: sends requests until the source is exhausted; returns failures.
async fn fcgi_worker<S>(
    mut client: FcgiClient<S>,
    ctx: Arc<RequestCtx>,
    source: Source,
) -> anyhow::Result<usize>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut failures = 0usize;
    loop {
        let (index, published) = match &source {
            Source::Counter(next, n) => {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= *n {
                    break;
                }
                (i, now_us())
            }
            Source::Paced(rx) => {
                let item = rx.lock().await.recv().await;
                match item {
                    Some(item) => item,
                    None => break,
                }
            }
        };
        if !ctx.call(&mut client, index, published).await? {
            failures += 1;
        }
    }
    Ok(failures)
}

/// Releases (index, due µs) of 0..n at `rate` to the paced connections; returns each index's
/// release time and the achieved rate.
async fn release_paced(
    tx: UnboundedSender<(usize, u64)>,
    n: usize,
    rate: f64,
    started: Instant,
) -> anyhow::Result<(Vec<u64>, f64)> {
    let mut due_us = vec![0u64; n];
    let mut sent = 0;
    while sent < n {
        let due = ((started.elapsed().as_secs_f64() * rate) as usize + 1).min(n);
        while sent < due {
            let t = now_us();
            due_us[sent] = t;
            tx.send((sent, t)).ok().context("FastCGI workers gone")?;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    Ok((due_us, n as f64 / started.elapsed().as_secs_f64()))
}

impl Bench {
    /// `concurrency` keep-alive connections taking requests from `source`, each a task.
    async fn fcgi_workers(
        &self,
        concurrency: usize,
        ctx: &Arc<RequestCtx>,
        source: &Source,
        buffered: bool,
    ) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<usize>>>> {
        let mut tasks = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            let stream = connect_fpm(&self.fpm_address).await?;
            let (ctx, source) = (ctx.clone(), source.clone());
            tasks.push(if buffered {
                let client = Client::new_keep_alive_tokio(tokio::io::BufWriter::new(stream));
                tokio::spawn(fcgi_worker(client, ctx, source))
            } else {
                tokio::spawn(fcgi_worker(
                    Client::new_keep_alive_tokio(stream),
                    ctx,
                    source,
                ))
            });
        }
        Ok(tasks)
    }

    /// Direct FastCGI: `n` requests over `concurrency` keep-alive connections, as fast as
    /// possible, or open-loop at `paced = (rate, secs)` (then latency is measured).
    pub async fn ceiling(
        &mut self,
        concurrency: usize,
        n: usize,
        paced: Option<(f64, u64)>,
        buffered: bool,
        sleep_ms: u64,
    ) -> anyhow::Result<CeilingResult> {
        let run = run_id();
        let ctx = Arc::new(RequestCtx {
            run: run.clone(),
            sleep_ms,
            body_bytes: self.args.body_bytes,
            templates: self.templates.clone(),
        });
        self.wait_quiet().await;
        let before = cpu_snapshot(self.fpm_pid);
        // Paced mode: a scheduler releases (index, due µs) at the rate; idle connections take them.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(usize, u64)>();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let source = if paced.is_some() {
            Source::Paced(rx.clone())
        } else {
            Source::Counter(Arc::new(AtomicUsize::new(0)), n)
        };
        let started = Instant::now();
        let tasks = self
            .fcgi_workers(concurrency, &ctx, &source, buffered)
            .await?;
        drop(rx);
        let (due_us, offered) = match paced {
            Some((rate, _)) => release_paced(tx, n, rate, started).await?,
            None => {
                drop(tx);
                (Vec::new(), 0.0)
            }
        };
        let mut failures = 0;
        for task in tasks {
            failures += task.await??;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let after = cpu_snapshot(self.fpm_pid);
        let mut records = Records::new(&self.records, &run);
        let deadline = Instant::now() + Duration::from_secs(10);
        while records.poll()? < n && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        Ok(CeilingResult {
            client_us_per_req: after.bench.saturating_sub(before.bench) as f64
                / clock_ticks_per_sec()
                * 1e6
                / n as f64,
            rate: if paced.is_some() {
                offered
            } else {
                n as f64 / elapsed
            },
            failures,
            check: records.check(n),
            latency: paced.map(|_| records.latency_after_warm_up(&due_us)),
            background_cores: after.background_cores(&before, 0),
            cycle: latency_of(records.child_cycles()),
        })
    }
}
