//! The pool: growing and shrinking it without interrupting a message, and replacing a worker
//! that failed (its message goes back to the queue).

use lapin::types::DeliveryTag;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::error;

use super::dispatch::{dispatch, finish_drain_if_idle};
use super::subscription::{cancel_consumer, start_consuming};
use super::{ConsumerMsg, ConsumerState};
use crate::actors::worker::{FpmWorker, WorkerArgs, WorkerMsg};
use crate::stats::SubjectStats;
use crate::telemetry::events::Event;

/// A worker of the pool and what it holds.
pub(super) struct Slot {
    pub(super) actor: ActorRef<WorkerMsg>,
    /// Delivery tags of the message (or batch) the worker is handling.
    pub(super) busy: Vec<DeliveryTag>,
    /// Stop this worker as soon as it is idle (pool shrink).
    pub(super) retiring: bool,
}

/// A worker ended (a failure, or its stop after a shrink): its message goes back to the queue,
/// and a failed one is replaced.
pub(super) async fn on_worker_ended(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
    event: SupervisionEvent,
) -> Result<(), ActorProcessingErr> {
    let (cell, failure) = match event {
        SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
        SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
        _ => return Ok(()),
    };
    let Some(slot) = state.workers.remove(&cell.get_id()) else {
        return Ok(());
    };
    state.idle.retain(|id| *id != cell.get_id());
    let stats = state.runtime.stats.clone();
    SubjectStats::decr(&stats.pool_size);
    if !slot.busy.is_empty() {
        SubjectStats::decr(&stats.busy);
    }
    // Tags of a batch already settled are not nacked again (the settlement task knows them).
    for tag in slot.busy {
        SubjectStats::decr(&stats.in_flight);
        state.acks.nack(tag);
    }
    if let Some(err) = failure {
        error!(subject = %state.runtime.name, error = %crate::printable::printable(&err.to_string()).capped(1024), "FPM worker failed; its message goes back to the queue and the worker is replaced");
        state.runtime.events.emit(Event::WorkerFailed);
    }
    if state.draining.is_none() && !slot.retiring {
        // Keep the pool at its target size: `resize` counts the workers left and replaces the
        // one that ended.
        let target = state.target;
        resize(myself, state, target).await?;
    }
    finish_drain_if_idle(state);
    Ok(())
}

/// Grows or shrinks the pool to `size`. Starting the pool is a resize from 0.
///
/// Growing spawns workers at once; shrinking stops idle workers first and marks busy ones to
/// stop when their message is done, so no in-flight message is interrupted.
pub(super) async fn resize(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
    size: usize,
) -> Result<(), ActorProcessingErr> {
    state.target = size;
    let active = state.workers.values().filter(|s| !s.retiring).count();
    if size > active {
        grow(myself, state, size - active).await?;
    } else {
        shrink(state, active - size);
    }
    dispatch(state);
    // RabbitMQ applies a new per-consumer prefetch only to consumers created after it: follow
    // the pool by re-consuming. Deliveries already received stay valid on the channel.
    let wanted = crate::config::prefetch(state.target, super::per_worker(&state.runtime));
    if state.consumer_tag.is_some() && wanted != state.prefetch {
        cancel_consumer(state).await;
        start_consuming(myself, state).await?;
    }
    Ok(())
}

/// Adds `missing` workers: those about to retire stay, then new ones are spawned.
async fn grow(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
    mut missing: usize,
) -> Result<(), ActorProcessingErr> {
    for slot in state.workers.values_mut().filter(|s| s.retiring) {
        if missing == 0 {
            break;
        }
        slot.retiring = false;
        missing -= 1;
    }
    for _ in 0..missing {
        let args = WorkerArgs {
            runtime: state.runtime.clone(),
            consumer: myself.get_derived(),
        };
        let (actor, _) = Actor::spawn_linked(None, FpmWorker, args, myself.get_cell()).await?;
        state.idle.push_back(actor.get_id());
        state.workers.insert(
            actor.get_id(),
            Slot {
                actor,
                busy: Vec::new(),
                retiring: false,
            },
        );
        SubjectStats::incr(&state.runtime.stats.pool_size);
    }
    Ok(())
}

/// Retires `excess` workers: idle ones stop at once, busy ones when their message is done.
fn shrink(state: &mut ConsumerState, mut excess: usize) {
    while excess > 0 {
        let Some(id) = state.idle.pop_back() else {
            break;
        };
        if let Some(slot) = state.workers.get_mut(&id) {
            slot.retiring = true;
            slot.actor.stop(Some("pool shrink".into()));
            excess -= 1;
        }
    }
    for slot in state
        .workers
        .values_mut()
        .filter(|s| !s.retiring && !s.busy.is_empty())
    {
        if excess == 0 {
            break;
        }
        slot.retiring = true;
        excess -= 1;
    }
}
