//! Queue consumer: one per subject. Owns the subject's AMQP connection and channels, receives
//! deliveries and hands each to an idle FPM worker; supervises its pool of workers.
//!
//! Invariant: the number of deliveries the agent holds for a subject is bounded by `basic.qos`
//! (pool size × `amqp.prefetch_per_worker`); a delivery is either with exactly one worker or
//! waiting in `backlog`, and a worker that dies has its delivery nacked back to the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{DeliveryTag, FieldTable};
use lapin::{Channel, Connection};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{error, info, warn};

use super::SubjectRuntime;
use super::stats::SubjectStats;
use super::worker::{FpmWorker, Job, WorkerArgs, WorkerMsg};
use crate::broker::{self, Publisher};

/// The consumer actor.
pub struct QueueConsumer;

/// A worker of the pool and what it holds.
struct Slot {
    actor: ActorRef<WorkerMsg>,
    /// Delivery tag of the message the worker is handling.
    busy: Option<DeliveryTag>,
    /// Stop this worker as soon as it is idle (pool shrink).
    retiring: bool,
}

/// The consumer's state.
pub struct ConsumerState {
    runtime: Arc<SubjectRuntime>,
    connection: Connection,
    channel: Channel,
    publisher: Publisher,
    consumer_tag: String,
    workers: HashMap<ActorId, Slot>,
    idle: VecDeque<ActorId>,
    /// Deliveries received while every worker was busy.
    backlog: VecDeque<Delivery>,
    /// Wanted pool size.
    target: usize,
    /// Callers waiting for the drain to finish; `Some` once draining started.
    draining: Option<Vec<RpcReplyPort<()>>>,
    forwarder: tokio::task::JoinHandle<()>,
}

/// Messages the consumer accepts.
pub enum ConsumerMsg {
    /// A delivery from the broker.
    Delivery(Box<Delivery>),
    /// The delivery stream ended (connection or channel lost, or consumer cancelled).
    StreamEnded(Option<String>),
    /// A worker finished its message.
    WorkerIdle {
        /// Which worker.
        worker: ActorId,
        /// FPM could not be reached for that message.
        fpm_unreachable: bool,
    },
    /// Stop taking deliveries; reply once no worker is busy.
    Drain(RpcReplyPort<()>),
    /// Change the pool size.
    Resize(usize),
}

impl Actor for QueueConsumer {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = Arc<SubjectRuntime>;

    async fn pre_start(
        &self,
        myself: ActorRef<ConsumerMsg>,
        runtime: Arc<SubjectRuntime>,
    ) -> Result<ConsumerState, ActorProcessingErr> {
        let config = runtime.config.clone();
        let subject = runtime.subject();
        SubjectStats::incr(&runtime.stats.consumer_starts);
        let connection = broker::connect(config.amqp_url(), &runtime.name).await?;
        let channel = connection.create_channel().await?;
        if config.amqp.declare {
            broker::declare_subject(&channel, &config, subject).await?;
        }
        let publisher = Publisher::open(
            &connection,
            &subject.queue,
            &config.retry.delays,
            config.amqp.confirm_timeout,
        )
        .await?;
        let target = usize::from(subject.pool_size);
        channel
            .basic_qos(
                prefetch(target, config.amqp.prefetch_per_worker),
                BasicQosOptions::default(),
            )
            .await?;
        let consumer_tag = format!(
            "amqp-agent.{}.{}.{}",
            runtime.name,
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let consumer = channel
            .basic_consume(
                subject.queue.as_str().into(),
                consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let forwarder = tokio::spawn(forward(consumer, myself.clone()));
        let mut state = ConsumerState {
            runtime: runtime.clone(),
            connection,
            channel,
            publisher,
            consumer_tag,
            workers: HashMap::new(),
            idle: VecDeque::new(),
            backlog: VecDeque::new(),
            target: 0,
            draining: None,
            forwarder,
        };
        resize(&myself, &mut state, target).await?;
        runtime.stats.consuming.store(true, Ordering::Relaxed);
        info!(subject = %runtime.name, queue = %subject.queue, pool_size = target, "Consuming");
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConsumerMsg>,
        state: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        let stats = &state.runtime.stats;
        stats.consuming.store(false, Ordering::Relaxed);
        state.forwarder.abort();
        for slot in state.workers.values() {
            slot.actor.kill();
        }
        // Closing the connection returns every unacked delivery to its queue.
        let _ = state
            .connection
            .close(200, "amqp-agent consumer stopping".into())
            .await;
        stats.in_flight.store(0, Ordering::Relaxed);
        stats.busy.store(0, Ordering::Relaxed);
        stats.pool_size.store(0, Ordering::Relaxed);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ConsumerMsg>,
        msg: ConsumerMsg,
        state: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConsumerMsg::Delivery(delivery) => {
                SubjectStats::incr(&state.runtime.stats.received);
                SubjectStats::incr(&state.runtime.stats.in_flight);
                if state.draining.is_some() {
                    requeue(state, &delivery).await;
                    return Ok(());
                }
                state.backlog.push_back(*delivery);
                dispatch(state);
            }
            ConsumerMsg::WorkerIdle { worker, .. } => {
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
            }
            ConsumerMsg::StreamEnded(reason) => {
                if state.draining.is_some() {
                    return Ok(());
                }
                let reason =
                    reason.unwrap_or_else(|| "consumer cancelled by the broker".to_owned());
                return Err(format!(
                    "delivery stream of `{}` ended: {reason}",
                    state.runtime.subject().queue
                )
                .into());
            }
            ConsumerMsg::Drain(reply) => {
                if state.draining.is_none() {
                    info!(subject = %state.runtime.name, "Draining: no new deliveries, finishing in-flight work");
                    let _ = state
                        .channel
                        .basic_cancel(
                            state.consumer_tag.as_str().into(),
                            BasicCancelOptions::default(),
                        )
                        .await;
                    while let Some(delivery) = state.backlog.pop_front() {
                        requeue(state, &delivery).await;
                    }
                }
                state.draining.get_or_insert_with(Vec::new).push(reply);
                finish_drain_if_idle(state);
            }
            ConsumerMsg::Resize(size) => resize(&myself, state, size).await?,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ConsumerMsg>,
        event: SupervisionEvent,
        state: &mut ConsumerState,
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
        if let Some(tag) = slot.busy {
            SubjectStats::decr(&stats.busy);
            SubjectStats::decr(&stats.in_flight);
            SubjectStats::incr(&stats.requeued);
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            if let Err(e) = state.channel.basic_nack(tag, requeue).await {
                warn!(error = %e, "Could not return a failed worker's message; the broker redelivers it when the channel closes");
            }
        }
        if let Some(err) = failure {
            error!(subject = %state.runtime.name, error = %err, "FPM worker failed; its message goes back to the queue and the worker is replaced");
            SubjectStats::incr(&stats.worker_restarts);
        }
        if state.draining.is_none() && !slot.retiring {
            // Keep the pool at its target size.
            let target = state.target;
            state.target = state.workers.len();
            resize(&myself, state, target).await?;
        }
        finish_drain_if_idle(state);
        Ok(())
    }
}

/// Forwards deliveries from the lapin consumer stream to the actor's mailbox.
async fn forward(mut consumer: lapin::Consumer, actor: ActorRef<ConsumerMsg>) {
    while let Some(item) = consumer.next().await {
        match item {
            Ok(delivery) => {
                if actor
                    .cast(ConsumerMsg::Delivery(Box::new(delivery)))
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                let _ = actor.cast(ConsumerMsg::StreamEnded(Some(e.to_string())));
                return;
            }
        }
    }
    let _ = actor.cast(ConsumerMsg::StreamEnded(None));
}

/// `basic.qos` prefetch for a pool.
#[must_use]
pub fn prefetch(pool: usize, per_worker: u16) -> u16 {
    u16::try_from(pool.max(1).saturating_mul(usize::from(per_worker))).unwrap_or(u16::MAX)
}

/// Hands backlog deliveries to idle workers.
fn dispatch(state: &mut ConsumerState) {
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

async fn requeue(state: &ConsumerState, delivery: &Delivery) {
    let stats = &state.runtime.stats;
    SubjectStats::decr(&stats.in_flight);
    SubjectStats::incr(&stats.requeued);
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(e) = delivery.acker.nack(options).await {
        warn!(error = %e, "Could not return a delivery; the broker redelivers it when the channel closes");
    }
}

fn finish_drain_if_idle(state: &mut ConsumerState) {
    let busy = state.workers.values().any(|s| s.busy.is_some());
    if busy {
        return;
    }
    if let Some(waiters) = state.draining.as_mut() {
        for reply in waiters.drain(..) {
            let _ = reply.send(());
        }
    }
}

/// Grows or shrinks the pool to `size`. Starting the pool is a resize from 0.
///
/// Growing spawns workers at once; shrinking stops idle workers first and marks busy ones to
/// stop when their message is done, so no in-flight message is interrupted.
async fn resize(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
    size: usize,
) -> Result<(), ActorProcessingErr> {
    let stats = state.runtime.stats.clone();
    state.target = size;
    let active = state.workers.values().filter(|s| !s.retiring).count();
    if size > active {
        // Reuse workers that were about to retire before spawning new ones.
        let mut missing = size - active;
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
                consumer: myself.clone(),
            };
            let (actor, _) = Actor::spawn_linked(None, FpmWorker, args, myself.get_cell()).await?;
            state.idle.push_back(actor.get_id());
            state.workers.insert(
                actor.get_id(),
                Slot {
                    actor,
                    busy: None,
                    retiring: false,
                },
            );
            SubjectStats::incr(&stats.pool_size);
        }
    } else {
        let mut excess = active - size;
        // Idle workers go first.
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
            .filter(|s| !s.retiring && s.busy.is_some())
        {
            if excess == 0 {
                break;
            }
            slot.retiring = true;
            excess -= 1;
        }
    }
    dispatch(state);
    Ok(())
}
