//! The pool: growing and shrinking it without interrupting a message, and replacing a worker
//! that failed (its message goes back to the queue).
//!
//! [`Pool`] is the bookkeeping, generic over the worker actor so that its tests drive it with a
//! fake one; `resize` and `on_worker_ended` wire it to the consumer (gauges, nacks, prefetch).

use std::collections::{HashMap, VecDeque};

use lapin::types::DeliveryTag;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, MessagingErr, SupervisionEvent,
};
use tracing::error;

use super::dispatch::{dispatch, finish_drain_if_idle};
use super::subscription::follow_prefetch;
use super::{ConsumerMsg, ConsumerState};
use crate::stats::SubjectStats;
use crate::telemetry::events::Event;

/// A consumer's workers and what each holds.
pub(super) struct Pool<A: Actor> {
    workers: HashMap<ActorId, Slot<A::Msg>>,
    /// Workers waiting for a message, the longest waiting first.
    idle: VecDeque<ActorId>,
    /// Wanted size.
    target: usize,
    /// What a new worker is linked to: its end comes there as a supervision event, to be
    /// handed to [`Pool::ended`].
    supervisor: ActorCell,
    /// A new worker and its arguments (ractor's factory has the same `WorkerBuilder`).
    build: Box<dyn Fn() -> (A, A::Arguments) + Send>,
}

/// A worker of the pool and what it holds.
struct Slot<M> {
    actor: ActorRef<M>,
    /// Delivery tags of the message (or batch) the worker is handling.
    busy: Vec<DeliveryTag>,
    /// Stop this worker as soon as it is idle (pool shrink).
    retiring: bool,
}

/// Whether a worker that ends leaves a place to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Upkeep {
    /// The pool keeps its target size: a worker that was not retiring is replaced.
    KeepSize,
    /// The consumer drains: no worker is replaced.
    Drain,
}

/// A worker of the pool that ended (a failure, or its stop after a shrink).
#[derive(Debug)]
pub(super) struct Ended {
    /// Tags of the message it held, settled by nobody: they go back to the queue.
    pub(super) held: Vec<DeliveryTag>,
    /// Its error, if it failed rather than stopped.
    pub(super) failure: Option<String>,
    /// Its place is to be filled: it was not retiring and the pool keeps its size.
    pub(super) vacant: bool,
}

impl<A: Actor> Pool<A> {
    /// An empty pool (target 0) whose workers `build` makes and `supervisor` supervises.
    pub(super) fn new(
        supervisor: ActorCell,
        build: Box<dyn Fn() -> (A, A::Arguments) + Send>,
    ) -> Self {
        Self {
            workers: HashMap::new(),
            idle: VecDeque::new(),
            target: 0,
            supervisor,
            build,
        }
    }

    /// The size asked for.
    pub(super) fn target(&self) -> usize {
        self.target
    }

    /// Workers alive, retiring ones included.
    pub(super) fn len(&self) -> usize {
        self.workers.len()
    }

    /// Grows or shrinks the pool to `size`. Starting the pool is a resize from 0.
    ///
    /// Growing spawns workers at once; shrinking stops idle workers first and marks busy ones to
    /// stop when their message is done, so no in-flight message is interrupted.
    pub(super) async fn resize(&mut self, size: usize) -> Result<(), ActorProcessingErr> {
        self.target = size;
        let active = self.workers.values().filter(|s| !s.retiring).count();
        if size > active {
            self.grow(size - active).await?;
        } else {
            self.shrink(active - size);
        }
        Ok(())
    }

    /// Adds `missing` workers: those about to retire stay, then new ones are spawned.
    async fn grow(&mut self, mut missing: usize) -> Result<(), ActorProcessingErr> {
        for slot in self.workers.values_mut().filter(|s| s.retiring) {
            if missing == 0 {
                break;
            }
            slot.retiring = false;
            missing -= 1;
        }
        for _ in 0..missing {
            let (worker, args) = (self.build)();
            let (actor, _) =
                Actor::spawn_linked(None, worker, args, self.supervisor.clone()).await?;
            self.idle.push_back(actor.get_id());
            let slot = Slot {
                actor,
                busy: Vec::new(),
                retiring: false,
            };
            self.workers.insert(slot.actor.get_id(), slot);
        }
        Ok(())
    }

    /// Retires `excess` workers: idle ones stop at once, busy ones when their message is done.
    fn shrink(&mut self, mut excess: usize) {
        while excess > 0 {
            let Some(id) = self.idle.pop_back() else {
                break;
            };
            if let Some(slot) = self.workers.get_mut(&id) {
                slot.retiring = true;
                slot.actor.stop(Some("pool shrink".into()));
                excess -= 1;
            }
        }
        for slot in self
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

    /// A supervision event of a worker: `None` unless it is the end of one of the pool's.
    /// The caller nacks what it held and, if its place is vacant, resizes to the target.
    pub(super) fn ended(&mut self, event: SupervisionEvent, upkeep: Upkeep) -> Option<Ended> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return None,
        };
        let slot = self.workers.remove(&cell.get_id())?;
        self.idle.retain(|id| *id != cell.get_id());
        Some(Ended {
            held: slot.busy,
            failure,
            vacant: upkeep == Upkeep::KeepSize && !slot.retiring,
        })
    }

    /// Whether a worker waits for a message (maybe one about to stop, see [`Pool::next_idle`]).
    pub(super) fn has_idle(&self) -> bool {
        !self.idle.is_empty()
    }

    /// How many workers wait for a message.
    pub(super) fn idle_count(&self) -> usize {
        self.idle.len()
    }

    /// The idle worker that waited longest, taken off the idle list; one marked to retire is
    /// stopped on the way.
    pub(super) fn next_idle(&mut self) -> Option<ActorId> {
        while let Some(id) = self.idle.pop_front() {
            let Some(slot) = self.workers.get(&id) else {
                continue;
            };
            if slot.retiring {
                slot.actor.stop(Some("pool shrink".into()));
                continue;
            }
            return Some(id);
        }
        None
    }

    /// Puts back worker `id`, taken by [`Pool::next_idle`] but given nothing: it is next.
    pub(super) fn put_back(&mut self, id: ActorId) {
        self.idle.push_front(id);
    }

    /// Sends worker `id` (from [`Pool::next_idle`]) a message holding the deliveries `tags`.
    /// A worker that is stopping refuses it; its end is on its way.
    pub(super) fn send(
        &mut self,
        id: ActorId,
        msg: A::Msg,
        tags: Vec<DeliveryTag>,
    ) -> Result<(), MessagingErr<A::Msg>> {
        let Some(slot) = self.workers.get_mut(&id) else {
            return Err(MessagingErr::SendErr(msg));
        };
        slot.actor.cast(msg)?;
        slot.busy = tags;
        Ok(())
    }

    /// Worker `id` finished its message: it waits for the next one, or stops if it retires.
    /// Returns the tags it held (`None`: not a worker of the pool).
    pub(super) fn finished(&mut self, id: ActorId) -> Option<Vec<DeliveryTag>> {
        let slot = self.workers.get_mut(&id)?;
        let held = std::mem::take(&mut slot.busy);
        if slot.retiring {
            slot.actor.stop(Some("pool shrink".into()));
        } else {
            self.idle.push_back(id);
        }
        Some(held)
    }

    /// Whether a worker holds a message.
    pub(super) fn any_busy(&self) -> bool {
        self.workers.values().any(|s| !s.busy.is_empty())
    }

    /// Kills every worker, a message in flight too (the consumer is stopping).
    pub(super) fn kill_all(&self) {
        for slot in self.workers.values() {
            slot.actor.kill();
        }
    }
}

/// A worker ended (a failure, or its stop after a shrink): its message goes back to the queue,
/// and a failed one is replaced.
pub(super) async fn on_worker_ended(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
    event: SupervisionEvent,
) -> Result<(), ActorProcessingErr> {
    let upkeep = if state.draining.is_none() {
        Upkeep::KeepSize
    } else {
        Upkeep::Drain
    };
    let Some(ended) = state.pool.ended(event, upkeep) else {
        return Ok(());
    };
    let stats = state.runtime.stats.clone();
    show_size(state);
    if !ended.held.is_empty() {
        SubjectStats::decr(&stats.busy);
    }
    // Tags of a batch already settled are not nacked again (the settlement task knows them).
    for tag in ended.held {
        SubjectStats::decr(&stats.in_flight);
        state.acks.nack(tag);
    }
    if let Some(err) = ended.failure {
        error!(subject = %state.runtime.name, error = %crate::printable::printable(&err).capped(1024), "FPM worker failed; its message goes back to the queue and the worker is replaced");
        state.runtime.events.emit(Event::WorkerFailed);
    }
    if ended.vacant {
        // Keep the pool at its target size: `resize` counts the workers left and replaces the
        // one that ended.
        let target = state.pool.target();
        resize(myself, state, target).await?;
    }
    finish_drain_if_idle(state);
    Ok(())
}

/// Grows or shrinks the pool to `size` ([`Pool::resize`]), hands the backlog to new workers and
/// follows the pool with the prefetch.
pub(super) async fn resize(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
    size: usize,
) -> Result<(), ActorProcessingErr> {
    let grown = state.pool.resize(size).await;
    show_size(state);
    grown?;
    dispatch(state);
    follow_prefetch(myself, state).await
}

/// The pool size gauge: the workers alive, retiring ones included.
fn show_size(state: &ConsumerState) {
    let size = u64::try_from(state.pool.len()).unwrap_or(u64::MAX);
    state
        .runtime
        .stats
        .pool_size
        .store(size, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests;
