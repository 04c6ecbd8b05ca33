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
pub(crate) struct RootSupervisor;

/// One subject's supervision record.
struct Child {
    runtime: Arc<SubjectRuntime>,
    actor: Option<ActorRef<ConsumerMsg>>,
    started: Option<Instant>,
    /// Restart intensity and backoff (`root/intensity`).
    intensity: intensity::Intensity,
    /// The consumer is being replaced after a reload: its stop is not a crash.
    replacing: bool,
    /// Where the next (re)connection starts in `amqp.urls`; survives consumer restarts.
    endpoint_cursor: Arc<AtomicUsize>,
}

/// The root's state.
pub(crate) struct RootState {
    config: Arc<Config>,
    children: BTreeMap<String, Child>,
    ids: HashMap<ActorId, String>,
    draining: bool,
    fatal: Arc<Mutex<Option<String>>>,
    /// The FPM upstreams in force: a reload takes the runtimes' from here.
    upstreams: Arc<crate::upstreams::InForce>,
    /// The agent's record of each subject's run-time settings.
    settings: Arc<crate::settings::Settings>,
}

/// Messages the root accepts.
pub(crate) enum RootMsg {
    /// (Re)start the consumer of a subject.
    Start(String),
    /// Drain every consumer; reply when all are idle (the caller bounds the wait).
    Drain(RpcReplyPort<()>),
    /// Resize a subject's pool.
    Resize(String, usize),
    /// Pause (true) or resume (false) a subject's consumption.
    SetPaused(String, bool),
    /// Set (or lift, `None`) a subject's rate limit.
    SetRate(String, Option<crate::rate::RateLimit>),
    /// Apply a re-read configuration (SIGHUP); the settings record already holds the pool
    /// sizes asked for under it.
    Reload(Arc<Config>),
    /// Liveness check (the systemd watchdog pings only while this answers).
    Ping(RpcReplyPort<()>),
}

/// What the root is started with.
pub(crate) struct RootArgs {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Per-subject counters, created by the caller so it can read them.
    pub stats: BTreeMap<String, Arc<SubjectStats>>,
    /// The agent's record of each subject's run-time settings, read when a consumer starts.
    pub settings: Arc<crate::settings::Settings>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// Set to the reason when the root gives up; the process then exits non-zero.
    pub fatal: Arc<Mutex<Option<String>>>,
    /// Crash-loop protection, shared by every subject.
    pub crashes: Arc<crate::poison::journal::Tracker>,
    /// The FPM upstreams in force, shared by every subject (the agent owns them).
    pub upstreams: Arc<crate::upstreams::InForce>,
    /// The FPM status monitor, shared by every subject (the agent owns it).
    pub monitor: Arc<crate::fpm_status::monitor::Monitor>,
    /// Tests only: called by every worker with each delivery (see [`super::hook`]).
    pub hook: Option<super::hook::DeliveryHook>,
    /// The body gate and each subject's held body bytes, shared by every subject for the
    /// agent's life (the agent owns it; `/status` and the metrics read it).
    pub body_gate: Arc<crate::broker::gate::OversizeGate>,
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
        let gate = args.body_gate.clone();
        for (name, stats) in args.stats {
            let runtime = Arc::new(
                SubjectRuntime::new(
                    args.config.clone(),
                    &name,
                    stats,
                    args.metrics.clone(),
                    args.upstreams.for_config(&args.config),
                )
                .with_monitor(args.monitor.clone())
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
            settings: args.settings,
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
            RootMsg::Resize(name, size) => tell(state, &name, ConsumerMsg::Resize(size))?,
            RootMsg::Reload(config) => reload(state, config)?,
            RootMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            RootMsg::SetRate(name, rate) => tell(state, &name, ConsumerMsg::SetRate(rate))?,
            RootMsg::SetPaused(name, paused) => {
                tell(state, &name, ConsumerMsg::SetPaused(paused))?;
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
/// asked for under it (the settings record, `AgentHandle::reload_settings`); a subject whose connection, FPM,
/// retry or limit settings changed is drained and restarted with the new settings.
fn reload(state: &mut RootState, new: Arc<Config>) -> Result<(), ActorProcessingErr> {
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
        let restart = !old.same_for_consumer(&new, name);
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
        } else if let Some(setting) = state.settings.get(name) {
            // A rate limit changed by the reload follows in its own message from the agent.
            actor.cast(ConsumerMsg::Resize(setting.target))?;
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
        .with_monitor(runtime.monitor.clone())
        .with_crashes(runtime.crashes.clone())
        .with_body_gate(runtime.body_gate.clone())
        .with_hook(runtime.hook.clone()),
    )
}

/// Tells a subject's consumer, if one runs (one started later reads the settings record).
fn tell(state: &RootState, name: &str, msg: ConsumerMsg) -> Result<(), ActorProcessingErr> {
    if let Some(actor) = state.children.get(name).and_then(|c| c.actor.as_ref()) {
        actor.cast(msg)?;
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
    let Some(setting) = state.settings.get(&name) else {
        return;
    };
    let args = ConsumerArgs {
        runtime: child.runtime.clone(),
        target: setting.target,
        operator_paused: setting.pause.is_on(),
        rate: setting.rate,
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
        intensity::Next::GiveUp(failures) => {
            let reason = format!(
                "consumer `{name}` crashed {failures} times within {:?} (agent.max_restarts = {}); giving up",
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
