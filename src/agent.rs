//! The running agent as a value: what `amqp-agent run` drives, what the admin listener talks
//! to, and what tests start in-process.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use tracing::{info, warn};

use crate::actors::hook::DeliveryHook;
use crate::actors::root::{RootArgs, RootMsg, RootSupervisor};
use crate::config::Config;
use crate::poison::journal::Tracker;
use crate::stats::{StatsSnapshot, SubjectStats};
use crate::telemetry::metrics::Metrics;

mod fleet;
pub use fleet::Fleet;
mod pools;
mod sizer;
mod status;

pub use status::{Status, SubjectStatus};

/// A started agent (owns the supervision tree's join handle).
pub struct Agent {
    handle: AgentHandle,
    join: tokio::task::JoinHandle<()>,
    /// Crash-loop protection: closed on every orderly stop, so only a death counts.
    crashes: Arc<Tracker>,
}

/// A cheap, cloneable view of the running agent: status, readiness, commands.
#[derive(Clone)]
pub struct AgentHandle {
    inner: Arc<Shared>,
}

struct Shared {
    root: ActorRef<RootMsg>,
    /// The configuration in force (replaced by a reload).
    config: Mutex<Arc<Config>>,
    stats: BTreeMap<String, Arc<SubjectStats>>,
    metrics: Arc<Metrics>,
    fatal: Arc<Mutex<Option<String>>>,
    started: Instant,
    alive: std::sync::atomic::AtomicBool,
    /// The FPM status reader, slow-request watch and autoscaler of the config in force.
    fpm_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The FPM upstreams and their connection pools: owned here, used by every subject's
    /// workers, observed by the status monitor and the metrics.
    upstreams: Arc<crate::upstreams::InForce>,
    /// FPM's status page and the requests in flight: owned here, used by the workers (slow
    /// requests) and the autoscaler, observed by the metrics and `/status`.
    monitor: Arc<crate::fpm_status::monitor::Monitor>,
    /// Each subject's run-time settings (pool size, pin, pause, rate limit): the one record,
    /// written here only (`agent/pools`, `reload`); the root reads it and `/status` shows it.
    settings: Arc<crate::settings::Settings>,
    /// Which bodies are let into memory, and each subject's held body bytes: owned here, used
    /// by every consumer channel, observed by `/status` and the metrics.
    body_gate: Arc<crate::broker::gate::OversizeGate>,
    /// The fleet (`admin.fleet`): its state, and the task that keeps its link.
    fleet: Mutex<Option<(Arc<Fleet>, tokio::task::JoinHandle<()>)>>,
}

impl Agent {
    /// Starts the supervision tree. Consumers connect in the background; use
    /// [`Agent::wait_consuming`] to wait until they are ready.
    ///
    /// # Errors
    /// When the in-flight journal cannot be opened (`agent.state_dir`), or the root actor
    /// cannot be spawned.
    pub async fn start(config: Arc<Config>) -> anyhow::Result<Self> {
        Self::start_with_hook(config, None).await
    }

    /// [`Agent::start`], with a hook every worker calls with each delivery before handling it.
    /// For tests only (see [`crate::actors::hook`]): `amqp-agent run` passes none.
    ///
    /// # Errors
    /// As [`Agent::start`].
    pub async fn start_with_hook(
        config: Arc<Config>,
        hook: Option<DeliveryHook>,
    ) -> anyhow::Result<Self> {
        let crashes = Arc::new(Tracker::open(&config)?);
        let stats: BTreeMap<String, Arc<SubjectStats>> = config
            .subjects
            .keys()
            .map(|name| (name.clone(), Arc::new(SubjectStats::default())))
            .collect();
        let settings = Arc::new(crate::settings::Settings::new(&config));
        // The FPM connection pools: the agent owns them, the runtimes use them, the metrics and
        // the status monitor observe them.
        let upstreams = Arc::new(crate::upstreams::InForce::default());
        let monitor = Arc::new(crate::fpm_status::monitor::Monitor::default());
        let metrics = Arc::new(Metrics::new(stats.clone(), &upstreams, &monitor));
        // Which bodies are let into memory, and each subject's count of them: one for the
        // agent's life, so that a consumer's reconnect counts on (`broker::gate`).
        let body_gate = crate::broker::gate::OversizeGate::new(config.limits.max_body_bytes);
        body_gate.follow(&config);
        metrics.observe_bodies(body_gate.clone());
        metrics
            .crash_loop_protection
            .set(i64::from(crashes.enabled()));
        let fatal = Arc::new(Mutex::new(None));
        let args = RootArgs {
            config: config.clone(),
            stats: stats.clone(),
            settings: settings.clone(),
            metrics: metrics.clone(),
            fatal: fatal.clone(),
            crashes: crashes.clone(),
            upstreams: upstreams.clone(),
            monitor: monitor.clone(),
            hook,
            body_gate: body_gate.clone(),
        };
        let (root, join) = Actor::spawn(None, RootSupervisor, args).await?;
        let fpm_tasks = crate::fpm_status::monitor::spawn(
            monitor.clone(),
            upstreams.for_config(&config),
            config.clone(),
        );
        let handle = AgentHandle {
            inner: Arc::new(Shared {
                root,
                config: Mutex::new(config),
                stats,
                metrics,
                fatal,
                started: Instant::now(),
                alive: true.into(),
                fpm_tasks: Mutex::new(fpm_tasks),
                upstreams,
                monitor,
                settings,
                body_gate,
                fleet: Mutex::default(),
            }),
        };
        handle.spawn_sizer();
        *handle.inner.fleet.lock().expect("fleet lock") = fleet::start(&handle);
        Ok(Self {
            handle,
            join,
            crashes,
        })
    }

    /// A cloneable handle for status and commands.
    #[must_use]
    pub fn handle(&self) -> AgentHandle {
        self.handle.clone()
    }

    /// Counters of every subject.
    #[must_use]
    pub fn stats(&self) -> BTreeMap<String, StatsSnapshot> {
        self.handle.stats()
    }

    /// True when every subject consumes.
    #[must_use]
    pub(crate) fn consuming(&self) -> bool {
        self.handle
            .inner
            .stats
            .values()
            .all(|s| s.snapshot().consuming)
    }

    /// Waits until every subject consumes, or `timeout` passes.
    ///
    /// # Errors
    /// On timeout, or when the agent stopped.
    pub async fn wait_consuming(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.consuming() {
            if self.join.is_finished() {
                anyhow::bail!("agent stopped: {}", self.fatal().unwrap_or_default());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("subjects not consuming after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// The reason the agent gave up, if it did.
    #[must_use]
    pub fn fatal(&self) -> Option<String> {
        self.handle.fatal()
    }

    /// Graceful stop: no new deliveries, in-flight work finishes within `agent.shutdown_timeout`,
    /// then connections close (unfinished deliveries return to their queues).
    pub async fn drain(self) -> Option<String> {
        let timeout = self.handle.config().agent.shutdown_timeout;
        match self
            .handle
            .inner
            .root
            .call(RootMsg::Drain, Some(timeout))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(())) => {
                info!("Drained: every in-flight message finished")
            }
            Ok(_) => {
                warn!(timeout = ?timeout, "Drain timed out; unfinished messages return to their queues")
            }
            Err(e) => warn!(error = %e, "Drain not possible; stopping"),
        }
        self.stop().await
    }

    /// Immediate stop: nothing more is acked; unfinished deliveries return to their queues.
    pub async fn stop(self) -> Option<String> {
        self.handle.stop_fpm_tasks();
        if let Some((_, task)) = self.handle.inner.fleet.lock().expect("fleet lock").take() {
            task.abort();
        }
        self.handle.inner.root.stop(None);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.join).await;
        self.crashes.close();
        self.handle.inner.alive.store(false, Ordering::Relaxed);
        self.handle.fatal()
    }

    /// Applies a re-read configuration (SIGHUP): see the root supervisor's reload.
    pub fn reload(&self, config: Arc<Config>) {
        let old = self.handle.config();
        *self.handle.inner.config.lock().expect("config lock") = config.clone();
        self.handle.stop_fpm_tasks();
        *self.handle.inner.fpm_tasks.lock().expect("fpm tasks lock") =
            crate::fpm_status::monitor::spawn(
                self.handle.inner.monitor.clone(),
                self.handle.inner.upstreams.for_config(&config),
                config.clone(),
            );
        self.handle.spawn_sizer();
        let changed_rates = self.handle.reload_settings(&old, &config);
        let _ = self.handle.inner.root.cast(RootMsg::Reload(config));
        for (subject, rate) in changed_rates {
            let _ = self.handle.inner.root.cast(RootMsg::SetRate(subject, rate));
        }
    }

    /// Waits until the supervision tree stops on its own (a fatal error).
    pub(crate) async fn stopped(&mut self) -> Option<String> {
        let _ = (&mut self.join).await;
        self.crashes.close();
        self.handle.inner.alive.store(false, Ordering::Relaxed);
        self.handle.fatal()
    }
}

impl AgentHandle {
    /// The configuration the agent runs with.
    #[must_use]
    pub(crate) fn config(&self) -> Arc<Config> {
        self.inner.config.lock().expect("config lock").clone()
    }

    /// The fleet, when `admin.fleet` is on.
    #[must_use]
    pub(crate) fn fleet(&self) -> Option<Arc<Fleet>> {
        self.inner
            .fleet
            .lock()
            .expect("fleet lock")
            .as_ref()
            .map(|(f, _)| f.clone())
    }

    /// The FPM upstreams in use (none before the first subject started).
    #[must_use]
    pub(crate) fn fpm_upstreams(&self) -> Option<Arc<crate::upstreams::Upstreams>> {
        self.inner.upstreams.get()
    }

    /// The agent's metrics.
    #[must_use]
    pub fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    /// FPM's status page and the requests in flight (the autoscaler's capacity).
    #[must_use]
    pub fn monitor(&self) -> Arc<crate::fpm_status::monitor::Monitor> {
        self.inner.monitor.clone()
    }

    /// The reason the agent gave up, if it did.
    #[must_use]
    pub(crate) fn fatal(&self) -> Option<String> {
        self.inner.fatal.lock().expect("fatal lock").clone()
    }

    /// True while the supervision tree runs.
    #[must_use]
    pub fn alive(&self) -> bool {
        self.inner.alive.load(Ordering::Relaxed) && self.fatal().is_none()
    }

    /// True when the root supervisor answers within `timeout`: its loop is not stuck.
    pub(crate) async fn ping(&self, timeout: Duration) -> bool {
        matches!(
            self.inner.root.call(RootMsg::Ping, Some(timeout)).await,
            Ok(ractor::rpc::CallResult::Success(()))
        )
    }

    /// Counters of every subject.
    #[must_use]
    pub fn stats(&self) -> BTreeMap<String, StatsSnapshot> {
        self.inner
            .stats
            .iter()
            .map(|(k, v)| (k.clone(), v.snapshot()))
            .collect()
    }

    fn spawn_sizer(&self) {
        let task = tokio::spawn(sizer::run(self.clone()));
        self.inner
            .fpm_tasks
            .lock()
            .expect("fpm tasks lock")
            .push(task);
    }

    /// Every subject's counters (for the autoscaler).
    #[must_use]
    pub(crate) fn subject_stats_all(&self) -> &BTreeMap<String, Arc<SubjectStats>> {
        &self.inner.stats
    }

    fn stop_fpm_tasks(&self) {
        for task in self
            .inner
            .fpm_tasks
            .lock()
            .expect("fpm tasks lock")
            .drain(..)
        {
            task.abort();
        }
    }
}
