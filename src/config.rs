//! The agent's configuration: one TOML file, validated before anything starts.
//!
//! The structs here *are* the reference documentation of the file (see
//! `config/amqp-agent.example.toml`). Every table denies unknown keys so a typo
//! stops start-up with a message naming the key instead of silently using a default.
//!
//! One submodule per section of the file (`amqp`, `fpm`, `subject`, `limits` for `[retry]` and
//! `[limits]`, `agent`, `telemetry`, `admin`): its struct, its defaults and its validation.
//! `secrets` applies the environment and file overrides, `warnings` the non-fatal remarks,
//! `units` parses durations and sizes, `report` renders parse errors without quoting a value.
//! Config imports nothing of the crate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod admin;
mod agent;
mod amqp;
mod fpm;
mod limits;
mod rate;
mod report;
mod secrets;
mod subject;
mod telemetry;
mod units;
mod warnings;

pub use admin::AdminConfig;
pub use agent::AgentConfig;
pub(crate) use amqp::amqp_value;
pub use amqp::{AmqpConfig, QueueType, TlsConfig};
pub use fpm::{AddressList, FpmAddress, FpmConfig};
pub use limits::{LimitsConfig, MAX_HEADERS_PARAM, PARSER_MAX_DEPTH, RetryConfig};
pub use rate::{Rate, RateLimit};
pub use report::ParseProblem;
pub use subject::{BatchMax, ExchangeType, PoolMode, SubjectConfig};
pub use telemetry::{LogFormat, OtlpProtocol, SamplerKind, TelemetryConfig};

/// The two kinds of asynchronous work a PHP application publishes.
pub const SUBJECTS: [&str; 2] = ["event", "command"];

/// Environment variable that overrides `amqp.url`.
pub const ENV_AMQP_URL: &str = "AMQP_AGENT_AMQP_URL";
/// Environment variable that overrides `fpm.signing_secrets` (comma separated).
pub const ENV_SIGNING_SECRET: &str = "AMQP_AGENT_SIGNING_SECRET";
/// Environment variable that overrides `admin.token`.
pub const ENV_ADMIN_TOKEN: &str = "AMQP_AGENT_ADMIN_TOKEN";
/// Overrides `admin.fleet_secret`.
pub const ENV_FLEET_SECRET: &str = "AMQP_AGENT_FLEET_SECRET";
/// Environment variable that overrides `admin.listen` (containers).
pub const ENV_ADMIN_LISTEN: &str = "AMQP_AGENT_ADMIN_LISTEN";

/// A configuration problem, always naming the key (or file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path that was tried.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown or has the wrong type.
    #[error("invalid config file {path}: {problem}")]
    Parse {
        /// The path that was parsed.
        path: PathBuf,
        /// Key, line, column and message; never the source line or a value (it may be a secret).
        problem: report::ParseProblem,
    },
    /// A key is well-formed but its value is not acceptable.
    #[error("invalid value for `{key}`: {message}")]
    Invalid {
        /// The dotted key, e.g. `subjects.event.pool_size`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

fn default_true() -> bool {
    true
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Broker connection.
    pub amqp: AmqpConfig,
    /// The PHP-FPM pool that handles messages.
    pub fpm: FpmConfig,
    /// Retry schedule for failed attempts.
    #[serde(default)]
    pub retry: RetryConfig,
    /// One entry per subject (`event`, `command`); a subject left out is not consumed.
    pub subjects: BTreeMap<String, SubjectConfig>,
    /// Input limits that protect the agent and FPM from bad messages.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Process-level behaviour (shutdown, supervision).
    #[serde(default)]
    pub agent: AgentConfig,
    /// Logs and OpenTelemetry traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The admin HTTP listener (metrics, health, status, pool commands).
    #[serde(default)]
    pub admin: AdminConfig,
}

impl Config {
    /// Deliveries per worker the subject's `basic.qos` allows once it sends batches:
    /// `amqp.prefetch_per_worker`, or twice the batch ceiling when larger ([`batch_window`]: the
    /// batch a worker runs and the next one, prefetched while it runs). Memory is not bounded
    /// here but in bytes, by `broker::gate` (each subject's share of `limits.memory_budget`).
    #[must_use]
    pub(crate) fn prefetch_per_worker(&self, subject: &SubjectConfig) -> u16 {
        self.amqp
            .prefetch_per_worker
            .max(batch_window(subject.batch_ceiling()))
    }

    /// The deliveries `subject` may hold unacked at its configured `pool_size` (`basic.qos`).
    #[must_use]
    pub(crate) fn window(&self, subject: &SubjectConfig) -> u16 {
        prefetch(
            usize::from(subject.pool_size),
            self.prefetch_per_worker(subject),
        )
    }

    /// Reads, parses, applies environment overrides and validates a config file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file or key at fault.
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path, |name| std::env::var(name).ok())
    }

    /// Parses and validates config text; `env` looks up environment overrides.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key at fault.
    pub fn from_toml(
        text: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        // The parser's own message quotes the offending line, which may hold a secret.
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            problem: report::parse_problem(text, e),
        })?;
        config.resolve_secrets(&env)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_amqp()?;
        self.validate_fpm()?;
        self.validate_retry()?;
        if self.subjects.is_empty() {
            return Err(invalid(
                "subjects",
                "configure at least one of `subjects.event`, `subjects.command`",
            ));
        }
        for (name, subject) in &self.subjects {
            self.validate_subject(name, subject)?;
            self.validate_subject_queue(name, subject)?;
        }
        self.validate_observability()?;
        self.validate_agent()?;
        self.validate_limits()
    }

    /// The AMQP URI (validated present); the first endpoint when `amqp.urls` is set.
    #[must_use]
    pub(crate) fn amqp_url(&self) -> &str {
        self.amqp_urls().first().copied().unwrap_or_default()
    }

    /// True when `other` differs from `self` only in pool sizes, admin or telemetry settings —
    /// changes a running consumer of `subject` can take without reconnecting.
    #[must_use]
    pub(crate) fn same_for_consumer(&self, other: &Config, subject: &str) -> bool {
        let neutral = |c: &Config| {
            let mut s = c.subjects.get(subject).cloned();
            if let Some(s) = s.as_mut() {
                s.pool_size = 0;
                s.min_pool_size = 0;
                s.max_pool_size = 0;
                // Applied live by the consumer (`RootMsg::SetRate`), no restart.
                s.rate_limit = None;
                s.rate_burst = 0;
            }
            (
                c.amqp.clone(),
                c.fpm.clone(),
                c.retry.clone(),
                c.limits.clone(),
                s,
            )
        };
        neutral(self) == neutral(other)
    }
}

/// Deliveries per worker that keep batches of up to `ceiling` messages full: the batch the
/// worker runs and the next one. With a window of one batch per worker, a worker that frees up
/// finds only what the broker has sent again since the acks of the batches before (the other
/// workers hold the rest): in the Messenger bench at `batch_max = 50`, pool 2, requests carried
/// 31 messages on average and 3 in 10 carried 20 or fewer; with two, 46–47 (docs/performance.md,
/// "A batch's window"). 1 for one message per request.
#[must_use]
pub(crate) fn batch_window(ceiling: u16) -> u16 {
    if ceiling > 1 {
        ceiling.saturating_mul(2)
    } else {
        ceiling
    }
}

/// The `basic.qos` prefetch of a subject: pool size × `prefetch_per_worker`, at least one
/// worker's worth, at most 65535.
#[must_use]
pub(crate) fn prefetch(pool: usize, per_worker: u16) -> u16 {
    u16::try_from(pool.max(1).saturating_mul(usize::from(per_worker))).unwrap_or(u16::MAX)
}

/// Hides the password of an AMQP URI for logs and status output.
#[must_use]
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
