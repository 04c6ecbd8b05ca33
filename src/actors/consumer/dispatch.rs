//! Dispatch: deliveries into the backlog and from it to idle workers, workers back to idle,
//! and the end of a drain.

use lapin::message::Delivery;
use ractor::{ActorProcessingErr, ActorRef};

use super::circuit::open_circuit;
use super::{ConsumerMsg, ConsumerState, FLUSH_TIMEOUT};
use crate::actors::worker::{Job, WorkerIdle, WorkerMsg};
use crate::stats::SubjectStats;
use crate::telemetry::events::Event;

/// Deliveries from the broker: to the backlog and on to idle workers, or straight back to their
/// queue while not consuming.
pub(super) fn on_deliveries(state: &mut ConsumerState, deliveries: Vec<Delivery>) {
    for delivery in deliveries {
        on_delivery(state, delivery);
    }
    dispatch(state);
}

/// A delivery from the broker: to the backlog (the caller dispatches), or straight back to its
/// queue while not consuming.
fn on_delivery(state: &mut ConsumerState, delivery: Delivery) {
    state.runtime.events.emit(Event::Received);
    SubjectStats::incr(&state.runtime.stats.in_flight);
    // After a cancel, deliveries the client had buffered still arrive: while not consuming they
    // go straight back (a dropped one would pin a prefetch slot).
    if state.draining.is_some() || state.consumer_tag.is_none() {
        super::requeue(state, &delivery);
        return;
    }
    if delivery.body_discarded {
        defer(state, delivery);
        return;
    }
    if state.backlog.is_empty() {
        state.backlog_since = std::time::Instant::now();
    }
    state.backlog.push_back(delivery);
}

/// A delivery that came without its body (`broker::gate`): over `limits.max_body_bytes` while
/// another oversized body is held, or over the subject's share of `limits.memory_budget`. Back
/// to its queue, unread and without using an attempt, once its body would be let in. Until then
/// it keeps its prefetch slot, not its bytes (a nack at once would have the broker send the same
/// body again and again meanwhile).
fn defer(state: &ConsumerState, delivery: Delivery) {
    state.runtime.events.emit(Event::BodyDeferred);
    let gate = state.runtime.body_gate.clone();
    // The subject's count, as the gate keeps it (`OversizeGate::bytes_of`).
    let bytes = gate.bytes_of(&state.runtime.name);
    let size = delivery.body_size;
    if gate.oversized(size) {
        tracing::debug!(
            subject = %state.runtime.name,
            size,
            "A body over limits.max_body_bytes waits for the one held to be dead-lettered"
        );
    } else {
        tracing::debug!(
            subject = %state.runtime.name,
            size,
            held = bytes.held(),
            "A body waits for room in the subject's share of limits.memory_budget"
        );
    }
    let myself = state.myself.clone();
    tokio::spawn(async move {
        gate.wait_for(&bytes, size).await;
        // A consumer that stopped meanwhile closed its channel: the broker has it back.
        let _ = myself.cast(ConsumerMsg::Deferred(Box::new(delivery)));
    });
}

/// A worker finished its message: it takes the next one (or retires), and what it reports opens
/// the circuit or fails the consumer.
pub(super) async fn on_worker_idle(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
    report: WorkerIdle,
) -> Result<(), ActorProcessingErr> {
    let WorkerIdle {
        worker,
        fpm_unreachable,
        signature_rejected,
        publisher_broken,
        observed,
    } = report;
    // A request sized before anything was timed teaches less once a batch was (`batch::auto`).
    let blind = state.blind.remove(&worker);
    if let Some(observed) = observed {
        observe(myself, state, observed, blind).await?;
    }
    if publisher_broken && state.draining.is_none() {
        return Err("the retry/dead-letter publish channel closed".into());
    }
    if fpm_unreachable && state.circuit.is_none() && state.draining.is_none() {
        open_circuit(myself, state).await?;
    }
    if signature_rejected && state.draining.is_none() {
        super::circuit::signature_rejected(myself, state).await?;
    } else if !fpm_unreachable {
        super::circuit::signature_accepted(state);
    }
    let stats = &state.runtime.stats;
    if let Some(held) = state.pool.finished(worker)
        && !held.is_empty()
    {
        SubjectStats::decr(&stats.busy);
        for _ in &held {
            SubjectStats::decr(&stats.in_flight);
        }
    }
    dispatch(state);
    finish_drain_if_idle(state);
    Ok(())
}

/// Hands backlog deliveries to idle workers: one per request, or up to `batch_max` in one (an
/// idle worker waits up to `batch_wait` for a batch to fill).
pub(super) fn dispatch(state: &mut ConsumerState) {
    while !state.backlog.is_empty() {
        if !state.pool.has_idle() {
            return;
        }
        let waited = state.backlog_since.elapsed();
        if state.batching.should_wait(state.backlog.len(), waited) {
            if !state.dispatch_armed {
                state.dispatch_armed = true;
                let left = state.batching.wait.saturating_sub(waited);
                state.myself.send_after(left, || ConsumerMsg::Dispatch);
            }
            return;
        }
        let Some(id) = state.pool.next_idle() else {
            return;
        };
        let (wanted, blind) = request_size(state);
        let Some(n) = rate_granted(state, id, wanted) else {
            return;
        };
        let (msg, tags) = job(state, n);
        match state.pool.send(id, msg, tags) {
            Ok(()) => {
                SubjectStats::incr(&state.runtime.stats.busy);
                if blind {
                    state.blind.insert(id);
                }
            }
            // The worker is stopping; its supervision event will replace it.
            Err(ractor::MessagingErr::SendErr(WorkerMsg::Handle(job))) => {
                state.backlog.push_front(job.delivery);
            }
            Err(ractor::MessagingErr::SendErr(WorkerMsg::Batch(job))) => {
                for delivery in job.deliveries.into_iter().rev() {
                    state.backlog.push_front(delivery);
                }
            }
            Err(_) => {}
        }
    }
}

/// What a worker measured goes to `batch::auto`. The first time the receiver says it takes
/// batches, the consumer re-consumes with the prefetch a batch needs (kept from then on).
async fn observe(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
    observed: crate::batch::auto::Observed,
    blind: bool,
) -> Result<(), ActorProcessingErr> {
    let Some(auto) = state.auto.as_mut() else {
        return Ok(());
    };
    let (accepted, seen) = (auto.batches_accepted(), auto.batches_seen());
    if blind {
        auto.observe_blind(observed);
    } else {
        auto.observe(observed);
    }
    let now = auto.batches_accepted();
    if now == accepted {
        return Ok(());
    }
    let subject = &state.runtime.name;
    if !seen {
        tracing::info!(%subject, "the receiver says it takes batches (X-Agent-Accepts-Batches): batches sized as \"auto\" from now on");
        super::subscription::follow_prefetch(myself, state).await?;
    } else {
        // A receiver changing its answer (two versions behind one address) would flood the
        // log at info; `/status` shows the bound `receiver` while it is off.
        tracing::debug!(%subject, batches = now, "the receiver's X-Agent-Accepts-Batches changed");
    }
    Ok(())
}

/// How many backlog deliveries the next request takes: one, or a batch (`batch_max`, or what
/// `batch_max = "auto"` decides for the backlog and the free workers), within the byte bound;
/// and whether `"auto"` sized it before anything was timed (a blind request).
fn request_size(state: &ConsumerState) -> (usize, bool) {
    if state.batching.max <= 1 {
        return (1, false);
    }
    let mut blind = false;
    let batching = match &state.auto {
        None => state.batching,
        Some(auto) => {
            // The free workers: the one taking this request and those still idle.
            let sizing = auto.size(state.backlog.len(), state.pool.idle_count() + 1);
            blind = sizing.bound == crate::batch::auto::Bound::Unmeasured;
            let shown = sizing.shown();
            let before = state.runtime.stats.set_batch_sizing(shown);
            if before.is_none_or(|b| (b.size, b.bound) != (shown.size, shown.bound)) {
                tracing::debug!(
                    subject = %state.runtime.name,
                    size = sizing.size,
                    bound = ?sizing.bound,
                    backlog = sizing.backlog,
                    free_workers = sizing.free_workers,
                    boot_ms = ?sizing.boot_ms,
                    entry_ms = ?sizing.entry_ms,
                    "batch size (batch_max = \"auto\")"
                );
            }
            crate::batch::Batching {
                max: sizing.size,
                ..state.batching
            }
        }
    };
    let limits = &state.runtime.config.limits;
    // When the next batch fits even with the largest headers each entry may carry, the byte
    // bound cannot cut it: its entries' headers need not be encoded to count their bytes.
    let at_most = batching.fits_at_most(
        state.backlog.iter().map(|d| d.data.len()),
        limits.max_headers_bytes,
    );
    let n = batching.take(state.backlog.iter().map(|d| {
        let bytes = if at_most {
            crate::batch::entry_bytes(d.data.len(), limits.max_headers_bytes)
        } else {
            entry_bytes(d, limits)
        };
        (bytes, d.redelivered)
    }));
    (n, blind)
}

/// The rate limit: one token per message (per entry of a batch). Without one, worker `id` goes
/// back to the front of the idle list, the backlog waits, prefetched, for the bucket's next
/// token, and `None` stops this dispatch.
fn rate_granted(state: &mut ConsumerState, id: ractor::ActorId, wanted: usize) -> Option<usize> {
    let Some(bucket) = state.bucket.as_mut() else {
        return Some(wanted);
    };
    let now = std::time::Instant::now();
    let granted = bucket.take(wanted, now);
    if granted > 0 {
        return Some(granted);
    }
    let wait = bucket.next_in(now).max(std::time::Duration::from_millis(1));
    state.pool.put_back(id);
    if !state.rate_armed {
        state.rate_armed = true;
        state
            .runtime
            .events
            .emit(Event::RateLimited { waited: wait });
        state.myself.send_after(wait, || ConsumerMsg::RateDispatch);
    }
    None
}

/// The worker's message for the next `n` backlog deliveries (a single request or a batch), and
/// their tags.
fn job(state: &mut ConsumerState, n: usize) -> (WorkerMsg, Vec<lapin::types::DeliveryTag>) {
    if n == 1 {
        let delivery = state.backlog.pop_front().expect("checked non-empty");
        let tags = vec![delivery.delivery_tag];
        let job = Job {
            delivery,
            publisher: state.publisher.clone(),
            acks: state.acks.clone(),
        };
        return (WorkerMsg::Handle(Box::new(job)), tags);
    }
    let deliveries: Vec<Delivery> = state.backlog.drain(..n).collect();
    let tags = deliveries.iter().map(|d| d.delivery_tag).collect();
    let job = crate::actors::worker::batch::BatchJob {
        deliveries,
        publisher: state.publisher.clone(),
        acks: state.acks.clone(),
    };
    (WorkerMsg::Batch(Box::new(job)), tags)
}

/// The bytes a delivery is expected to take in a batch body: `limits.max_batch_bytes` counts
/// its headers too (a header over the limits is left to the worker, which dead-letters it).
fn entry_bytes(delivery: &Delivery, limits: &crate::config::LimitsConfig) -> usize {
    let headers = crate::contract::headers_json(
        delivery.properties.headers().as_ref(),
        limits.max_header_depth,
        limits.max_headers_bytes,
    )
    .map_or(0, |json| json.len());
    crate::batch::entry_bytes(delivery.data.len(), headers)
}

pub(super) fn finish_drain_if_idle(state: &mut ConsumerState) {
    if state.pool.any_busy() {
        return;
    }
    if let Some(waiters) = state.draining.as_mut() {
        if waiters.is_empty() {
            return;
        }
        // Drained once the acks of the finished messages are written.
        let waiters = std::mem::take(waiters);
        let acks = state.acks.clone();
        tokio::spawn(async move {
            // Bounded: a broker that blocks the connection (resource alarm) writes nothing.
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, acks.flush()).await;
            for reply in waiters {
                let _ = reply.send(());
            }
        });
    }
}

/// Puts `rate` in force: a new bucket (full), the limit changed in place, or none.
pub(super) fn set_rate(state: &mut ConsumerState, rate: Option<crate::rate::RateLimit>) {
    let now = std::time::Instant::now();
    match (rate, state.bucket.as_mut()) {
        (None, _) => state.bucket = None,
        (Some(limit), Some(bucket)) => bucket.set(limit, now),
        (Some(limit), None) => state.bucket = Some(crate::rate::Bucket::new(limit, now)),
    }
    if let Some(limit) = rate {
        tracing::info!(subject = %state.runtime.name, rate = %limit.rate, burst = limit.burst, "Rate limit in force");
    }
}
