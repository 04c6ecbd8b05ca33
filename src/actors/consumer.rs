//! Queue consumer: one per subject. Owns the subject's AMQP connection and channels, receives
//! deliveries and hands each to an idle FPM worker; supervises its pool of workers.
//!
//! Invariant: the number of deliveries the agent holds for a subject is bounded by `basic.qos`
//! (pool size × `Config::prefetch_per_worker`: `amqp.prefetch_per_worker`, or with batches two
//! batches per worker); a delivery is either with exactly one worker or
//! waiting in `backlog`, and a worker that dies has its delivery nacked back to the queue.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lapin::message::Delivery;
use lapin::{Channel, Connection};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{error, info};

use super::SubjectRuntime;
use super::acks::Acks;
use super::exit::ConsumerExit;
use super::worker::{FpmWorker, WorkerArgs, WorkerIdle};
use crate::broker::{self, Publisher};
use crate::stats::SubjectStats;
use crate::telemetry::events::Event;

mod circuit;
mod dispatch;
mod pool;
mod subscription;

use pool::Pool;

/// Longest wait for held acks to be written when draining or stopping; past it the broker
/// redelivers those messages.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The consumer actor.
pub(crate) struct QueueConsumer;

/// The consumer's state.
pub(crate) struct ConsumerState {
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
    /// The workers, and the size asked for.
    pool: Pool<FpmWorker>,
    /// Deliveries received while every worker was busy.
    backlog: VecDeque<Delivery>,
    /// When the backlog last went from empty to non-empty (no later than its oldest delivery
    /// arrived): `batch_wait` counts from here.
    backlog_since: std::time::Instant,
    /// How deliveries are grouped into requests (`batch_max`, `batch_wait`).
    batching: crate::batch::Batching,
    /// With `batch_max = "auto"`: what sizes each request (learns from the workers' reports).
    auto: Option<crate::batch::auto::Auto>,
    /// Workers whose request in flight was sized before anything was timed
    /// (`Auto::observe_blind`).
    blind: std::collections::HashSet<ractor::ActorId>,
    /// A `Dispatch` is scheduled (an idle worker waits for a batch to fill).
    dispatch_armed: bool,
    myself: ActorRef<ConsumerMsg>,
    /// Callers waiting for the drain to finish; `Some` once draining started.
    draining: Option<Vec<RpcReplyPort<()>>>,
    /// Task moving deliveries from the lapin consumer into the mailbox.
    forwarder: Option<tokio::task::JoinHandle<()>>,
    /// The task reading the queue's, delay queues' and dead-letter queue's depths.
    depth: Option<tokio::task::JoinHandle<()>>,
    /// Circuit breaker: `Some(next probe delay)` while FPM is unreachable.
    circuit: Option<std::time::Duration>,
    /// Paused because PHP refuses the agent's signature.
    signature: SignatureHold,
    /// An operator paused this subject.
    operator_paused: bool,
    /// The rate limit's bucket; `None`: no limit.
    bucket: Option<crate::rate::Bucket>,
    /// A `Dispatch` is scheduled for the bucket's next token.
    rate_armed: bool,
    /// Why this consumer stops itself; read by the root from the final state.
    exit: Option<ConsumerExit>,
}

/// The pause of a subject whose signature PHP refuses (`circuit::signature_rejected`).
#[derive(Debug, Default)]
struct SignatureHold {
    /// Not consuming until the pause is over.
    paused: bool,
    /// The last pause, doubled on the next refusal; `None` once a request went through.
    backoff: Option<std::time::Duration>,
}

/// Messages the consumer accepts.
pub(crate) enum ConsumerMsg {
    /// Deliveries from the broker, in the order received (all the forwarder found waiting).
    Deliveries(Vec<Delivery>),
    /// The delivery stream of consumer `tag` ended (connection or channel lost, or cancelled).
    StreamEnded {
        /// Which consumer (a paused-then-resumed subject has had several).
        tag: String,
        /// The error, if the stream ended with one.
        reason: Option<String>,
    },
    /// A worker finished its message.
    WorkerIdle(WorkerIdle),
    /// Circuit breaker: check whether FPM accepts connections again.
    Probe,
    /// The pause after a refused signature is over.
    SignatureRetry,
    /// Operator pause (true) or resume (false).
    SetPaused(bool),
    /// A new rate limit (`None`: no limit).
    SetRate(Option<crate::rate::RateLimit>),
    /// Stop taking deliveries; reply once no worker is busy.
    Drain(RpcReplyPort<()>),
    /// Change the pool size.
    Resize(usize),
    /// `batch_wait` is over: hand the backlog to idle workers even if no batch is full.
    Dispatch,
    /// The rate limit's next token is due.
    RateDispatch,
    /// A delivery that came without its body (see [`crate::broker::gate`]): the oversized body
    /// that was held is gone, so it goes back to its queue to be received whole.
    Deferred(Box<Delivery>),
}

impl From<WorkerIdle> for ConsumerMsg {
    fn from(report: WorkerIdle) -> Self {
        Self::WorkerIdle(report)
    }
}

impl TryFrom<ConsumerMsg> for WorkerIdle {
    type Error = ConsumerMsg;

    fn try_from(msg: ConsumerMsg) -> Result<Self, ConsumerMsg> {
        match msg {
            ConsumerMsg::WorkerIdle(report) => Ok(report),
            other => Err(other),
        }
    }
}

/// What a consumer incarnation starts with: its subject's runtime, and the state that its root
/// keeps for the subject across incarnations (the root's child record owns it).
pub(crate) struct ConsumerArgs {
    /// The subject's runtime.
    pub runtime: Arc<SubjectRuntime>,
    /// Pool size asked for (config, reload, signals, `pool set`, the autoscaler).
    pub target: usize,
    /// An operator paused the subject.
    pub operator_paused: bool,
    /// The rate limit in force.
    pub rate: Option<crate::rate::RateLimit>,
    /// Where the next (re)connection starts in `amqp.urls`.
    pub endpoint_cursor: Arc<AtomicUsize>,
}

impl Actor for QueueConsumer {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = ConsumerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ConsumerMsg>,
        args: ConsumerArgs,
    ) -> Result<ConsumerState, ActorProcessingErr> {
        let runtime = args.runtime.clone();
        runtime.events.emit(Event::ConsumerStarting);
        let (connection, node) =
            broker::endpoints::connect(&runtime.config, &runtime.name, &args.endpoint_cursor)
                .await?;
        let connection = Arc::new(connection);
        runtime.stats.set_node(Some(node));
        match setup(&myself, &args, connection.clone()).await {
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
        if let Some(depth) = state.depth.take() {
            depth.abort();
        }
        state.pool.kill_all();
        // Acks of finished messages still held back go out before the connection closes.
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, state.acks.flush()).await;
        // Closing the connection returns every unacked delivery to its queue.
        let _ = state
            .connection
            .close(200, "amqp-agent consumer stopping".into())
            .await;
        stats.in_flight.store(0, Ordering::Relaxed);
        stats.busy.store(0, Ordering::Relaxed);
        stats.queued.store(0, Ordering::Relaxed);
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
        let result = on_message(&myself, msg, state).await;
        if let Err(e) = result {
            error!(subject = %state.runtime.name, error = %e, "Consumer failed; stopping it for a restart");
            state.exit = Some(ConsumerExit::of(&*e));
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
        pool::on_worker_ended(&myself, state, event).await
    }
}

/// Returns a delivery that no worker took (the settlement task counts it as requeued).
fn requeue(state: &ConsumerState, delivery: &Delivery) {
    state.acks.nack(delivery.delivery_tag);
    SubjectStats::decr(&state.runtime.stats.in_flight);
}

/// Acts on one message; an error stops the consumer (see `handle`).
async fn on_message(
    myself: &ActorRef<ConsumerMsg>,
    msg: ConsumerMsg,
    state: &mut ConsumerState,
) -> Result<(), ActorProcessingErr> {
    match msg {
        ConsumerMsg::Deliveries(deliveries) => dispatch::on_deliveries(state, deliveries),
        ConsumerMsg::Deferred(delivery) => requeue(state, &delivery),
        ConsumerMsg::WorkerIdle(report) => dispatch::on_worker_idle(myself, state, report).await?,
        ConsumerMsg::StreamEnded { tag, reason } => {
            subscription::on_stream_ended(state, &tag, reason)?;
        }
        ConsumerMsg::Drain(reply) => on_drain(myself, state, reply).await?,
        ConsumerMsg::Resize(size) => pool::resize(myself, state, size).await?,
        ConsumerMsg::Dispatch => {
            state.dispatch_armed = false;
            dispatch::dispatch(state);
        }
        ConsumerMsg::RateDispatch => {
            state.rate_armed = false;
            dispatch::dispatch(state);
        }
        ConsumerMsg::SetRate(rate) => {
            dispatch::set_rate(state, rate);
            dispatch::dispatch(state);
        }
        ConsumerMsg::Probe => circuit::probe(myself, state).await?,
        ConsumerMsg::SignatureRetry => circuit::signature_retry(myself, state).await?,
        ConsumerMsg::SetPaused(paused) => {
            let verb = if paused { "paused" } else { "resumed" };
            info!(subject = %state.runtime.name, paused, "Operator {verb} consumption");
            state.operator_paused = paused;
            subscription::sync_consuming(myself, state).await?;
        }
    }
    Ok(())
}

/// Stops taking deliveries; `reply` is answered once no worker is busy.
async fn on_drain(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
    reply: RpcReplyPort<()>,
) -> Result<(), ActorProcessingErr> {
    if state.draining.is_none() {
        info!(subject = %state.runtime.name, "Draining: no new deliveries, finishing in-flight work");
        state.draining = Some(Vec::new());
        subscription::sync_consuming(myself, state).await?;
    }
    state.draining.get_or_insert_with(Vec::new).push(reply);
    dispatch::finish_drain_if_idle(state);
    Ok(())
}

/// The consumer and the reason of its end, from a supervision event of the root: a failed
/// start or handler, or the exit it recorded before it stopped itself. `None` for other events.
#[must_use]
pub(crate) fn exit_of(event: SupervisionEvent) -> Option<(ActorCell, ConsumerExit)> {
    match event {
        SupervisionEvent::ActorFailed(cell, err) => Some((cell, ConsumerExit::of(&*err))),
        SupervisionEvent::ActorTerminated(cell, state, reason) => {
            let recorded = state
                .and_then(|mut s| s.take::<ConsumerState>().ok())
                .and_then(|s| s.exit);
            let exit = recorded.unwrap_or_else(|| {
                ConsumerExit::Crash(reason.unwrap_or_else(|| "stopped".to_owned()))
            });
            Some((cell, exit))
        }
        _ => None,
    }
}

/// Deliveries a worker may hold (`basic.qos` per worker, `Config::prefetch_per_worker`: with
/// batches, the batch it runs and the next one): the config's, except until the receiver first
/// says it takes batches with the default `batch_max` (one message per request:
/// `amqp.prefetch_per_worker`).
fn per_worker(state: &ConsumerState) -> u16 {
    let config = &state.runtime.config;
    match &state.auto {
        Some(auto) if !auto.batches_seen() => config.amqp.prefetch_per_worker,
        _ => config.prefetch_per_worker(state.runtime.subject()),
    }
}

/// Opens channels, declares the topology, spawns the pool and starts consuming.
async fn setup(
    myself: &ActorRef<ConsumerMsg>,
    args: &ConsumerArgs,
    connection: Arc<Connection>,
) -> Result<ConsumerState, ActorProcessingErr> {
    let runtime = &args.runtime;
    let config = runtime.config.clone();
    let subject = runtime.subject();
    let channel = connection.create_channel().await?;
    // Before any consumer starts on it: the gate is asked about each body before it arrives.
    // The subject's count is the gate's, kept across reconnects: deliveries of the channel
    // before this one may still hold their bodies (a retry copy being published, a worker
    // being stopped).
    channel.set_body_gate(Arc::new(broker::gate::ChannelGate {
        gate: runtime.body_gate.clone(),
        bytes: runtime.body_gate.bytes_of(&runtime.name),
    }));
    let acks = Acks::spawn(channel.clone(), runtime.clone());
    if config.amqp.declare {
        broker::declare_subject(&channel, &config, subject).await?;
    } else {
        broker::topology::verify_subject(&connection, &config, subject).await?;
    }
    let queue_type = config.queue_type(subject);
    let publisher =
        Arc::new(Publisher::open(connection.clone(), &subject.queue, queue_type, &config).await?);
    let mut state = initial_state(myself, args, (connection, channel), acks, publisher);
    dispatch::set_rate(&mut state, args.rate);
    // The size asked for at run time (signals, `pool set`) survives reconnects.
    pool::resize(myself, &mut state, args.target).await?;
    subscription::sync_consuming(myself, &mut state).await?;
    runtime.events.emit(Event::Consuming);
    info!(subject = %runtime.name, queue = %subject.queue, pool_size = args.target, "Consuming");
    Ok(state)
}

/// A new incarnation's state: no worker, nothing received yet, not consuming.
fn initial_state(
    myself: &ActorRef<ConsumerMsg>,
    args: &ConsumerArgs,
    (connection, channel): (Arc<Connection>, lapin::Channel),
    acks: Acks,
    publisher: Arc<Publisher>,
) -> ConsumerState {
    let runtime = &args.runtime;
    let (config, subject) = (&runtime.config, runtime.subject());
    let depth = Some(tokio::spawn(super::depth::watch(
        runtime.clone(),
        connection.clone(),
    )));
    ConsumerState {
        runtime: runtime.clone(),
        connection,
        channel,
        acks,
        publisher,
        consumer_tag: None,
        prefetch: 0,
        pool: Pool::new(myself.get_cell(), worker_builder(runtime, myself)),
        backlog: VecDeque::new(),
        blind: std::collections::HashSet::new(),
        backlog_since: std::time::Instant::now(),
        batching: crate::batch::Batching::of(config, subject),
        auto: subject.batch_max.is_auto().then(|| {
            let receiver = if subject.batch_max == crate::config::BatchMax::Auto {
                crate::batch::auto::Receiver::Trusted
            } else {
                crate::batch::auto::Receiver::MustSay
            };
            crate::batch::auto::Auto::new(
                receiver,
                usize::from(subject.batch_limit),
                subject.batch_latency,
                config.fpm.timeout,
            )
        }),
        dispatch_armed: false,
        myself: myself.clone(),
        draining: None,
        forwarder: None,
        depth,
        circuit: None,
        signature: SignatureHold::default(),
        operator_paused: args.operator_paused,
        bucket: None,
        rate_armed: false,
        exit: None,
    }
}

/// How the pool makes an FPM worker: it reports to this consumer.
fn worker_builder(
    runtime: &Arc<SubjectRuntime>,
    myself: &ActorRef<ConsumerMsg>,
) -> Box<dyn Fn() -> (FpmWorker, WorkerArgs) + Send> {
    let runtime = runtime.clone();
    let consumer = myself.get_derived();
    Box::new(move || {
        let args = WorkerArgs {
            runtime: runtime.clone(),
            consumer: consumer.clone(),
        };
        (FpmWorker, args)
    })
}
