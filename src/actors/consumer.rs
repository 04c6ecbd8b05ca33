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
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{DeliveryTag, FieldTable};
use lapin::{Channel, Connection};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{error, info, warn};

use super::SubjectRuntime;
use super::acks::Acks;
use super::stats::SubjectStats;
use super::worker::{FpmWorker, Job, WorkerArgs, WorkerMsg};
use crate::broker::{self, Publisher};
use crate::telemetry::metrics::Metrics;

/// Longest wait for held acks to be written when draining or stopping; past it the broker
/// redelivers those messages.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Prefix of the stop reason when the broker connection is gone (not a crash).
pub const CONNECTION_LOST: &str = "connection to RabbitMQ lost";

/// The consumer actor.
pub struct QueueConsumer;

/// A worker of the pool and what it holds.
struct Slot {
    actor: ActorRef<WorkerMsg>,
    /// Delivery tags of the message (or batch) the worker is handling.
    busy: Vec<DeliveryTag>,
    /// Stop this worker as soon as it is idle (pool shrink).
    retiring: bool,
}

/// The consumer's state.
pub struct ConsumerState {
    runtime: Arc<SubjectRuntime>,
    connection: Arc<Connection>,
    channel: Channel,
    /// Acks and nacks of `channel`'s deliveries, in order.
    acks: Acks,
    publisher: Arc<Publisher>,
    /// Tag of the active `basic.consume`; `None` while not consuming.
    consumer_tag: Option<String>,
    /// The `basic.qos` prefetch in force.
    prefetch: u16,
    workers: HashMap<ActorId, Slot>,
    idle: VecDeque<ActorId>,
    /// Deliveries received while every worker was busy.
    backlog: VecDeque<Delivery>,
    /// When the backlog last went from empty to non-empty (no later than its oldest delivery
    /// arrived): `batch_wait` counts from here.
    backlog_since: std::time::Instant,
    /// How deliveries are grouped into requests (`batch_max`, `batch_wait`).
    batching: crate::batch::Batching,
    /// A `Dispatch` is scheduled (an idle worker waits for a batch to fill).
    dispatch_armed: bool,
    myself: ActorRef<ConsumerMsg>,
    /// Wanted pool size.
    target: usize,
    /// Callers waiting for the drain to finish; `Some` once draining started.
    draining: Option<Vec<RpcReplyPort<()>>>,
    /// Task moving deliveries from the lapin consumer into the mailbox.
    forwarder: Option<tokio::task::JoinHandle<()>>,
    /// Circuit breaker: `Some(next probe delay)` while FPM is unreachable.
    circuit: Option<std::time::Duration>,
    /// An operator paused this subject.
    operator_paused: bool,
}

/// Messages the consumer accepts.
pub enum ConsumerMsg {
    /// A delivery from the broker.
    Delivery(Box<Delivery>),
    /// The delivery stream of consumer `tag` ended (connection or channel lost, or cancelled).
    StreamEnded {
        /// Which consumer (a paused-then-resumed subject has had several).
        tag: String,
        /// The error, if the stream ended with one.
        reason: Option<String>,
    },
    /// A worker finished its message.
    WorkerIdle {
        /// Which worker.
        worker: ActorId,
        /// FPM could not be reached for that message.
        fpm_unreachable: bool,
        /// The publish channel is closed; this consumer incarnation must be replaced.
        publisher_broken: bool,
    },
    /// Circuit breaker: check whether FPM accepts connections again.
    Probe,
    /// Operator pause (true) or resume (false).
    SetPaused(bool),
    /// Stop taking deliveries; reply once no worker is busy.
    Drain(RpcReplyPort<()>),
    /// Change the pool size.
    Resize(usize),
    /// `batch_wait` is over: hand the backlog to idle workers even if no batch is full.
    Dispatch,
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
        SubjectStats::incr(&runtime.stats.consumer_starts);
        let (connection, node) = broker::endpoints::connect(
            &runtime.config,
            &runtime.name,
            &runtime.stats.endpoint_cursor,
        )
        .await?;
        let connection = Arc::new(connection);
        runtime.stats.set_node(Some(node));
        match setup(&myself, &runtime, connection.clone()).await {
            Ok(state) => Ok(state),
            Err(e) => {
                // No state means no post_stop: close the connection here.
                runtime.stats.set_node(None);
                let _ = connection
                    .close(200, "amqp-agent consumer failed to start".into())
                    .await;
                Err(e)
            }
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConsumerMsg>,
        state: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        let stats = &state.runtime.stats;
        stats.consuming.store(false, Ordering::Relaxed);
        stats.set_node(None);
        if let Some(forwarder) = state.forwarder.take() {
            forwarder.abort();
        }
        for slot in state.workers.values() {
            slot.actor.kill();
        }
        // Acks of finished messages still held back go out before the connection closes.
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, state.acks.flush()).await;
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
        // ractor skips post_stop when a handler fails; stopping instead runs it, so the
        // connection closes (returning unacked deliveries) and the gauges reset.
        let result: Result<(), ActorProcessingErr> = async {
        match msg {
            ConsumerMsg::Delivery(delivery) => {
                SubjectStats::incr(&state.runtime.stats.received);
                state.runtime.hot.received.inc();
                SubjectStats::incr(&state.runtime.stats.in_flight);
                // After a cancel, deliveries the client had buffered still arrive: while not
                // consuming they go straight back (a dropped one would pin a prefetch slot).
                if state.draining.is_some() || state.consumer_tag.is_none() {
                    requeue(state, &delivery);
                    return Ok(());
                }
                if state.backlog.is_empty() {
                    state.backlog_since = std::time::Instant::now();
                }
                state.backlog.push_back(*delivery);
                dispatch(state);
            }
            ConsumerMsg::WorkerIdle {
                worker,
                fpm_unreachable,
                publisher_broken,
            } => {
                if publisher_broken && state.draining.is_none() {
                    return Err("the retry/dead-letter publish channel closed".into());
                }
                if fpm_unreachable && state.circuit.is_none() && state.draining.is_none() {
                    open_circuit(&myself, state).await?;
                }
                let stats = &state.runtime.stats;
                if let Some(slot) = state.workers.get_mut(&worker) {
                    let held = std::mem::take(&mut slot.busy);
                    if !held.is_empty() {
                        SubjectStats::decr(&stats.busy);
                        for _ in &held {
                            SubjectStats::decr(&stats.in_flight);
                        }
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
            ConsumerMsg::StreamEnded { tag, reason } => {
                if state.consumer_tag.as_deref() != Some(tag.as_str()) {
                    // A consumer we cancelled ourselves (drain, pause, resize).
                    return Ok(());
                }
                let reason =
                    reason.unwrap_or_else(|| "consumer cancelled by the broker".to_owned());
                if !state.connection.status().connected() {
                    // Not a crash: the root reconnects without counting it towards the
                    // restart intensity.
                    return Err(format!("{CONNECTION_LOST}: {reason}").into());
                }
                return Err(format!(
                    "delivery stream of `{}` ended: {reason}",
                    state.runtime.subject().queue
                )
                .into());
            }
            ConsumerMsg::Drain(reply) => {
                if state.draining.is_none() {
                    info!(subject = %state.runtime.name, "Draining: no new deliveries, finishing in-flight work");
                    state.draining = Some(Vec::new());
                    sync_consuming(&myself, state).await?;
                }
                state.draining.get_or_insert_with(Vec::new).push(reply);
                finish_drain_if_idle(state);
            }
            ConsumerMsg::Resize(size) => resize(&myself, state, size).await?,
            ConsumerMsg::Dispatch => {
                state.dispatch_armed = false;
                dispatch(state);
            }
            ConsumerMsg::Probe => probe(&myself, state).await?,
            ConsumerMsg::SetPaused(paused) => {
                info!(subject = %state.runtime.name, paused, "Operator {} consumption", if paused { "paused" } else { "resumed" });
                state.operator_paused = paused;
                sync_consuming(&myself, state).await?;
            }
        }
        Ok(())
        }
        .await;
        if let Err(e) = result {
            error!(subject = %state.runtime.name, error = %e, "Consumer failed; stopping it for a restart");
            myself.stop(Some(e.to_string()));
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
            SubjectStats::incr(&stats.worker_restarts);
            let labels = crate::telemetry::metrics::ActorLabels {
                subject: state.runtime.name.clone(),
                actor: "worker".to_owned(),
            };
            state
                .runtime
                .metrics
                .actor_restarts
                .get_or_create(&labels)
                .inc();
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

/// Opens channels, declares the topology, spawns the pool and starts consuming.
async fn setup(
    myself: &ActorRef<ConsumerMsg>,
    runtime: &Arc<SubjectRuntime>,
    connection: Arc<Connection>,
) -> Result<ConsumerState, ActorProcessingErr> {
    let config = runtime.config.clone();
    let subject = runtime.subject();
    let channel = connection.create_channel().await?;
    let acks = Acks::spawn(channel.clone(), runtime.clone());
    if config.amqp.declare {
        broker::declare_subject(&channel, &config, subject).await?;
    } else {
        broker::topology::verify_subject(&connection, &config, subject).await?;
    }
    let queue_type = config.queue_type(subject);
    let publisher =
        Arc::new(Publisher::open(&connection, &subject.queue, queue_type, &config).await?);
    // The size asked for at run time (signals, `pool set`) survives reconnects.
    let target = usize::try_from(runtime.stats.target_pool.load(Ordering::Relaxed)).unwrap_or(1);
    let mut state = ConsumerState {
        runtime: runtime.clone(),
        connection,
        channel,
        acks,
        publisher,
        consumer_tag: None,
        prefetch: 0,
        workers: HashMap::new(),
        idle: VecDeque::new(),
        backlog: VecDeque::new(),
        backlog_since: std::time::Instant::now(),
        batching: crate::batch::Batching::of(&config, subject),
        dispatch_armed: false,
        myself: myself.clone(),
        target: 0,
        draining: None,
        forwarder: None,
        circuit: None,
        operator_paused: runtime.stats.operator_paused.load(Ordering::Relaxed),
    };
    resize(myself, &mut state, target).await?;
    sync_consuming(myself, &mut state).await?;
    runtime.stats.consuming.store(true, Ordering::Relaxed);
    if runtime.stats.consumer_starts.load(Ordering::Relaxed) > 1 {
        runtime
            .metrics
            .reconnects
            .get_or_create(&Metrics::subject(&runtime.name))
            .inc();
    }
    info!(subject = %runtime.name, queue = %subject.queue, pool_size = target, "Consuming");
    Ok(state)
}

/// First and largest delay between FPM probes while the circuit is open.
const PROBE_FIRST: std::time::Duration = std::time::Duration::from_millis(200);
const PROBE_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Consumes when nothing says not to (draining, open circuit, operator pause), and reflects
/// the state in the `paused` gauge.
async fn sync_consuming(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
) -> Result<(), ActorProcessingErr> {
    let wanted = state.draining.is_none() && state.circuit.is_none() && !state.operator_paused;
    state.runtime.stats.paused.store(
        state.circuit.is_some() || state.operator_paused,
        Ordering::Relaxed,
    );
    match (wanted, state.consumer_tag.is_some()) {
        (true, false) => start_consuming(myself, state).await,
        (false, true) => {
            stop_consuming(state).await;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `basic.qos` for the current pool, then a new `basic.consume`. RabbitMQ applies a per-consumer
/// prefetch only to consumers created after it, which is why a resize re-consumes.
async fn start_consuming(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
) -> Result<(), ActorProcessingErr> {
    let prefetch = crate::config::prefetch(state.target, per_worker(&state.runtime));
    if prefetch != state.prefetch {
        state
            .channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        state.prefetch = prefetch;
        state.acks.set_window(prefetch);
    }
    let tag = new_consumer_tag(&state.runtime.name);
    let consumer = state
        .channel
        .basic_consume(
            state.runtime.subject().queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    state.consumer_tag = Some(tag);
    state.forwarder = Some(tokio::spawn(forward(consumer, myself.clone())));
    Ok(())
}

/// Cancels the consumer. Deliveries already received stay valid on the channel; the backlog
/// (not yet with a worker) goes back to the queue.
async fn stop_consuming(state: &mut ConsumerState) {
    cancel_consumer(state).await;
    while let Some(delivery) = state.backlog.pop_front() {
        requeue(state, &delivery);
    }
}

async fn cancel_consumer(state: &mut ConsumerState) {
    if let Some(tag) = state.consumer_tag.take() {
        let _ = state
            .channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }
    // The forwarder is not aborted: it hands over what the cancelled consumer had buffered and
    // ends with the stream (a stale `StreamEnded` is ignored by tag).
    state.forwarder = None;
}

/// Opens the circuit: stop taking deliveries while FPM is unreachable, so workers do not burn
/// through the queue. Messages already taken are retried by their workers (an unreachable FPM
/// does not use up attempts); the backlog goes back to the queue.
async fn open_circuit(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
) -> Result<(), ActorProcessingErr> {
    warn!(subject = %state.runtime.name, fpm = %state.runtime.config.fpm.address, "No FPM upstream reachable; pausing consumption until one answers");
    state.circuit = Some(PROBE_FIRST);
    myself.send_after(PROBE_FIRST, || ConsumerMsg::Probe);
    sync_consuming(myself, state).await
}

/// While the circuit is open: probe FPM; close it when FPM accepts connections, else back off.
async fn probe(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
) -> Result<(), ActorProcessingErr> {
    let Some(delay) = state.circuit else {
        return Ok(());
    };
    if !state.runtime.upstreams.probe(true).await {
        let next = (delay * 2).min(PROBE_MAX);
        state.circuit = Some(next);
        myself.send_after(next, || ConsumerMsg::Probe);
        return Ok(());
    }
    info!(subject = %state.runtime.name, "An FPM upstream answers again; resuming consumption");
    state.circuit = None;
    sync_consuming(myself, state).await
}

fn new_consumer_tag(subject: &str) -> String {
    format!(
        "amqp-agent.{subject}.{}.{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Forwards deliveries from the lapin consumer stream to the actor's mailbox.
async fn forward(mut consumer: lapin::Consumer, actor: ActorRef<ConsumerMsg>) {
    let tag = consumer.tag().to_string();
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
                let reason = Some(e.to_string());
                let _ = actor.cast(ConsumerMsg::StreamEnded { tag, reason });
                return;
            }
        }
    }
    let _ = actor.cast(ConsumerMsg::StreamEnded { tag, reason: None });
}

/// Deliveries a worker may hold (`basic.qos` per worker): room for a full batch.
fn per_worker(runtime: &SubjectRuntime) -> u16 {
    crate::batch::prefetch_per_worker(&runtime.config, runtime.subject())
}

/// Hands backlog deliveries to idle workers: one per request, or up to `batch_max` in one (an
/// idle worker waits up to `batch_wait` for a batch to fill).
fn dispatch(state: &mut ConsumerState) {
    while !state.backlog.is_empty() {
        if state.idle.is_empty() {
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
        let n = state
            .batching
            .take(state.backlog.iter().map(|d| (d.data.len(), d.redelivered)));
        let (msg, tags) = if n == 1 {
            let delivery = state.backlog.pop_front().expect("checked non-empty");
            let tags = vec![delivery.delivery_tag];
            let job = Job {
                delivery,
                publisher: state.publisher.clone(),
                acks: state.acks.clone(),
            };
            (WorkerMsg::Handle(Box::new(job)), tags)
        } else {
            let deliveries: Vec<Delivery> = state.backlog.drain(..n).collect();
            let tags = deliveries.iter().map(|d| d.delivery_tag).collect();
            let job = super::batch::BatchJob {
                deliveries,
                publisher: state.publisher.clone(),
                acks: state.acks.clone(),
            };
            (WorkerMsg::Batch(Box::new(job)), tags)
        };
        match slot.actor.cast(msg) {
            Ok(()) => {
                slot.busy = tags;
                SubjectStats::incr(&state.runtime.stats.busy);
            }
            Err(e) => {
                // The worker is stopping; its supervision event will replace it.
                match e {
                    ractor::MessagingErr::SendErr(WorkerMsg::Handle(job)) => {
                        state.backlog.push_front(job.delivery);
                    }
                    ractor::MessagingErr::SendErr(WorkerMsg::Batch(job)) => {
                        for delivery in job.deliveries.into_iter().rev() {
                            state.backlog.push_front(delivery);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Returns a delivery that no worker took (the settlement task counts it as requeued).
fn requeue(state: &ConsumerState, delivery: &Delivery) {
    state.acks.nack(delivery.delivery_tag);
    SubjectStats::decr(&state.runtime.stats.in_flight);
}

fn finish_drain_if_idle(state: &mut ConsumerState) {
    let busy = state.workers.values().any(|s| !s.busy.is_empty());
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
                    busy: Vec::new(),
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
            .filter(|s| !s.retiring && !s.busy.is_empty())
        {
            if excess == 0 {
                break;
            }
            slot.retiring = true;
            excess -= 1;
        }
    }
    dispatch(state);
    // RabbitMQ applies a new per-consumer prefetch only to consumers created after it: follow
    // the pool by re-consuming. Deliveries already received stay valid on the channel.
    let wanted = crate::config::prefetch(state.target, per_worker(&state.runtime));
    if state.consumer_tag.is_some() && wanted != state.prefetch {
        cancel_consumer(state).await;
        start_consuming(myself, state).await?;
    }
    Ok(())
}
