//! The running agent as a value: what `amqp-agent run` drives, and what tests start in-process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tracing::{info, warn};

use crate::actors::root::{RootArgs, RootMsg, RootSupervisor};
use crate::actors::stats::{StatsSnapshot, SubjectStats};
use crate::config::Config;

/// A started agent.
pub struct Agent {
    root: ActorRef<RootMsg>,
    handle: tokio::task::JoinHandle<()>,
    fatal: Arc<Mutex<Option<String>>>,
    stats: BTreeMap<String, Arc<SubjectStats>>,
    config: Arc<Config>,
}

impl Agent {
    /// Starts the supervision tree. Consumers connect in the background; use
    /// [`Agent::wait_consuming`] to wait until they are ready.
    ///
    /// # Errors
    /// When the root actor cannot be spawned.
    pub async fn start(config: Arc<Config>) -> anyhow::Result<Self> {
        let stats: BTreeMap<String, Arc<SubjectStats>> = config
            .subjects
            .keys()
            .map(|name| (name.clone(), Arc::default()))
            .collect();
        let fatal = Arc::new(Mutex::new(None));
        let args = RootArgs {
            config: config.clone(),
            stats: stats.clone(),
            fatal: fatal.clone(),
        };
        let (root, handle) = Actor::spawn(None, RootSupervisor, args).await?;
        Ok(Self {
            root,
            handle,
            fatal,
            stats,
            config,
        })
    }

    /// Counters of every subject.
    #[must_use]
    pub fn stats(&self) -> BTreeMap<String, StatsSnapshot> {
        self.stats
            .iter()
            .map(|(k, v)| (k.clone(), v.snapshot()))
            .collect()
    }

    /// True when every subject is connected and consuming.
    #[must_use]
    pub fn consuming(&self) -> bool {
        self.stats.values().all(|s| s.snapshot().consuming)
    }

    /// Waits until every subject consumes, or `timeout` passes.
    ///
    /// # Errors
    /// On timeout, or when the agent stopped.
    pub async fn wait_consuming(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.consuming() {
            if self.handle.is_finished() {
                anyhow::bail!("agent stopped: {}", self.fatal().unwrap_or_default());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("subjects not consuming after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Resizes one subject's pool.
    pub fn resize(&self, subject: &str, size: usize) {
        let _ = self.root.cast(RootMsg::Resize(subject.to_owned(), size));
    }

    /// The reason the agent gave up, if it did.
    #[must_use]
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().expect("fatal lock").clone()
    }

    /// True once the supervision tree has stopped (gave up, or was stopped).
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.handle.is_finished()
    }

    /// Graceful stop: no new deliveries, in-flight work finishes within `agent.shutdown_timeout`,
    /// then connections close (unfinished deliveries return to their queues).
    pub async fn drain(self) -> Option<String> {
        let timeout = self.config.agent.shutdown_timeout;
        match self.root.call(RootMsg::Drain, Some(timeout)).await {
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
        self.root.stop(None);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
        self.fatal.lock().expect("fatal lock").clone()
    }

    /// Waits until the supervision tree stops on its own (a fatal error).
    pub async fn stopped(&mut self) -> Option<String> {
        let _ = (&mut self.handle).await;
        self.fatal()
    }
}
