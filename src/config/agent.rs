//! `[agent]`: process-level behaviour (shutdown, supervision, threads, crash-loop protection).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::units::duration;
use super::{Config, ConfigError, invalid};

/// `[agent]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[serde(default = "default_shutdown_timeout", deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// First delay before restarting a failed actor (doubles up to `restart_backoff_max`).
    #[serde(default = "default_restart_backoff", deserialize_with = "duration")]
    pub restart_backoff: Duration,
    /// Cap on the restart delay.
    #[serde(default = "default_restart_backoff_max", deserialize_with = "duration")]
    pub restart_backoff_max: Duration,
    /// Restart intensity: more crashes of one consumer than this within `restart_window` make
    /// the process exit non-zero (for systemd/supervisord to restart it).
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// Window of the restart intensity; a consumer that ran this long gets a fresh backoff.
    #[serde(default = "default_restart_window", deserialize_with = "duration")]
    pub restart_window: Duration,
    /// Async runtime threads: 1 runs everything on one thread (least CPU per message: no
    /// cross-thread wake-ups), n > 1 a work-stealing pool of n, 0 one per core. Read at start.
    #[serde(default = "default_worker_threads")]
    pub worker_threads: usize,
    /// Crash-loop protection: a message that was in flight each time the agent process died
    /// (kill -9, OOM kill, abort) this many times is dead-lettered with reason `poison` on its
    /// next delivery, without reaching FPM. 0 turns it off. Read at start.
    #[serde(default = "default_poison_after")]
    pub poison_after: u32,
    /// Where crash-loop protection keeps its small in-flight journal (one file per agent; the
    /// systemd unit's `StateDirectory=amqp-agent`). Read at start.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout: default_shutdown_timeout(),
            restart_backoff: default_restart_backoff(),
            restart_backoff_max: default_restart_backoff_max(),
            max_restarts: default_max_restarts(),
            restart_window: default_restart_window(),
            worker_threads: default_worker_threads(),
            poison_after: default_poison_after(),
            state_dir: default_state_dir(),
        }
    }
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_restart_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_restart_backoff_max() -> Duration {
    Duration::from_secs(10)
}
fn default_max_restarts() -> u32 {
    10
}
fn default_worker_threads() -> usize {
    1
}
fn default_restart_window() -> Duration {
    Duration::from_secs(60)
}
fn default_poison_after() -> u32 {
    2
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/amqp-agent")
}

impl Config {
    pub(super) fn validate_agent(&self) -> Result<(), ConfigError> {
        if self.agent.poison_after > 0 && !self.agent.state_dir.is_absolute() {
            return Err(invalid("agent.state_dir", "must be an absolute path"));
        }
        Ok(())
    }
}
