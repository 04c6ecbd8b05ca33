//! A worker's batch: several deliveries of its subject in one FastCGI request
//! ([docs/batches.md](../../docs/batches.md)), each settled as soon as its outcome line arrives.
//!
//! Invariant: every delivery of the batch is settled exactly once, as the worker settles a single
//! message (ack; or the retry or dead-letter copy confirmed, then the ack; or a nack): by its
//! outcome line while the reply streams in, or before the request (limits, `poison`), or after
//! it by `batch::retry` when the request ended without its line. An entry is nacked back to its
//! queue, without using an attempt, when it did not fit the request or when the request broke
//! while PHP was not running it: its redelivery goes alone.

use std::sync::Arc;
use std::time::Instant;

use lapin::message::Delivery;
use tracing::{Instrument, warn};

use super::{Original, WorkerState};
use crate::actors::SubjectRuntime;
use crate::actors::acks::Acks;
use crate::actors::worker;
use crate::batch::outcomes::Reader;
use crate::batch::retry::{self, Failure, Fate};
use crate::batch::wire::Encoder;
use crate::broker::Publisher;
use crate::contract::{self, Envelope};
use crate::outcome::Verdict;
use crate::printable::printable;
use crate::telemetry::{self, events::Event};

/// Deliveries a worker sends in one request, and the publisher of their consumer incarnation.
pub struct BatchJob {
    /// The deliveries, oldest first (none redelivered; see `batch::Batching::take`).
    pub deliveries: Vec<Delivery>,
    /// Confirm-mode channel for retry and dead-letter copies.
    pub publisher: Arc<Publisher>,
    /// Settles the deliveries on their channel.
    pub acks: Acks,
}

/// One delivery of the batch and what the worker knows of it.
struct Entry<'a> {
    delivery: &'a Delivery,
    envelope: Envelope<'a>,
    /// The message's `process` span.
    span: tracing::Span,
    /// Trace context for PHP: the process span's when exported, else the publisher's.
    exported: Option<(String, Option<String>)>,
    incoming: crate::trace_context::Incoming<'a>,
}

/// What settles an entry.
struct Settler<'a> {
    runtime: &'a SubjectRuntime,
    publisher: &'a Publisher,
    acks: &'a Acks,
    /// PHP refused an entry's signature (the secrets differ): the subject pauses.
    rejected: std::sync::atomic::AtomicBool,
}

impl Settler<'_> {
    /// Returns the entry to its queue without using an attempt: the broker redelivers it with
    /// `redelivered` set, and a redelivery goes alone (`batch::Batching::take`).
    fn alone(&self, entry: &Entry<'_>) {
        entry.span.in_scope(|| {
            tracing::debug!("Returned to the queue, to be retried alone");
        });
        entry.span.record("outcome", "requeued");
        self.acks.nack(entry.delivery.delivery_tag);
    }

    async fn settle(&self, entry: &Entry<'_>, verdict: Verdict) {
        if matches!(
            verdict,
            Verdict::Transient {
                reason: crate::outcome::SIGNATURE_REJECTED,
                ..
            }
        ) {
            self.runtime.events.emit(Event::SignatureRejected);
            self.rejected
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let decision = self.runtime.policy.decide(&verdict, entry.envelope.attempt);
        let original = Original {
            delivery: entry.delivery,
            message_id: &entry.envelope.message_id,
            generated: entry.envelope.message_id_generated,
            attempt: entry.envelope.attempt,
            exchange: entry.envelope.exchange,
            routing_key: entry.envelope.routing_key,
            span: &entry.span,
        };
        worker::settle(
            self.runtime,
            self.publisher,
            self.acks,
            original,
            &verdict,
            decision,
        )
        .instrument(entry.span.clone())
        .await;
    }
}

/// Handles a batch end to end.
pub(super) async fn handle_batch(state: &mut WorkerState, job: BatchJob) -> worker::Handled {
    let BatchJob {
        deliveries,
        publisher,
        acks,
    } = job;
    let runtime = state.runtime.clone();
    let settler = Settler {
        runtime: &runtime,
        publisher: &publisher,
        acks: &acks,
        rejected: std::sync::atomic::AtomicBool::new(false),
    };
    let rejected =
        |settler: &Settler<'_>| settler.rejected.load(std::sync::atomic::Ordering::Relaxed);
    runtime.events.emit(Event::BatchSent {
        size: deliveries.len(),
    });
    let ids: Vec<_> = deliveries
        .iter()
        .map(|d| worker::message_id(&d.properties))
        .collect();
    // Crash-loop protection, as for single messages: a start record for each before FPM is
    // called (one write for the batch, under one permit of the gate), a done record when it is
    // settled. No entry is a redelivery, so none runs alone. After a crash every entry still in
    // flight is a suspect, redelivered and so handled alone: only the one that kills the agent
    // again is in flight at the next crash (docs/crash-loop.md).
    let keys: Vec<_> = deliveries
        .iter()
        .map(crate::poison::journal::key_of)
        .collect();
    let mut tracked = journal_starts(&runtime, &deliveries, &keys).await;
    let entries = entries_of(&runtime, &deliveries, &ids);

    // Every line of the reply must carry it: a handler's own output cannot pass for an outcome.
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let Some((sent, params, body)) =
        encode(&settler, &runtime, &entries, &mut tracked, &nonce).await
    else {
        return worker::Handled {
            signature_rejected: rejected(&settler),
            ..worker::Handled::default()
        };
    };

    let fcgi_span = worker::fastcgi_span(&runtime);
    fcgi_span.record("amqp_agent.batch.size", sent.len());
    for &i in &sent {
        telemetry::link(&fcgi_span, &entries[i].span);
    }

    // The reply is read while the outcomes are settled: an ack goes out as soon as its line
    // arrives, a retry copy is published while PHP works on the next entry.
    let mut reader = Reader::new(
        sent.iter().copied(),
        runtime.config.fpm.require_ack_header,
        &nonce,
    );
    let started = Instant::now();
    let (result, lines) = stream(
        &settler,
        &entries,
        &mut tracked,
        &mut reader,
        &sent,
        (&params, &body),
        &fcgi_span,
    )
    .await;
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
    let Some(failure) = failure else {
        return worker::Handled {
            signature_rejected: rejected(&settler),
            observed: observed(lines, started, sent.len()),
            ..worker::Handled::default()
        };
    };
    let unreached = settle_unsettled(
        &settler,
        &entries,
        &mut tracked,
        &reader,
        &sent,
        &failure,
        &status,
    )
    .await;
    worker::Handled {
        fpm_unreachable: unreached,
        signature_rejected: rejected(&settler),
        observed: None,
    }
}

/// The entries of a batch: each delivery's envelope, `process` span and trace context.
fn entries_of<'a>(
    runtime: &'a SubjectRuntime,
    deliveries: &'a [Delivery],
    ids: &'a [(std::borrow::Cow<'a, str>, bool)],
) -> Vec<Entry<'a>> {
    deliveries
        .iter()
        .zip(ids)
        .map(|(delivery, (id, generated))| {
            let (envelope, untrusted) =
                worker::envelope_of(runtime, delivery, id.clone(), *generated);
            let incoming = crate::trace_context::read(envelope.headers);
            let span = worker::message_span(runtime, delivery, id, envelope.attempt, &incoming);
            span.in_scope(|| {
                worker::admitted(runtime, *generated, untrusted.as_ref(), &incoming);
            });
            Entry {
                delivery,
                envelope,
                exported: telemetry::context_of(&span),
                span,
                incoming,
            }
        })
        .collect()
}

/// The request of a batch: the entries sent (their indexes), its params and its body. The
/// others are settled here first (`poison`, params that cannot be built) or sent back to go
/// alone (over `limits.max_batch_bytes`). `None` when no entry is left to send.
#[allow(clippy::type_complexity)]
async fn encode<'a>(
    settler: &Settler<'_>,
    runtime: &'a SubjectRuntime,
    entries: &'a [Entry<'a>],
    tracked: &mut [Option<crate::poison::journal::Tracked<'_>>],
    nonce: &str,
) -> Option<(
    Vec<usize>,
    Vec<(&'static str, std::borrow::Cow<'a, str>)>,
    Vec<u8>,
)> {
    // Entries that never reach PHP are settled first; the others are encoded.
    let now = contract::unix_now();
    let capacity = entries.iter().map(|e| e.delivery.data.len()).sum();
    let mut encoder = Encoder::new(capacity, nonce);
    let max_bytes = runtime.config.limits.max_batch_bytes;
    let mut first = None;
    let mut sent = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        if let Some(crashes) = tracked[i].as_ref().and_then(|t| t.poison()) {
            settler.settle(entry, crate::poison::verdict(crashes)).await;
            tracked[i] = None;
            continue;
        }
        let trace = match &entry.exported {
            Some((parent, state)) => (Some(parent.as_str()), state.as_deref()),
            None => (entry.incoming.traceparent, entry.incoming.tracestate),
        };
        match runtime
            .template
            .params(&entry.envelope, &entry.delivery.data, trace, now)
        {
            Err(e) => {
                entry.span.in_scope(|| {
                    warn!(error = %e, "Message cannot be sent to FPM; dead-lettering it");
                });
                let verdict = Verdict::Permanent {
                    reason: e.reason(),
                    detail: e.to_string(),
                    status: None,
                };
                settler.settle(entry, verdict).await;
                tracked[i] = None;
            }
            Ok(params) => {
                // The consumer estimated the entries' sizes; the bound is checked here exactly.
                let len = Encoder::entry_len(i, &params, entry.delivery.data.len());
                if !encoder.is_empty() && encoder.len() + len > max_bytes {
                    settler.alone(entry);
                    tracked[i] = None;
                    continue;
                }
                encoder.push(i, &params, &entry.delivery.data);
                sent.push(i);
                first.get_or_insert(params);
            }
        }
    }
    let first = first?;
    let (params, body) = encoder.finish(&first);
    Some((sent, params, body))
}

/// After a batch request that ended without an outcome for every entry: the one PHP was running
/// gets the failure's verdict, the others go back to be retried alone (`batch::retry`). Returns
/// whether FPM could not be reached.
#[allow(clippy::too_many_arguments)]
async fn settle_unsettled(
    settler: &Settler<'_>,
    entries: &[Entry<'_>],
    tracked: &mut [Option<crate::poison::journal::Tracked<'_>>],
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
            subject = %settler.runtime.name,
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
        tracked[i] = None;
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
) -> (Option<Failure>, std::borrow::Cow<'static, str>) {
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
        (None, _) => std::borrow::Cow::Borrowed("200"),
        (Some(Failure::Whole(_)), Some(status)) => std::borrow::Cow::Owned(status.to_string()),
        (Some(f), _) => std::borrow::Cow::Borrowed(f.reason()),
    };
    (failure, status)
}

/// When the first and the last outcome line of a batch's reply arrived, and how many did
/// (`batch::auto` learns from them).
type Lines = (usize, Option<Instant>, Option<Instant>);

/// Sends the batch and settles each entry as its outcome line arrives: an ack goes out as soon
/// as its line is read, a retry copy is published while PHP works on the next entry.
#[allow(clippy::too_many_arguments)]
async fn stream(
    settler: &Settler<'_>,
    entries: &[Entry<'_>],
    tracked: &mut [Option<crate::poison::journal::Tracked<'_>>],
    reader: &mut Reader,
    sent: &[usize],
    (params, body): (&[(&'static str, std::borrow::Cow<'_, str>)], &[u8]),
    fcgi_span: &tracing::Span,
) -> (
    Result<crate::fastcgi::Reply, crate::fastcgi::FpmError>,
    Lines,
) {
    let runtime = settler.runtime;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Verdict)>();
    let mut lines: Lines = (0, None, None);
    let running = runtime.metrics.fpm.running(
        &runtime.name,
        &format!(
            "batch of {} from {}",
            sent.len(),
            entries[sent[0]].envelope.message_id
        ),
    );
    let request = async {
        let mut on_stdout = |chunk: &[u8]| {
            reader
                .feed(chunk, &mut |i, verdict| {
                    let now = Instant::now();
                    lines.0 += 1;
                    lines.1.get_or_insert(now);
                    lines.2 = Some(now);
                    let _ = tx.send((i, verdict));
                })
                .map_err(|e| e.to_string())
        };
        let sent = runtime
            .upstreams
            .request_streaming(params, body, |i| running.set_upstream(i), &mut on_stdout)
            .await;
        drop(tx);
        sent.result
    }
    .instrument(fcgi_span.clone());
    let settle_streamed = async {
        while let Some((i, verdict)) = rx.recv().await {
            settler.settle(&entries[i], verdict).await;
            tracked[i] = None;
        }
    };
    let (result, ()) = tokio::join!(request, settle_streamed);
    drop(running);
    (result, lines)
}

/// The start records of a batch, one write under one permit of the journal's gate; each entry's
/// done record is written when its `Tracked` is dropped (settled).
async fn journal_starts<'a>(
    runtime: &'a SubjectRuntime,
    deliveries: &[Delivery],
    keys: &'a [std::borrow::Cow<'a, str>],
) -> Vec<Option<crate::poison::journal::Tracked<'a>>> {
    let starts: Vec<(&str, bool)> = deliveries
        .iter()
        .zip(keys)
        .map(|(d, key)| (key.as_ref(), d.redelivered))
        .collect();
    runtime
        .crashes
        .begin_batch(&starts)
        .await
        .into_iter()
        .map(Some)
        .collect()
}

/// The timing `batch::auto` learns from, when every entry sent got its outcome line.
fn observed(lines: Lines, started: Instant, sent: usize) -> Option<crate::batch::auto::Observed> {
    match lines {
        (n, Some(first), Some(last)) if n == sent => Some(crate::batch::auto::Observed::Batch {
            lines: n,
            first: first - started,
            last: last - started,
        }),
        _ => None,
    }
}
