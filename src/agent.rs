//! The running agent as a value: what `amqp-agent run` drives, what the admin listener talks
//! to, and what tests start in-process.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use serde::Serialize;
use tracing::{info, warn};

use crate::actors::root::{RootArgs, RootMsg, RootSupervisor};
use crate::actors::stats::{StatsSnapshot, SubjectStats};
use crate::config::Config;
use crate::poison::journal::Tracker;
use crate::telemetry::metrics::Metrics;

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
    /// Subjects whose size an operator set (`pool set`, SIGTTIN, SIGTTOU): autoscaling leaves
    /// them alone until `pool auto`. Kept across reloads.
    pins: Mutex<std::collections::BTreeSet<String>>,
}

/// `/status` document.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Agent version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Ready to consume (every subject connected, consuming, not paused).
    pub ready: bool,
    /// Per subject.
    pub subjects: BTreeMap<String, SubjectStatus>,
    /// FPM's status page as last read (`state` says whether it could be); with several
    /// upstreams, the first one's.
    pub fpm: crate::fpm_status::StatusState,
    /// Every FPM upstream (`fpm.address`): breaker, requests in flight, capacity, status page.
    pub upstreams: Vec<crate::upstreams::UpstreamStatus>,
}

/// One subject in `/status`.
#[derive(Debug, Serialize)]
pub struct SubjectStatus {
    /// Queue consumed.
    pub queue: String,
    /// Pool size the operator or config asked for.
    pub target_pool_size: u64,
    /// Idle workers.
    pub idle: u64,
    /// `connected` or `disconnected`.
    pub connection: &'static str,
    /// The broker node (`host:port`) the subject is connected to.
    pub node: Option<String>,
    /// Counters and gauges.
    #[serde(flatten)]
    pub stats: StatsSnapshot,
}

impl Agent {
    /// Starts the supervision tree. Consumers connect in the background; use
    /// [`Agent::wait_consuming`] to wait until they are ready.
    ///
    /// # Errors
    /// When the in-flight journal cannot be opened (`agent.state_dir`), or the root actor
    /// cannot be spawned.
    pub async fn start(config: Arc<Config>) -> anyhow::Result<Self> {
        let crashes = Arc::new(Tracker::open(&config)?);
        let stats: BTreeMap<String, Arc<SubjectStats>> = config
            .subjects
            .iter()
            .map(|(name, s)| {
                let stats = Arc::new(SubjectStats::default());
                // An auto pool starts small and grows on evidence (Horizon starts at max).
                let start = match s.pool_mode {
                    crate::autoscale::PoolMode::Fixed => s.pool_size,
                    crate::autoscale::PoolMode::Auto => s.min_pool_size,
                };
                stats.target_pool.store(u64::from(start), Ordering::Relaxed);
                (name.clone(), stats)
            })
            .collect();
        let metrics = Arc::new(Metrics::new(stats.clone()));
        let fatal = Arc::new(Mutex::new(None));
        let args = RootArgs {
            config: config.clone(),
            stats: stats.clone(),
            metrics: metrics.clone(),
            fatal: fatal.clone(),
            crashes: crashes.clone(),
        };
        let (root, join) = Actor::spawn(None, RootSupervisor, args).await?;
        let fpm_tasks = crate::fpm_status::monitor::spawn(metrics.fpm.clone(), config.clone());
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
                pins: Mutex::default(),
            }),
        };
        handle.spawn_sizer();
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
    pub fn consuming(&self) -> bool {
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
        self.handle.inner.root.stop(None);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.join).await;
        self.crashes.close();
        self.handle.inner.alive.store(false, Ordering::Relaxed);
        self.handle.fatal()
    }

    /// Applies a re-read configuration (SIGHUP): see the root supervisor's reload.
    pub fn reload(&self, config: Arc<Config>) {
        *self.handle.inner.config.lock().expect("config lock") = config.clone();
        self.handle.stop_fpm_tasks();
        *self.handle.inner.fpm_tasks.lock().expect("fpm tasks lock") =
            crate::fpm_status::monitor::spawn(
                self.handle.inner.metrics.fpm.clone(),
                config.clone(),
            );
        self.handle.spawn_sizer();
        let _ = self.handle.inner.root.cast(RootMsg::Reload(config));
    }

    /// Waits until the supervision tree stops on its own (a fatal error).
    pub async fn stopped(&mut self) -> Option<String> {
        let _ = (&mut self.join).await;
        self.crashes.close();
        self.handle.inner.alive.store(false, Ordering::Relaxed);
        self.handle.fatal()
    }
}

impl AgentHandle {
    /// The configuration the agent runs with.
    #[must_use]
    pub fn config(&self) -> Arc<Config> {
        self.inner.config.lock().expect("config lock").clone()
    }

    /// The metrics registry.
    #[must_use]
    pub fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    /// The reason the agent gave up, if it did.
    #[must_use]
    pub fn fatal(&self) -> Option<String> {
        self.inner.fatal.lock().expect("fatal lock").clone()
    }

    /// True while the supervision tree runs.
    #[must_use]
    pub fn alive(&self) -> bool {
        self.inner.alive.load(Ordering::Relaxed) && self.fatal().is_none()
    }

    /// True when the root supervisor answers within `timeout`: its loop is not stuck.
    pub async fn ping(&self, timeout: Duration) -> bool {
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

    /// Why the agent is not ready (empty: ready).
    #[must_use]
    pub fn not_ready(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.alive() {
            problems.push("supervision tree stopped".to_owned());
        }
        for (name, stats) in self.stats() {
            if !stats.consuming {
                problems.push(format!("{name}: not connected to RabbitMQ"));
            } else if stats.paused {
                problems.push(format!(
                    "{name}: paused (FPM unreachable or operator pause)"
                ));
            }
        }
        problems
    }

    /// The `/status` document.
    #[must_use]
    pub fn status(&self) -> Status {
        let config = self.config();
        let subjects = self
            .inner
            .stats
            .iter()
            .map(|(name, stats)| {
                let s = stats.snapshot();
                let status = SubjectStatus {
                    queue: config
                        .subjects
                        .get(name)
                        .map_or_else(String::new, |s| s.queue.clone()),
                    target_pool_size: stats.target_pool.load(Ordering::Relaxed),
                    idle: s.pool_size.saturating_sub(s.busy),
                    connection: if s.consuming {
                        "connected"
                    } else {
                        "disconnected"
                    },
                    node: stats.node(),
                    stats: s,
                };
                (name.clone(), status)
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.inner.started.elapsed().as_secs(),
            ready: self.not_ready().is_empty(),
            subjects,
            fpm: self.inner.metrics.fpm.snapshot().shown,
            upstreams: self.upstreams(),
        }
    }

    fn upstreams(&self) -> Vec<crate::upstreams::UpstreamStatus> {
        let monitor = &self.inner.metrics.fpm;
        let reads: Vec<_> = monitor.snapshots().into_iter().map(|s| s.shown).collect();
        monitor
            .upstreams()
            .map(|u| u.status(&reads))
            .unwrap_or_default()
    }

    fn spawn_sizer(&self) {
        let task = tokio::spawn(crate::sizer::run(self.clone()));
        self.inner
            .fpm_tasks
            .lock()
            .expect("fpm tasks lock")
            .push(task);
    }

    /// Every subject's counters (for the autoscaler).
    #[must_use]
    pub fn subject_stats_all(&self) -> &BTreeMap<String, Arc<SubjectStats>> {
        &self.inner.stats
    }

    /// Subjects pinned by an operator.
    #[must_use]
    pub fn pins(&self) -> std::collections::BTreeSet<String> {
        self.inner.pins.lock().expect("pins lock").clone()
    }

    /// Releases an operator's pin: the subject's pool is sized by the autoscaler again.
    ///
    /// # Errors
    /// Unknown subject, or a subject with `pool_mode = "fixed"`.
    pub fn pool_auto(&self, subject: &str) -> anyhow::Result<()> {
        self.subject_stats(subject)?;
        let config = self.config();
        if config.subjects[subject].pool_mode != crate::autoscale::PoolMode::Auto {
            anyhow::bail!("`{subject}` has pool_mode = \"fixed\" (subjects.{subject}.pool_mode)");
        }
        self.inner.pins.lock().expect("pins lock").remove(subject);
        info!(subject, "Pool released to the autoscaler");
        Ok(())
    }

    /// Resizes without pinning (the autoscaler's path; bounds are the caller's).
    pub fn resize(&self, subject: &str, size: usize) {
        if let Some(stats) = self.inner.stats.get(subject) {
            stats.target_pool.store(size as u64, Ordering::Relaxed);
            let _ = self
                .inner
                .root
                .cast(RootMsg::Resize(subject.to_owned(), size));
        }
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

    fn subject_stats(&self, subject: &str) -> anyhow::Result<&Arc<SubjectStats>> {
        self.inner
            .stats
            .get(subject)
            .ok_or_else(|| anyhow::anyhow!("unknown subject `{subject}`"))
    }

    /// Sets a subject's pool size (within `min_pool_size..=max_pool_size`).
    ///
    /// # Errors
    /// Unknown subject or size out of bounds.
    pub fn set_pool(&self, subject: &str, size: usize) -> anyhow::Result<usize> {
        let stats = self.subject_stats(subject)?;
        let config = self.config();
        let cfg = config
            .subjects
            .get(subject)
            .ok_or_else(|| anyhow::anyhow!("unknown subject `{subject}`"))?;
        let (min, max) = (
            usize::from(cfg.min_pool_size),
            usize::from(cfg.max_pool_size),
        );
        if !(min..=max).contains(&size) {
            anyhow::bail!(
                "pool size {size} for `{subject}` is outside {min}..={max} (subjects.{subject}.min_pool_size / max_pool_size)"
            );
        }
        stats.target_pool.store(size as u64, Ordering::Relaxed);
        self.inner
            .root
            .cast(RootMsg::Resize(subject.to_owned(), size))?;
        if cfg.pool_mode == crate::autoscale::PoolMode::Auto {
            self.inner
                .pins
                .lock()
                .expect("pins lock")
                .insert(subject.to_owned());
        }
        info!(subject, size, "Pool resized");
        Ok(size)
    }

    /// Grows (`delta` > 0) or shrinks every pool by `delta`, clamped to each subject's bounds.
    pub fn step_pools(&self, delta: i64) {
        let config = self.config();
        for (name, stats) in &self.inner.stats {
            let Some(cfg) = config.subjects.get(name) else {
                continue;
            };
            let current = stats.target_pool.load(Ordering::Relaxed) as i64;
            let next =
                (current + delta).clamp(i64::from(cfg.min_pool_size), i64::from(cfg.max_pool_size));
            if next != current {
                let _ = self.set_pool(name, next as usize);
            }
        }
    }

    /// Pauses or resumes consumption of a subject (operator command).
    ///
    /// # Errors
    /// Unknown subject.
    pub fn set_paused(&self, subject: &str, paused: bool) -> anyhow::Result<()> {
        self.subject_stats(subject)?;
        self.inner
            .root
            .cast(RootMsg::SetPaused(subject.to_owned(), paused))?;
        Ok(())
    }
}
