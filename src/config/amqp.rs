//! The broker side of the configuration: endpoints, TLS, queue types and queue arguments.

use std::path::PathBuf;
use std::time::Duration;

use lapin::types::{AMQPValue, LongString};
use serde::Deserialize;

use super::units::{duration, opt_duration};
use super::{Config, ConfigError, SubjectConfig, default_true, invalid};

/// `[amqp]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// AMQP URI. Overridden by `AMQP_AGENT_AMQP_URL`; may be omitted when `url_file` is set.
    #[serde(default)]
    pub url: Option<String>,
    /// A file whose (trimmed) content is the AMQP URI, for secrets kept out of the config.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Declare queues at start-up. Set to false when the topology is managed elsewhere.
    #[serde(default = "default_true")]
    pub declare: bool,
    /// Deliveries prefetched per FPM worker (`basic.qos` = pool_size × this).
    #[serde(default = "default_prefetch_per_worker")]
    pub prefetch_per_worker: u16,
    /// How long to wait for a publisher confirm on the retry / dead-letter path.
    #[serde(default = "default_confirm_timeout", deserialize_with = "duration")]
    pub confirm_timeout: Duration,
    /// Cluster endpoints: AMQP URIs of several nodes, tried from a random one on every
    /// (re)connection. Use instead of `url`.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Default `queue_type` of every subject (`classic` or `quorum`).
    #[serde(default)]
    pub queue_type: QueueType,
    /// AMQP heartbeat asked of the broker (e.g. "10s"): how soon a silent node is noticed.
    /// Default: the broker's (60s on RabbitMQ). `?heartbeat=` in a URL wins.
    #[serde(default, deserialize_with = "opt_duration")]
    pub heartbeat: Option<Duration>,
    /// TLS settings for `amqps://` URLs.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

fn default_prefetch_per_worker() -> u16 {
    8
}
fn default_confirm_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Which kind of RabbitMQ queue a subject uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// A single-node queue (the broker's default): fastest, lost with its node's disk.
    #[default]
    Classic,
    /// A Raft-replicated queue: survives the loss of a minority of the cluster's nodes.
    Quorum,
}

impl QueueType {
    /// The `x-queue-type` value.
    #[must_use]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

/// `[amqp.tls]`: trust and client identity for `amqps://` endpoints.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA(s) that signed the broker's certificate, trusted besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for brokers that verify peers. Needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM (PKCS#8, PKCS#1 or SEC1) private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Name checked against the broker's certificate (default: the host of each URL).
    #[serde(default)]
    pub server_name: Option<String>,
}

/// How the agent treats one `x-` argument of a subject's main queue.
enum Known {
    /// Accepted: an integer.
    Int,
    /// Accepted: one of these strings.
    Text(&'static [&'static str]),
    /// Accepted only on this queue type.
    Only(QueueType, &'static Known),
    /// Refused, with the reason.
    Conflict(&'static str),
}

const ARGUMENTS: &[(&str, Known)] = &[
    ("x-max-length", Known::Int),
    ("x-max-length-bytes", Known::Int),
    (
        "x-overflow",
        Known::Text(&["drop-head", "reject-publish", "reject-publish-dlx"]),
    ),
    ("x-message-ttl", Known::Int),
    ("x-expires", Known::Int),
    (
        "x-delivery-limit",
        Known::Only(QueueType::Quorum, &Known::Int),
    ),
    (
        "x-quorum-initial-group-size",
        Known::Only(QueueType::Quorum, &Known::Int),
    ),
    (
        "x-queue-leader-locator",
        Known::Only(
            QueueType::Quorum,
            &Known::Text(&["client-local", "balanced"]),
        ),
    ),
    (
        "x-max-priority",
        Known::Only(QueueType::Classic, &Known::Int),
    ),
    (
        "x-queue-mode",
        Known::Only(QueueType::Classic, &Known::Text(&["default", "lazy"])),
    ),
    (
        "x-queue-type",
        Known::Conflict(
            "set `queue_type` instead (it also applies to the delay and dead-letter queues)",
        ),
    ),
    (
        "x-single-active-consumer",
        Known::Conflict("set `single_active_consumer = true` instead"),
    ),
    (
        "x-dead-letter-exchange",
        Known::Conflict(
            "the agent dead-letters to `<queue>.dead` itself (and sets it for `x-delivery-limit`)",
        ),
    ),
    (
        "x-dead-letter-routing-key",
        Known::Conflict(
            "the agent dead-letters to `<queue>.dead` itself (and sets it for `x-delivery-limit`)",
        ),
    ),
    (
        "x-dead-letter-strategy",
        Known::Conflict("the agent sets it (at-least-once with `x-delivery-limit`)"),
    ),
];

/// Converts a TOML value to the AMQP field value sent to the broker: an integer stays an
/// integer (`long long`), a string becomes a long string, a boolean a boolean, a float a double.
///
/// # Errors
/// For arrays, tables and dates, which no queue argument takes.
pub(crate) fn amqp_value(value: &toml::Value) -> Result<AMQPValue, String> {
    match value {
        toml::Value::Integer(i) => Ok(AMQPValue::LongLongInt(*i)),
        toml::Value::String(s) => Ok(AMQPValue::LongString(LongString::from(s.as_str()))),
        toml::Value::Boolean(b) => Ok(AMQPValue::Boolean(*b)),
        toml::Value::Float(f) => Ok(AMQPValue::Double(*f)),
        other => Err(format!(
            "a {} is not a queue argument value",
            other.type_str()
        )),
    }
}

/// Checks one main-queue argument against what the agent understands.
///
/// # Errors
/// A sentence saying what is wrong (unknown name, wrong type, conflicting with the agent).
pub(crate) fn check_argument(
    name: &str,
    value: &toml::Value,
    queue_type: QueueType,
) -> Result<(), String> {
    let Some((_, known)) = ARGUMENTS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = ARGUMENTS
            .iter()
            .filter(|(_, k)| !matches!(k, Known::Conflict(_)))
            .map(|(n, _)| *n)
            .collect();
        return Err(format!(
            "unknown queue argument; the agent understands {names:?}"
        ));
    };
    check_known(known, value, queue_type)
}

fn check_known(known: &Known, value: &toml::Value, queue_type: QueueType) -> Result<(), String> {
    match known {
        Known::Conflict(why) => Err(format!("conflicts with the agent's topology: {why}")),
        Known::Only(only, inner) if *only == queue_type => check_known(inner, value, queue_type),
        Known::Only(only, _) => Err(format!(
            "only applies to {} queues (this one is {})",
            only.as_str(),
            queue_type.as_str()
        )),
        Known::Int => match value {
            toml::Value::Integer(i) if *i >= 0 => Ok(()),
            _ => Err("must be a non-negative integer (unquoted)".to_owned()),
        },
        Known::Text(allowed) => match value {
            toml::Value::String(s) if allowed.contains(&s.as_str()) => Ok(()),
            _ => Err(format!("must be one of {allowed:?}")),
        },
    }
}

fn check_file(key: &str, path: &std::path::Path) -> Result<(), ConfigError> {
    std::fs::metadata(path)
        .and_then(|m| {
            if m.is_file() {
                std::fs::File::open(path).map(drop)
            } else {
                Err(std::io::Error::other("not a file"))
            }
        })
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

impl Config {
    /// Every AMQP endpoint, in configuration order: `amqp.urls`, else `amqp.url`.
    #[must_use]
    pub(crate) fn amqp_urls(&self) -> Vec<&str> {
        if self.amqp.urls.is_empty() {
            self.amqp.url.as_deref().into_iter().collect()
        } else {
            self.amqp.urls.iter().map(String::as_str).collect()
        }
    }

    /// The queue type of `subject` (its own, else `amqp.queue_type`).
    #[must_use]
    pub(crate) fn queue_type(&self, subject: &SubjectConfig) -> QueueType {
        subject.queue_type.unwrap_or(self.amqp.queue_type)
    }

    pub(super) fn validate_amqp(&self) -> Result<(), ConfigError> {
        if self.amqp.url.is_some() && !self.amqp.urls.is_empty() {
            return Err(invalid(
                "amqp.urls",
                "set either `amqp.url` (one node) or `amqp.urls` (a cluster), not both",
            ));
        }
        let urls = self.amqp_urls();
        if urls.is_empty() {
            return Err(invalid(
                "amqp.url",
                format!(
                    "missing; set it, `amqp.urls`, `amqp.url_file`, or {ENV}",
                    ENV = super::ENV_AMQP_URL
                ),
            ));
        }
        let key = |i: usize| {
            if self.amqp.urls.is_empty() {
                "amqp.url".to_owned()
            } else {
                format!("amqp.urls[{i}]")
            }
        };
        let mut tls_urls = 0;
        for (i, url) in urls.iter().enumerate() {
            // The parser's message may quote the URI, password included: use the scrubbed one.
            if let Some(problem) = super::report::uri_problem(url) {
                return Err(invalid(key(i), problem));
            }
            if url.starts_with("amqps://") {
                tls_urls += 1;
            }
        }
        if self
            .amqp
            .heartbeat
            .is_some_and(|h| h.as_secs() > u64::from(u16::MAX))
        {
            return Err(invalid("amqp.heartbeat", "must be at most 65535s"));
        }
        // Before the TLS checks, whose absence returns early: a 0 here was once accepted
        // without `[amqp.tls]` and quietly became 1 at run time.
        if self.amqp.prefetch_per_worker == 0 {
            return Err(invalid("amqp.prefetch_per_worker", "must be at least 1"));
        }
        let Some(tls) = &self.amqp.tls else {
            return Ok(());
        };
        if tls_urls == 0 {
            return Err(invalid("amqp.tls", "set, but no URL is `amqps://`"));
        }
        for (key, file) in [
            ("amqp.tls.ca_file", &tls.ca_file),
            ("amqp.tls.cert_file", &tls.cert_file),
            ("amqp.tls.key_file", &tls.key_file),
        ] {
            if let Some(path) = file {
                check_file(key, path)?;
            }
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => Err(invalid("amqp.tls.key_file", "needed with `cert_file`")),
            (None, Some(_)) => Err(invalid("amqp.tls.cert_file", "needed with `key_file`")),
            _ => Ok(()),
        }?;
        if tls.server_name.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("amqp.tls.server_name", "must not be empty"));
        }
        Ok(())
    }

    pub(super) fn validate_subject_queue(
        &self,
        name: &str,
        subject: &SubjectConfig,
    ) -> Result<(), ConfigError> {
        let queue_type = self.queue_type(subject);
        for (arg, value) in &subject.arguments {
            let key = format!("subjects.{name}.arguments.{arg}");
            check_argument(arg, value, queue_type).map_err(|m| invalid(&key, m))?;
        }
        let limit = subject.arguments.contains_key("x-delivery-limit");
        if let (true, Some(overflow)) = (limit, subject.arguments.get("x-overflow"))
            && overflow.as_str() != Some("reject-publish")
        {
            return Err(invalid(
                format!("subjects.{name}.arguments.x-overflow"),
                "must be `reject-publish` with `x-delivery-limit`: the broker dead-letters \
                 at least once only then",
            ));
        }
        Ok(())
    }

    pub(super) fn amqp_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, subject) in &self.subjects {
            if !subject.single_active_consumer {
                continue;
            }
            if subject.max_pool_size > 1 || subject.pool_size > 1 {
                out.push(format!(
                    "subjects.{name}.single_active_consumer with a pool of more than 1 worker: \
                     messages are handled concurrently, not in order (set pool_size = \
                     min_pool_size = max_pool_size = 1)"
                ));
            }
            if self.retry.max_attempts > 1 {
                out.push(format!(
                    "subjects.{name}.single_active_consumer with retries (retry.max_attempts > 1): \
                     a retried message comes back after later ones"
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
