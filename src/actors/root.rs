//! Root supervisor: starts one consumer per subject and keeps it running.
//!
//! Invariant: a failed consumer is restarted with exponential, jittered backoff; more than
//! `agent.max_restarts` crashes within `agent.restart_window` escalate — the root stops with a
//! fatal reason and the process exits non-zero, so systemd or supervisord take over. Failing to
//! reach the broker is not a crash: it is retried with backoff for as long as it takes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{error, info, warn};

mod intensity;

use super::SubjectRuntime;
use super::consumer::{self, ConsumerArgs, ConsumerMsg, QueueConsumer};
use super::exit::ConsumerExit;
use crate::config::Config;
use crate::stats::SubjectStats;
use crate::telemetry::events::Event;

/// The root supervisor actor.
pub struct RootSupervisor;

/// One subject's supervision record.
struct Child {
    runtime: Arc<SubjectRuntime>,
    actor: Option<ActorRef<ConsumerMsg>>,
    started: Option<Instant>,
    /// Restart intensity and backoff (`root/intensity`).
    intensity: intensity::Intensity,
    /// The consumer is being replaced after a reload: its stop is not a crash.
    replacing: bool,
    /// Pool size asked for, as the agent passed it down; survives consumer restarts.
    target: usize,
    /// An operator paused the subject; survives consumer restarts and reloads.
    operator_paused: bool,
    /// Counts operator pauses and resumes: a timed pause's expiry resumes the subject only if
    /// nothing was commanded since.
    pause_generation: u64,
    /// The subject's rate limit in force (the file's, or an operator's); survives consumer
    /// restarts, and reloads unless the file's value changes.
    rate: Option<crate::rate::RateLimit>,
    /// Where the next (re)connection starts in `amqp.urls`; survives consumer restarts.
    endpoint_cursor: Arc<AtomicUsize>,
}

/// The root's state.
pub struct RootState {
    config: Arc<Config>,
    children: BTreeMap<String, Child>,
    ids: HashMap<ActorId, String>,
    draining: bool,
    fatal: Arc<Mutex<Option<String>>>,
    /// The FPM upstreams in force: a reload takes the runtimes' from here.
    upstreams: Arc<crate::upstreams::InForce>,
}

/// Messages the root accepts.
pub enum RootMsg {
    /// (Re)start the consumer of a subject.
    Start(String),
    /// Drain every consumer; reply when all are idle (the caller bounds the wait).
    Drain(RpcReplyPort<()>),
    /// Resize a subject's pool.
    Resize(String, usize),
    /// Pause (true) or resume (false) a subject's consumption; a pause with a duration ends
    /// by itself.
    SetPaused(String, bool, Option<Duration>),
    /// A timed pause of this generation ran out.
    PauseExpired(String, u64),
    /// Set (or lift, `None`) a subject's rate limit.
    SetRate(String, Option<crate::rate::RateLimit>),
    /// Apply a re-read configuration (SIGHUP), with the pool sizes asked for under it.
    Reload(Arc<Config>, BTreeMap<String, usize>),
    /// Liveness check (the systemd watchdog pings only while this answers).
    Ping(RpcReplyPort<()>),
}

/// What the root is started with.
pub struct RootArgs {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Per-subject counters, created by the caller so it can read them.
    pub stats: BTreeMap<String, Arc<SubjectStats>>,
    /// Per-subject pool size to start with.
    pub targets: BTreeMap<String, usize>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// Set to the reason when the root gives up; the process then exits non-zero.
    pub fatal: Arc<Mutex<Option<String>>>,
    /// Crash-loop protection, shared by every subject.
    pub crashes: Arc<crate::poison::journal::Tracker>,
    /// The FPM upstreams in force, shared by every subject (the agent owns them).
    pub upstreams: Arc<crate::upstreams::InForce>,
    /// Tests only: called by every worker with each delivery (see [`super::hook`]).
    pub hook: Option<super::hook::DeliveryHook>,
}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let mut children = BTreeMap::new();
        let gate = crate::broker::gate::OversizeGate::new(args.config.limits.max_body_bytes);
        for (name, stats) in args.stats {
            let target = args.targets.get(&name).copied().unwrap_or(1);
            let runtime = Arc::new(
                SubjectRuntime::new(
                    args.config.clone(),
                    &name,
                    stats,
                    args.metrics.clone(),
                    args.upstreams.for_config(&args.config),
                )
                .with_crashes(args.crashes.clone())
                .with_body_gate(gate.clone())
                .with_hook(args.hook.clone()),
            );
            let child = Child {
                runtime,
                actor: None,
                started: None,
                intensity: intensity::Intensity::new(&policy(&args.config.agent)),
                replacing: false,
                target,
                operator_paused: false,
                pause_generation: 0,
                rate: args.config.subjects[&name].rate(),
                endpoint_cursor: Arc::default(),
            };
            children.insert(name.clone(), child);
            myself.cast(RootMsg::Start(name))?;
        }
        Ok(RootState {
            config: args.config,
            children,
            ids: HashMap::new(),
            draining: false,
            fatal: args.fatal,
            upstreams: args.upstreams,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RootMsg>,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        // Consumers close their connections in their own post_stop; wait so that a caller who
        // sees the root stopped knows every connection is closed.
        for actor in state.children.values_mut().filter_map(|c| c.actor.take()) {
            let _ = actor
                .stop_and_wait(None, Some(Duration::from_secs(10)))
                .await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Start(name) => start(&myself, state, name).await,
            RootMsg::Drain(reply) => drain(state, reply),
            RootMsg::Resize(name, size) => {
                // A consumer (re)started later is given the child's target.
                if let Some(child) = state.children.get_mut(&name) {
                    child.target = size;
                    if let Some(actor) = &child.actor {
                        actor.cast(ConsumerMsg::Resize(size))?;
                    }
                }
            }
            RootMsg::Reload(config, targets) => reload(state, config, &targets)?,
            RootMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            RootMsg::SetRate(name, rate) => {
                if let Some(child) = state.children.get_mut(&name) {
                    child.rate = rate;
                    if let Some(actor) = &child.actor {
                        actor.cast(ConsumerMsg::SetRate(rate))?;
                    }
                }
            }
            RootMsg::SetPaused(name, paused, duration) => {
                if let Some(child) = state.children.get_mut(&name) {
                    pause(&myself, child, &name, paused, duration)?;
                }
            }
            RootMsg::PauseExpired(name, generation) => {
                if let Some(child) = state
                    .children
                    .get_mut(&name)
                    .filter(|c| c.pause_generation == generation && c.operator_paused)
                {
                    info!(subject = %name, "Timed pause ran out: resuming consumption");
                    child.runtime.stats.set_operator_pause(false, None);
                    set_paused(child, false)?;
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, exit)) = consumer::exit_of(event) else {
            return Ok(());
        };
        let Some(name) = state.ids.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state.draining {
            return Ok(());
        }
        if let Some(child) = state.children.get_mut(&name).filter(|c| c.replacing) {
            child.replacing = false;
            child.actor = None;
            info!(subject = %name, "Consumer stopped for the reload; starting it with the new configuration");
            myself.cast(RootMsg::Start(name))?;
            return Ok(());
        }
        error!(subject = %name, error = %exit.reason(), "Consumer failed");
        if let Some(child) = state.children.get(&name) {
            child.runtime.events.emit(Event::ConsumerFailed);
        }
        ended(&myself, state, name, &exit);
        Ok(())
    }
}

/// Applies a new configuration as a diff: pools are resized in place to the sizes the agent
/// asked for under it (`AgentHandle::reload_targets`); a subject whose connection, FPM,
/// retry or limit settings changed is drained and restarted with the new settings.
fn reload(
    state: &mut RootState,
    new: Arc<Config>,
    targets: &BTreeMap<String, usize>,
) -> Result<(), ActorProcessingErr> {
    let old = state.config.clone();
    for name in new
        .subjects
        .keys()
        .filter(|n| !state.children.contains_key(*n))
    {
        warn!(subject = %name, "New subjects are started by a restart, not a reload");
    }
    for (name, child) in &mut state.children {
        if !new.subjects.contains_key(name) {
            warn!(subject = %name, "Removing a subject needs a restart; it keeps running");
            continue;
        }
        let target = targets.get(name).copied().unwrap_or(child.target);
        child.target = target;
        let restart = !old.same_for_consumer(&new, name);
        // A rate limit changed in the file replaces the one in force (an operator's too); an
        // unchanged one leaves the operator's.
        let file_rate = new.subjects[name].rate();
        let rate_changed = old.subjects.get(name).and_then(|s| s.rate()) != file_rate;
        if rate_changed {
            child.rate = file_rate;
        }
        child.runtime = reloaded(&child.runtime, &new, name, &state.upstreams);
        let Some(actor) = child.actor.clone() else {
            continue;
        };
        if restart {
            info!(subject = %name, "Configuration changed; draining the consumer to restart it");
            child.replacing = true;
            let timeout = new.agent.shutdown_timeout;
            tokio::spawn(async move {
                let _ = actor.call(ConsumerMsg::Drain, Some(timeout)).await;
                actor.stop(Some("reload".to_owned()));
            });
        } else {
            actor.cast(ConsumerMsg::Resize(target))?;
            if rate_changed {
                actor.cast(ConsumerMsg::SetRate(child.rate))?;
            }
        }
    }
    state.config = new;
    Ok(())
}

/// Drains every consumer concurrently, without blocking the root's mailbox; `reply` when all
/// are drained.
fn drain(state: &mut RootState, reply: RpcReplyPort<()>) {
    state.draining = true;
    let consumers: Vec<_> = state
        .children
        .values()
        .filter_map(|c| c.actor.clone())
        .collect();
    tokio::spawn(async move {
        let calls = consumers.iter().map(|c| c.call(ConsumerMsg::Drain, None));
        futures_util::future::join_all(calls).await;
        let _ = reply.send(());
    });
}

/// An operator's pause or resume of `child`, for `duration` when given (a timed pause ends by
/// itself, unless another pause or resume came in between).
fn pause(
    myself: &ActorRef<RootMsg>,
    child: &mut Child,
    name: &str,
    paused: bool,
    duration: Option<std::time::Duration>,
) -> Result<(), ActorProcessingErr> {
    child.pause_generation += 1;
    let until = duration.filter(|_| paused).map(|d| {
        let generation = child.pause_generation;
        let expired = name.to_owned();
        myself.send_after(d, move || RootMsg::PauseExpired(expired, generation));
        std::time::SystemTime::now() + d
    });
    child.runtime.stats.set_operator_pause(paused, until);
    set_paused(child, paused)
}

/// A subject's runtime under the reloaded configuration: the same stats, metrics, crash
/// journal, body gate and hook, and the connection pool for the new FPM settings.
fn reloaded(
    runtime: &SubjectRuntime,
    new: &Arc<Config>,
    name: &str,
    upstreams: &crate::upstreams::InForce,
) -> Arc<SubjectRuntime> {
    Arc::new(
        SubjectRuntime::new(
            new.clone(),
            name,
            runtime.stats.clone(),
            runtime.metrics.clone(),
            upstreams.for_config(new),
        )
        .with_crashes(runtime.crashes.clone())
        .with_body_gate(runtime.body_gate.clone())
        .with_hook(runtime.hook.clone()),
    )
}

/// Records the operator's pause in the child and tells its consumer, if one runs.
fn set_paused(child: &mut Child, paused: bool) -> Result<(), ActorProcessingErr> {
    child.operator_paused = paused;
    if let Some(actor) = &child.actor {
        actor.cast(ConsumerMsg::SetPaused(paused))?;
    }
    Ok(())
}

async fn start(myself: &ActorRef<RootMsg>, state: &mut RootState, name: String) {
    if state.draining {
        return;
    }
    let Some(child) = state.children.get_mut(&name) else {
        return;
    };
    let args = ConsumerArgs {
        runtime: child.runtime.clone(),
        target: child.target,
        operator_paused: child.operator_paused,
        rate: child.rate,
        endpoint_cursor: child.endpoint_cursor.clone(),
    };
    match Actor::spawn_linked(None, QueueConsumer, args, myself.get_cell()).await {
        Ok((actor, _)) => {
            state.ids.insert(actor.get_id(), name.clone());
            child.actor = Some(actor);
            child.started = Some(Instant::now());
        }
        Err(e) => {
            let exit = match &e {
                ractor::SpawnErr::StartupFailed(inner) => ConsumerExit::of(&**inner),
                other => ConsumerExit::Crash(other.to_string()),
            };
            match &exit {
                // An unreachable broker is retried with backoff for as long as it takes.
                ConsumerExit::Unreachable(_) => {
                    warn!(subject = %name, error = %e, "Cannot reach the broker; retrying");
                }
                ConsumerExit::Crash(_) => {
                    error!(subject = %name, error = %e, "Cannot start consumer");
                }
                ConsumerExit::Config(_) => {}
            }
            ended(myself, state, name, &exit);
        }
    }
}

/// Acts on a consumer's end: a configuration the broker refused stops the agent once (a
/// restart cannot fix it); anything else schedules a restart.
fn ended(myself: &ActorRef<RootMsg>, state: &mut RootState, name: String, exit: &ConsumerExit) {
    if let ConsumerExit::Config(why) = exit {
        let reason = format!("subject `{name}`: {why}");
        error!("{reason}");
        *state.fatal.lock().expect("fatal lock") = Some(reason.clone());
        myself.stop(Some(reason));
        return;
    }
    failed(myself, state, name, exit.is_crash());
}

/// Schedules a restart; a crash counts towards the restart intensity.
fn failed(myself: &ActorRef<RootMsg>, state: &mut RootState, name: String, crash: bool) {
    let agent = &state.config.agent;
    let Some(child) = state.children.get_mut(&name) else {
        return;
    };
    child.actor = None;
    let started = child.started.take();
    match child
        .intensity
        .ended(&policy(agent), started, crash, Instant::now())
    {
        intensity::Next::GiveUp(crashes) => {
            let reason = format!(
                "consumer `{name}` crashed {crashes} times within {:?} (agent.max_restarts = {}); giving up",
                agent.restart_window, agent.max_restarts
            );
            error!("{reason}");
            *state.fatal.lock().expect("fatal lock") = Some(reason.clone());
            myself.stop(Some(reason));
        }
        intensity::Next::RestartAfter(backoff) => {
            let delay = jitter(backoff);
            info!(subject = %name, delay = ?delay, "Restarting consumer after backoff");
            myself.send_after(delay, move || RootMsg::Start(name));
        }
    }
}

/// The restart policy of the `[agent]` settings in force.
fn policy(agent: &crate::config::AgentConfig) -> intensity::Policy {
    intensity::Policy {
        max_restarts: agent.max_restarts,
        window: agent.restart_window,
        backoff: agent.restart_backoff,
        backoff_max: agent.restart_backoff_max,
    }
}

/// ±20 % jitter so that subjects (and agents) do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let factor = 0.8 + rand::random::<f64>() * 0.4;
    d.mul_f64(factor)
}
