//! A worker's batch: several deliveries of its subject in one FastCGI request
//! ([docs/batches.md](../../docs/batches.md)), each settled as soon as its outcome line arrives.
//!
//! Invariant: every delivery of the batch is settled exactly once, as the worker settles a single
//! message (ack; or the retry or dead-letter copy confirmed, then the ack; or a nack): by its
//! outcome line while the reply streams in, or before the request (limits, `poison`), or after
//! it by `batch::retry` when the request ended without its line. An entry is nacked back to its
//! queue, without using an attempt, when it did not fit the request or when the request broke
//! while PHP was not running it: its redelivery goes alone.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use tracing::{Instrument, warn};

use super::WorkerState;
use super::entry::{Entry, Settler};
use crate::actors::SubjectRuntime;
use crate::actors::acks::Acks;
use crate::actors::worker;
use crate::batch::auto::Observed;
use crate::batch::outcomes::Reader;
use crate::batch::retry::{self, Failure, Fate};
use crate::batch::wire::Encoder;
use crate::broker::Publisher;
use crate::contract::{self, Param};
use crate::outcome::Verdict;
use crate::printable::printable;
use crate::telemetry::{self, events::Event};

/// Deliveries a worker sends in one request, and the publisher of their consumer incarnation.
pub(crate) struct BatchJob {
    /// The deliveries, oldest first (none redelivered; see `batch::Batching::take`).
    pub deliveries: Vec<Delivery>,
    /// Confirm-mode channel for retry and dead-letter copies.
    pub publisher: Arc<Publisher>,
    /// Settles the deliveries on their channel.
    pub acks: Acks,
}

/// Handles a batch end to end.
pub(super) async fn handle_batch(state: &mut WorkerState, job: BatchJob) -> worker::Handled {
    let BatchJob {
        deliveries,
        publisher,
        acks,
    } = job;
    let runtime = state.runtime.clone();
    let settler = Settler::new(&runtime, &publisher, &acks);
    runtime.events.emit(Event::BatchSent {
        size: deliveries.len(),
    });
    // Crash-loop protection, as for single messages: a start record for each before FPM is
    // called (one write for the batch, under one permit of the gate), a done record when it is
    // settled. No entry is a redelivery, so none runs alone. After a crash every entry still in
    // flight is a suspect, redelivered and so handled alone: only the one that kills the agent
    // again is in flight at the next crash (docs/crash-loop.md).
    let keys: Vec<_> = deliveries
        .iter()
        .map(crate::poison::journal::key_of)
        .collect();
    let entries = entries_of(&runtime, &deliveries, &keys).await;
    // Every line of the reply must carry it: a handler's own output cannot pass for an outcome.
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    // PHP continues each entry's trace from its own process span when traces are exported.
    let exported: Vec<_> = entries
        .iter()
        .map(|e| telemetry::context_of(&e.span))
        .collect();
    let Some(request) = encode(&settler, &runtime, &entries, &exported, &nonce).await else {
        return worker::Handled {
            signature_rejected: settler.pauses(),
            ..worker::Handled::default()
        };
    };
    let (failure, observed) = send(&settler, &entries, &request, &nonce).await;
    let Some((failure, reader, status)) = failure else {
        return worker::Handled {
            signature_rejected: settler.pauses(),
            observed,
            ..worker::Handled::default()
        };
    };
    let unreached = settle_unsettled(
        &settler,
        &entries,
        &reader,
        &request.sent,
        &failure,
        &status,
    )
    .await;
    worker::Handled {
        fpm_unreachable: unreached,
        signature_rejected: settler.pauses(),
        // A request FPM could not be reached for teaches nothing about the handler.
        observed: observed.filter(|_| !unreached),
    }
}

/// A batch's request: the entries sent (their indexes), its params and its body.
struct Request<'a> {
    sent: Vec<usize>,
    params: Vec<Param<'a>>,
    body: Vec<u8>,
}

/// Sends the batch inside its `fastcgi` span and settles each entry as its outcome line arrives.
/// Returns the request's failure (with the reader and the status counted for it), if any, and
/// the timing of its outcome lines.
async fn send(
    settler: &Settler<'_>,
    entries: &[Entry<'_>],
    request: &Request<'_>,
    nonce: &str,
) -> (
    Option<(Failure, Reader, Cow<'static, str>)>,
    Option<Observed>,
) {
    let runtime = settler.runtime();
    let sent = &request.sent;
    let fcgi_span = worker::fastcgi_span(runtime);
    fcgi_span.record("amqp_agent.batch.size", sent.len());
    for &i in sent {
        telemetry::link(&fcgi_span, &entries[i].span);
    }
    // The reply is read while the outcomes are settled: an ack goes out as soon as its line
    // arrives, a retry copy is published while PHP works on the next entry.
    let mut reader = Reader::new(
        sent.iter().copied(),
        runtime.config.fpm.require_ack_header,
        nonce,
    );
    let started = Instant::now();
    let (result, lines) = stream(settler, entries, &mut reader, request, &fcgi_span).await;
    let elapsed = started.elapsed();
    let (failure, status) = judged(&result, &mut reader, &fcgi_span);
    runtime.events.emit(Event::FpmReplied {
        status: &status,
        elapsed,
    });
    if status != "200" {
        fcgi_span.record("otel.status_code", "ERROR");
        fcgi_span.record("error.type", status.as_ref());
    }
    let observed = Some(lines.observed(started, sent.len(), elapsed));
    (failure.map(|f| (f, reader, status)), observed)
}

/// The entries of a batch, each with its start record in the crash journal (one write for
/// the batch).
async fn entries_of<'a>(
    runtime: &'a SubjectRuntime,
    deliveries: &'a [Delivery],
    keys: &'a [Cow<'a, str>],
) -> Vec<Entry<'a>> {
    let starts: Vec<(&str, bool)> = deliveries
        .iter()
        .zip(keys)
        .map(|(d, key)| (key.as_ref(), d.redelivered))
        .collect();
    let tracked = runtime.crashes.begin_batch(&starts).await;
    deliveries
        .iter()
        .zip(tracked)
        .map(|(delivery, tracked)| {
            let id = worker::message_id(&delivery.properties);
            Entry::new(runtime, delivery, id, tracked)
        })
        .collect()
}

/// The request of a batch. The entries that never reach PHP are settled here first
/// (`poison`, params that cannot be built) or sent back to go alone (over
/// `limits.max_batch_bytes`). `None` when no entry is left to send.
async fn encode<'e>(
    settler: &Settler<'_>,
    runtime: &'e SubjectRuntime,
    entries: &'e [Entry<'_>],
    exported: &'e [Option<(String, Option<String>)>],
    nonce: &str,
) -> Option<Request<'e>> {
    let now = contract::unix_now();
    let bodies: usize = entries.iter().map(|e| e.delivery.data.len()).sum();
    // Sized once the first entry's head line and fields are known (below).
    let mut encoder = Encoder::new(0, nonce);
    let max_bytes = runtime.config.limits.max_batch_bytes;
    let mut first = None;
    let mut sent = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        if let Some(crashes) = entry.poison() {
            settler.settle(entry, crate::poison::verdict(crashes)).await;
            continue;
        }
        let params = match entry.params(runtime, exported[i].as_ref(), now) {
            Ok(params) => params,
            Err(verdict) => {
                settler.settle(entry, verdict).await;
                continue;
            }
        };
        // The consumer estimated the entries' sizes; the bound is checked here exactly.
        let len = Encoder::entry_len(i, &params, entry.delivery.data.len());
        if !encoder.is_empty() && encoder.len() + len > max_bytes {
            settler.alone(entry);
            continue;
        }
        if encoder.is_empty() {
            // Every body, and for each entry this one's head line and fields with a quarter
            // more (ids, headers and attempts differ in length): the body is not copied again
            // as it fills (with a fixed 256 bytes per entry it was, once per batch, at
            // Messenger's header JSON and signatures).
            let head = len - entry.delivery.data.len();
            encoder.reserve(bodies.min(max_bytes) + entries.len() * (head + head / 4 + 64));
        }
        encoder.push(i, &params, &entry.delivery.data);
        sent.push(i);
        first.get_or_insert(params);
    }
    let (params, body) = encoder.finish(&first?);
    Some(Request { sent, params, body })
}

/// After a batch request that ended without an outcome for every entry: the one PHP was running
/// gets the failure's verdict, the others go back to be retried alone (`batch::retry`). Returns
/// whether FPM could not be reached.
async fn settle_unsettled(
    settler: &Settler<'_>,
    entries: &[Entry<'_>],
    reader: &Reader,
    sent: &[usize],
    failure: &Failure,
    status: &str,
) -> bool {
    let running = reader.running();
    let unsettled = retry::unsettled(
        sent.iter().copied(),
        |i| reader.answered(i),
        running,
        failure,
    );
    if !unsettled.is_empty() {
        let detail = match failure.verdict() {
            Verdict::Transient { detail, .. } | Verdict::Permanent { detail, .. } => detail,
            Verdict::Success => String::new(),
        };
        let alone = unsettled.iter().filter(|(_, f)| *f == Fate::Alone).count();
        let running = running.map(|i| entries[i].envelope.message_id.to_string());
        warn!(
            subject = %settler.runtime().name,
            reason = %status,
            detail = %printable(&detail).capped(worker::EXCERPT),
            answered = sent.len() - unsettled.len(),
            running = %printable(running.as_deref().unwrap_or("-")),
            alone,
            "Batch request ended without an outcome for every message; the one PHP was running counts a failed attempt, the others go back to the queue to be retried alone"
        );
    }
    for (i, fate) in unsettled {
        match fate {
            Fate::Settle(verdict) => settler.settle(&entries[i], verdict).await,
            Fate::Alone => settler.alone(&entries[i]),
        }
    }
    let unreached = matches!(
        failure,
        Failure::Fpm {
            unreached: true,
            ..
        }
    );
    unreached
}

/// What a batch request came to: its failure, if any (the reader's protocol error first), and
/// its status as counted for a single reply (its HTTP status, or the error's reason); both are
/// recorded on the `fastcgi` span.
fn judged(
    result: &Result<crate::fastcgi::Reply, crate::fastcgi::FpmError>,
    reader: &mut Reader,
    fcgi_span: &tracing::Span,
) -> (Option<Failure>, Cow<'static, str>) {
    let failure = match &result {
        Err(_) if reader.error().is_some() => Some(Failure::Protocol(
            reader.error().map(|e| e.0.clone()).unwrap_or_default(),
        )),
        Err(e) => Some(Failure::fpm(e)),
        Ok(reply) => {
            fcgi_span.record("http.response.body.size", reply.size);
            reader.finish()
        }
    };
    if let Some(status) = reader.status() {
        fcgi_span.record("http.response.status_code", status);
    }
    // Counted like a single reply: its status, or the error's reason.
    let status = match (&failure, reader.status()) {
        (None, _) => Cow::Borrowed("200"),
        (Some(Failure::Whole(_)), Some(status)) => Cow::Owned(status.to_string()),
        (Some(f), _) => Cow::Borrowed(f.reason()),
    };
    (failure, status)
}

/// How many outcome lines of a batch's reply arrived, and when the first and the last did
/// (`batch::auto` learns from them).
#[derive(Default)]
struct Lines {
    count: usize,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Lines {
    fn arrived(&mut self) {
        let now = Instant::now();
        self.count += 1;
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// The timing `batch::auto` learns from: the outcome lines when every entry sent got
    /// one, else how far the request got before it ended (`ended` after its start).
    fn observed(&self, started: Instant, sent: usize, ended: Duration) -> Observed {
        match (self.first, self.last) {
            (Some(first), Some(last)) if self.count == sent => Observed::Batch {
                lines: self.count,
                first: first - started,
                last: last - started,
            },
            (first, last) => Observed::Cut {
                lines: self.count,
                first: first.map(|t| t - started),
                last: last.map(|t| t - started),
                ended,
            },
        }
    }
}

/// Sends the batch and settles each entry as its outcome line arrives: an ack goes out as soon
/// as its line is read, a retry copy is published while PHP works on the next entry.
async fn stream(
    settler: &Settler<'_>,
    entries: &[Entry<'_>],
    reader: &mut Reader,
    request: &Request<'_>,
    fcgi_span: &tracing::Span,
) -> (
    Result<crate::fastcgi::Reply, crate::fastcgi::FpmError>,
    Lines,
) {
    let runtime = settler.runtime();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Verdict)>();
    let mut lines = Lines::default();
    let first = &entries[request.sent[0]].envelope.message_id;
    let label = format!("batch of {} from {first}", request.sent.len());
    let running = runtime.monitor.running(&runtime.name, &label);
    let send = async {
        // Until its last entry, a batch's next line need not wake the thread (crate::wakeups).
        let mut unhurried = crate::wakeups::Unhurried::new();
        unhurried.set(reader.unanswered());
        let mut on_stdout = |chunk: &[u8]| {
            let fed = reader
                .feed(chunk, &mut |i, verdict| {
                    lines.arrived();
                    let _ = tx.send((i, verdict));
                })
                .map_err(|e| e.to_string());
            unhurried.set(if fed.is_ok() { reader.unanswered() } else { 0 });
            fed
        };
        let sent = runtime
            .upstreams
            .request_streaming(
                &request.params,
                &request.body,
                |i| running.set_upstream(i),
                &mut on_stdout,
            )
            .await;
        drop(tx);
        sent.result
    }
    .instrument(fcgi_span.clone());
    let settle_streamed = async {
        while let Some((i, verdict)) = rx.recv().await {
            settler.settle(&entries[i], verdict).await;
        }
    };
    let (result, ()) = tokio::join!(send, settle_streamed);
    drop(running);
    (result, lines)
}
