//! One delivery in a worker's hands, alone or in a batch: what the worker knows of it, the
//! steps every request shares (its params, its verdict when it cannot be sent, its settlement),
//! and its life from the crash journal's start record to its settlement.
//!
//! Invariant: an entry is settled exactly once, by [`Settler`]: that moves its life from
//! `Started` to `Settled` and writes its done record to the crash journal. An entry that was
//! never settled (its future was dropped at shutdown) keeps its start record's permit until it
//! is dropped, and the journal records it done then; its delivery was not acked and goes back
//! to its queue.

use std::borrow::Cow;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use lapin::message::Delivery;
use tracing::{Instrument, warn};

use super::Original;
use crate::actors::SubjectRuntime;
use crate::actors::acks::Acks;
use crate::broker::Publisher;
use crate::contract::{Envelope, Param};
use crate::outcome::{self, Decision, Verdict};
use crate::poison::journal::Tracked;
use crate::telemetry::events::Event;
use crate::trace_context::Incoming;

/// One delivery and what the worker knows of it.
pub(super) struct Entry<'a> {
    pub(super) delivery: &'a Delivery,
    pub(super) envelope: Envelope<'a>,
    /// The message's `process` span.
    pub(super) span: tracing::Span,
    /// The publisher's trace context.
    pub(super) incoming: Incoming<'a>,
    life: Mutex<Life<'a>>,
}

/// Where an entry is in its life.
enum Life<'a> {
    /// Its start record is written (`poison::journal`); it may be running in PHP.
    Started(Tracked<'a>),
    /// Acked; or its copy stored and then acked; or nacked back to its queue.
    Settled,
}

impl<'a> Entry<'a> {
    /// The entry of `delivery` (message id `id`, made up when `generated`), whose start record
    /// is `tracked`: its envelope, its `process` span, and what is wrong with it logged inside
    /// that span.
    pub(super) fn new(
        runtime: &'a SubjectRuntime,
        delivery: &'a Delivery,
        (id, generated): (Cow<'a, str>, bool),
        tracked: Tracked<'a>,
    ) -> Self {
        let (envelope, untrusted) = super::envelope_of(runtime, delivery, id, generated);
        let incoming = crate::trace_context::read(envelope.headers);
        let span = super::message_span(
            runtime,
            delivery,
            &envelope.message_id,
            envelope.attempt,
            &incoming,
        );
        span.in_scope(|| super::admitted(runtime, generated, untrusted.as_ref(), &incoming));
        Self {
            delivery,
            envelope,
            span,
            incoming,
            life: Mutex::new(Life::Started(tracked)),
        }
    }

    /// `Some(crashes)` when the entry must be dead-lettered as `poison` instead of sent.
    pub(super) fn poison(&self) -> Option<u32> {
        match &*self.life() {
            Life::Started(tracked) => tracked.poison(),
            Life::Settled => None,
        }
    }

    /// True for a suspect of a crash loop: no other message is in flight while it runs.
    pub(super) fn alone(&self) -> bool {
        match &*self.life() {
            Life::Started(tracked) => tracked.alone(),
            Life::Settled => false,
        }
    }

    /// The request params of this attempt, with `exported` (a span's context) or else the
    /// publisher's trace context for PHP; a message that cannot become a request is a
    /// permanent verdict (logged in its span).
    pub(super) fn params<'p>(
        &'p self,
        runtime: &'p SubjectRuntime,
        exported: Option<&'p (String, Option<String>)>,
        now: u64,
    ) -> Result<Vec<Param<'p>>, Verdict> {
        let trace = match exported {
            Some((parent, state)) => (Some(parent.as_str()), state.as_deref()),
            None => (self.incoming.traceparent, self.incoming.tracestate),
        };
        runtime
            .template
            .params(&self.envelope, &self.delivery.data, trace, now)
            .map_err(|e| {
                self.span.in_scope(|| {
                    warn!(error = %e, "Message cannot be sent to FPM; dead-lettering it");
                });
                Verdict::Permanent {
                    reason: e.reason(),
                    detail: e.to_string(),
                    status: None,
                }
            })
    }

    fn original(&self) -> Original<'_> {
        Original {
            delivery: self.delivery,
            message_id: &self.envelope.message_id,
            generated: self.envelope.message_id_generated,
            attempt: self.envelope.attempt,
            exchange: self.envelope.exchange,
            routing_key: self.envelope.routing_key,
            span: &self.span,
        }
    }

    fn life(&self) -> std::sync::MutexGuard<'_, Life<'a>> {
        self.life
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Started → settled: the journal's done record is written.
    fn settled(&self) {
        let mut life = self.life();
        match std::mem::replace(&mut *life, Life::Settled) {
            Life::Started(tracked) => tracked.end(),
            Life::Settled => debug_assert!(false, "an entry is settled once"),
        }
    }
}

/// What settles entries: the subject, the publisher of the consumer incarnation that received
/// them, and their channel's acks.
pub(super) struct Settler<'a> {
    runtime: &'a SubjectRuntime,
    publisher: &'a Publisher,
    acks: &'a Acks,
    /// A verdict was the configuration's fault (a refused signature): the subject pauses.
    pauses: AtomicBool,
}

impl<'a> Settler<'a> {
    pub(super) fn new(
        runtime: &'a SubjectRuntime,
        publisher: &'a Publisher,
        acks: &'a Acks,
    ) -> Self {
        Self {
            runtime,
            publisher,
            acks,
            pauses: AtomicBool::new(false),
        }
    }

    /// The subject the entries belong to.
    pub(super) fn runtime(&self) -> &'a SubjectRuntime {
        self.runtime
    }

    /// The subject must pause: a verdict settled here was the configuration's fault.
    pub(super) fn pauses(&self) -> bool {
        self.pauses.load(Ordering::Relaxed)
    }

    /// Settles `entry` on `verdict` (ack, or its copy then ack, or nack; see `settle`).
    pub(super) async fn settle(&self, entry: &Entry<'_>, verdict: Verdict) {
        if outcome::pauses_subject(&verdict) {
            self.pauses.store(true, Ordering::Relaxed);
        }
        if matches!(
            verdict,
            Verdict::Transient {
                reason: outcome::SIGNATURE_REJECTED,
                ..
            }
        ) {
            self.runtime.events.emit(Event::SignatureRejected);
        }
        let decision = self.runtime.policy.decide(&verdict, entry.envelope.attempt);
        if matches!(decision, Decision::Ack) {
            // The common case, in the entry's span as the future below would be, without
            // building, moving and polling that future (callgrind: about 1,000 instructions
            // per entry less).
            entry
                .span
                .in_scope(|| super::ack(self.acks, &entry.original()));
            entry.settled();
            return;
        }
        super::settle(
            self.runtime,
            self.publisher,
            self.acks,
            entry.original(),
            &verdict,
            decision,
        )
        .instrument(entry.span.clone())
        .await;
        entry.settled();
    }

    /// Returns `entry` to its queue without using an attempt: the broker redelivers it with
    /// `redelivered` set, and a redelivery goes alone (`batch::Batching::take`).
    pub(super) fn alone(&self, entry: &Entry<'_>) {
        entry.span.in_scope(|| {
            tracing::debug!("Returned to the queue, to be retried alone");
        });
        entry.span.record("outcome", "requeued");
        self.acks.nack(entry.delivery.delivery_tag);
        entry.settled();
    }
}
