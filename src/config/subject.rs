//! `[subjects.<name>]`: the queue, its pool and its exchange binding.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::rate::{Rate, RateLimit};
use super::units::duration;
use super::{Config, ConfigError, QueueType, SUBJECTS, invalid};

/// `[subjects.<name>]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectConfig {
    /// Queue to consume. Its retry queues are `<queue>.retry.<ms>ms`, its dead-letter queue `<queue>.dead`.
    pub queue: String,
    /// FPM workers (concurrent requests) for this subject.
    #[serde(default = "default_pool_size")]
    pub pool_size: u16,
    /// Lower bound for runtime resizing (SIGTTOU, `pool set`).
    #[serde(default = "default_min_pool_size")]
    pub min_pool_size: u16,
    /// Upper bound for runtime resizing (SIGTTIN, `pool set`).
    #[serde(default = "default_max_pool_size")]
    pub max_pool_size: u16,
    /// Optional exchange to bind the queue to (declared as `exchange_type`, durable).
    #[serde(default)]
    pub exchange: Option<String>,
    /// Exchange type used when declaring `exchange`: `direct`, `topic` (default), `fanout` or
    /// `headers`.
    #[serde(default)]
    pub exchange_type: ExchangeType,
    /// Binding keys of the queue on `exchange` (default: the queue name).
    #[serde(default)]
    pub binding_keys: Vec<String>,
    /// `fixed`: `pool_size`, changed only by an operator. `auto`: starts at `min_pool_size` and
    /// is sized from the backlog and FPM's capacity (needs `fpm.status_path`).
    #[serde(default)]
    pub pool_mode: PoolMode,
    /// Share of FPM's children when several auto subjects have a backlog.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Most workers an auto pool gains or loses in one step.
    #[serde(default = "default_max_shift")]
    pub max_shift: u32,
    /// Wait between two changes of an auto pool, and idle time before it shrinks.
    #[serde(default = "default_cooldown", deserialize_with = "duration")]
    pub cooldown: Duration,
    /// `classic` or `quorum` for the main, delay and dead-letter queues (default: `amqp.queue_type`).
    #[serde(default)]
    pub queue_type: Option<QueueType>,
    /// Extra arguments of the main queue (`x-max-length`, `x-delivery-limit`, ...), typed.
    #[serde(default)]
    pub arguments: BTreeMap<String, toml::Value>,
    /// One consumer at a time across all agents (strict ordering); others wait as standby.
    #[serde(default)]
    pub single_active_consumer: bool,
    /// Most messages sent to PHP in one FastCGI request (docs/batches.md). Not set (the
    /// default): as `"auto"` once a reply says the receiver takes batches
    /// (`X-Agent-Accepts-Batches`, sent by the packages in `php/`), one message per request
    /// until then. `"auto"`: sized per request from what the agent observes, up to `batch_limit`
    /// (`batch::auto`), the PHP side being known to take batches. A number: at most that many.
    #[serde(default, deserialize_with = "batch_max")]
    pub batch_max: BatchMax,
    /// With `batch_max = "auto"` or not set: the largest batch (1 to 1000, default 50).
    #[serde(default = "default_batch_limit")]
    pub batch_limit: u16,
    /// With `batch_max = "auto"` or not set: how long a batch may keep a message waiting behind the entries
    /// before it (default 100 ms); a trickle then goes one message per request.
    #[serde(default = "default_batch_latency", deserialize_with = "duration")]
    pub batch_latency: Duration,
    /// How long an idle worker may wait for a batch to fill; 0 (the default) takes what is
    /// already prefetched. Only with a fixed `batch_max`.
    #[serde(default, deserialize_with = "duration")]
    pub batch_wait: Duration,
    /// Most messages handed to PHP per second, minute or hour (`"50/s"`, `"300/m"`), per agent:
    /// messages over it wait prefetched (never requeued). None (the default): no limit.
    /// Changed at run time by `rate set` / `POST /rate/{subject}`, kept over SIGHUP unless the
    /// file's value changes.
    #[serde(default, deserialize_with = "super::rate::opt_rate")]
    pub rate_limit: Option<Rate>,
    /// Messages that may go at once after a quiet spell (the bucket's size). Default 1: the
    /// rate is held evenly.
    #[serde(default = "default_rate_burst")]
    pub rate_burst: u32,
    /// Long-wait detection (Horizon's `LongWaitDetected`): a message handed over after waiting
    /// in the queue at least this long (from its AMQP `timestamp`) marks the subject as waiting
    /// long: `amqp_agent_long_wait` is 1, `amqp_agent_long_wait_episodes_total` counts the
    /// episode, and one warning is logged; a message that waited less ends the episode.
    /// None (the default): off.
    #[serde(default, deserialize_with = "super::units::opt_duration")]
    pub wait_threshold: Option<Duration>,
}

fn default_rate_burst() -> u32 {
    1
}

impl SubjectConfig {
    /// The subject's rate limit from the file, if any.
    #[must_use]
    pub(crate) fn rate(&self) -> Option<RateLimit> {
        self.rate_limit.map(|rate| RateLimit {
            rate,
            burst: self.rate_burst,
        })
    }
}

/// How a subject's pool is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// `pool_size`, changed only by an operator.
    #[default]
    Fixed,
    /// Sized from the backlog and FPM's capacity.
    Auto,
}

/// `subjects.<name>.exchange_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    /// Routing key equals the binding key.
    Direct,
    /// Binding keys are patterns (`orders.*`); the default.
    #[default]
    Topic,
    /// Every bound queue.
    Fanout,
    /// Matching on headers.
    Headers,
}

/// `batch_max`: a fixed size, `"auto"`, or not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchMax {
    /// At most this many messages per request.
    Fixed(u16),
    /// Sized per request (`batch::auto`), at most `batch_limit`.
    Auto,
    /// Not set: [`Self::Auto`] while the receiver says it takes batches
    /// (`X-Agent-Accepts-Batches`), one message per request otherwise.
    #[default]
    AutoIfAccepted,
}

impl BatchMax {
    /// Sized by `batch::auto` (`"auto"` or not set).
    #[must_use]
    pub(crate) fn is_auto(self) -> bool {
        matches!(self, Self::Auto | Self::AutoIfAccepted)
    }
}

/// A number, or the string `"auto"`; a number out of range is kept as 0 so that validation
/// names the key.
fn batch_max<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BatchMax, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(i64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(n) => Ok(BatchMax::Fixed(u16::try_from(n).unwrap_or(0))),
        Raw::Text(t) if t == "auto" => Ok(BatchMax::Auto),
        Raw::Text(_) => Err(serde::de::Error::custom(
            "batch_max: expected a number from 1 to 1000 or \"auto\"",
        )),
    }
}

impl SubjectConfig {
    /// The most messages one request may carry: `batch_max`, or `batch_limit` with `"auto"`.
    #[must_use]
    pub(crate) fn batch_ceiling(&self) -> u16 {
        match self.batch_max {
            BatchMax::Fixed(n) => n,
            BatchMax::Auto | BatchMax::AutoIfAccepted => self.batch_limit,
        }
    }
}

fn default_batch_limit() -> u16 {
    50
}
fn default_batch_latency() -> Duration {
    Duration::from_millis(100)
}
fn default_pool_size() -> u16 {
    4
}
fn default_min_pool_size() -> u16 {
    1
}
fn default_max_pool_size() -> u16 {
    64
}
fn default_weight() -> u32 {
    1
}
fn default_max_shift() -> u32 {
    4
}
fn default_cooldown() -> Duration {
    Duration::from_secs(5)
}

impl Config {
    pub(super) fn validate_subject(
        &self,
        name: &str,
        subject: &SubjectConfig,
    ) -> Result<(), ConfigError> {
        let key = format!("subjects.{name}");
        if !SUBJECTS.contains(&name) {
            return Err(invalid(
                &key,
                format!("unknown subject; expected one of {SUBJECTS:?}"),
            ));
        }
        if let BatchMax::Fixed(n) = subject.batch_max
            && !(1..=1000).contains(&n)
        {
            return Err(invalid(
                format!("{key}.batch_max"),
                "must be 1 to 1000, or \"auto\"",
            ));
        }
        if !(1..=1000).contains(&subject.batch_limit) {
            return Err(invalid(format!("{key}.batch_limit"), "must be 1 to 1000"));
        }
        if subject.batch_latency > Duration::from_secs(60) {
            return Err(invalid(
                format!("{key}.batch_latency"),
                "must be at most 60s",
            ));
        }
        if subject.batch_max.is_auto() && !subject.batch_wait.is_zero() {
            return Err(invalid(
                format!("{key}.batch_wait"),
                "only with a fixed batch_max: \"auto\" (and batch_max not set) never waits for a batch to fill",
            ));
        }
        if subject.batch_wait > Duration::from_secs(10) {
            return Err(invalid(format!("{key}.batch_wait"), "must be at most 10s"));
        }
        if !(1..=100_000).contains(&subject.rate_burst) {
            return Err(invalid(format!("{key}.rate_burst"), "must be 1 to 100000"));
        }
        if subject.queue.is_empty() || subject.queue.len() > 200 {
            return Err(invalid(
                format!("{key}.queue"),
                "must be 1 to 200 bytes long",
            ));
        }
        if subject.pool_size == 0 || subject.pool_size > 1024 {
            return Err(invalid(
                format!("{key}.pool_size"),
                "must be between 1 and 1024",
            ));
        }
        if subject.weight == 0 || subject.max_shift == 0 {
            return Err(invalid(
                format!("{key}.weight / {key}.max_shift"),
                "must be at least 1",
            ));
        }
        if subject.pool_mode == PoolMode::Auto && self.fpm.status_path.is_none() {
            return Err(invalid(
                format!("{key}.pool_mode"),
                "`auto` needs fpm.status_path (FPM's capacity is read from its status page)",
            ));
        }
        if subject.max_pool_size > 1024 {
            return Err(invalid(
                format!("{key}.max_pool_size"),
                "must be at most 1024, as pool_size",
            ));
        }
        if subject.min_pool_size == 0 || subject.min_pool_size > subject.max_pool_size {
            return Err(invalid(
                format!("{key}.min_pool_size"),
                "must be at least 1 and at most max_pool_size",
            ));
        }
        if !(subject.min_pool_size..=subject.max_pool_size).contains(&subject.pool_size) {
            return Err(invalid(
                format!("{key}.pool_size"),
                format!(
                    "must be within min_pool_size..=max_pool_size ({}..={})",
                    subject.min_pool_size, subject.max_pool_size
                ),
            ));
        }
        if self
            .subjects
            .iter()
            .any(|(other, s)| other != name && s.queue == subject.queue)
        {
            return Err(invalid(
                format!("{key}.queue"),
                "two subjects cannot share a queue",
            ));
        }
        if subject
            .exchange
            .as_deref()
            .is_some_and(|e| e.is_empty() || e.len() > 255)
        {
            return Err(invalid(
                format!("{key}.exchange"),
                "must be 1 to 255 bytes long",
            ));
        }
        if !subject.binding_keys.is_empty() && subject.exchange.is_none() {
            return Err(invalid(format!("{key}.binding_keys"), "needs `exchange`"));
        }
        Ok(())
    }
}
