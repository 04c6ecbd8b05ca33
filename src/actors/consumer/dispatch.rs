//! Dispatch: deliveries into the backlog and from it to idle workers, workers back to idle,
//! and the end of a drain.

use lapin::message::Delivery;
use ractor::{ActorProcessingErr, ActorRef};

use super::circuit::open_circuit;
use super::{ConsumerMsg, ConsumerState, FLUSH_TIMEOUT};
use crate::actors::worker::{Job, WorkerIdle, WorkerMsg};
use crate::stats::SubjectStats;
use crate::telemetry::events::Event;

/// A delivery from the broker: to the backlog and on to an idle worker, or straight back to its
/// queue while not consuming.
pub(super) fn on_delivery(state: &mut ConsumerState, delivery: Delivery) {
    state.runtime.events.emit(Event::Received);
    SubjectStats::incr(&state.runtime.stats.in_flight);
    // After a cancel, deliveries the client had buffered still arrive: while not consuming they
    // go straight back (a dropped one would pin a prefetch slot).
    if state.draining.is_some() || state.consumer_tag.is_none() {
        super::requeue(state, &delivery);
        return;
    }
    state.backlog.push_back(delivery);
    dispatch(state);
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
        publisher_broken,
    } = report;
    if publisher_broken && state.draining.is_none() {
        return Err("the retry/dead-letter publish channel closed".into());
    }
    if fpm_unreachable && state.circuit.is_none() && state.draining.is_none() {
        open_circuit(myself, state).await?;
    }
    let stats = &state.runtime.stats;
    if let Some(slot) = state.workers.get_mut(&worker) {
        if slot.busy.take().is_some() {
            SubjectStats::decr(&stats.busy);
            SubjectStats::decr(&stats.in_flight);
        }
        if slot.retiring {
            slot.actor.stop(Some("pool shrink".into()));
        } else {
            state.idle.push_back(worker);
        }
    }
    dispatch(state);
    finish_drain_if_idle(state);
    Ok(())
}

/// Hands backlog deliveries to idle workers.
pub(super) fn dispatch(state: &mut ConsumerState) {
    while !state.backlog.is_empty() {
        let Some(id) = state.idle.pop_front() else {
            return;
        };
        let Some(slot) = state.workers.get_mut(&id) else {
            continue;
        };
        if slot.retiring {
            slot.actor.stop(Some("pool shrink".into()));
            continue;
        }
        let delivery = state.backlog.pop_front().expect("checked non-empty");
        let tag = delivery.delivery_tag;
        let job = Job {
            delivery,
            publisher: state.publisher.clone(),
            acks: state.acks.clone(),
        };
        match slot.actor.cast(WorkerMsg::Handle(Box::new(job))) {
            Ok(()) => {
                slot.busy = Some(tag);
                SubjectStats::incr(&state.runtime.stats.busy);
            }
            Err(e) => {
                // The worker is stopping; its supervision event will replace it.
                if let ractor::MessagingErr::SendErr(WorkerMsg::Handle(job)) = e {
                    state.backlog.push_front(job.delivery);
                }
            }
        }
    }
}

pub(super) fn finish_drain_if_idle(state: &mut ConsumerState) {
    let busy = state.workers.values().any(|s| s.busy.is_some());
    if busy {
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
