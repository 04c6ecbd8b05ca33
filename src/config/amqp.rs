//! The broker side of the configuration: endpoints, TLS, queue types and queue arguments.

use std::path::PathBuf;
use std::time::Duration;

use lapin::types::{AMQPValue, LongString};
use serde::{Deserialize, Deserializer};

use super::{Config, ConfigError, SubjectConfig, invalid};

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
    pub fn as_str(self) -> &'static str {
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
pub fn amqp_value(value: &toml::Value) -> Result<AMQPValue, String> {
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
pub fn check_argument(
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

pub(super) fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    super::duration(d).map(Some)
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
    pub fn amqp_urls(&self) -> Vec<&str> {
        if self.amqp.urls.is_empty() {
            self.amqp.url.as_deref().into_iter().collect()
        } else {
            self.amqp.urls.iter().map(String::as_str).collect()
        }
    }

    /// The queue type of `subject` (its own, else `amqp.queue_type`).
    #[must_use]
    pub fn queue_type(&self, subject: &SubjectConfig) -> QueueType {
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
mod tests {
    use super::*;

    const BASE: &str = "[fpm]\naddress = \"127.0.0.1:9000\"\nscript_filename = \"/srv/index.php\"\n\
                        [subjects.event]\nqueue = \"q\"\n";

    fn error_of(amqp: &str, subject: &str) -> String {
        let text = format!("[amqp]\n{amqp}\n{BASE}{subject}");
        Config::from_toml(&text, std::path::Path::new("t.toml"), |_| None)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn endpoints_tls_and_arguments_are_validated_naming_the_key() {
        let e = error_of("url = \"amqp://a\"\nurls = [\"amqp://b\"]", "");
        assert!(e.contains("amqp.urls"), "{e}");
        let e = error_of("urls = [\"amqp://a\", \"http://b\"]", "");
        assert!(e.contains("amqp.urls[1]"), "{e}");
        let e = error_of("url = \"amqp://a\"\n[amqp.tls]\nca_file = \"/x\"", "");
        assert!(e.contains("amqp.tls") && e.contains("amqps"), "{e}");
        let e = error_of(
            "url = \"amqps://a\"\n[amqp.tls]\nca_file = \"/nonexistent.pem\"",
            "",
        );
        assert!(
            e.contains("amqp.tls.ca_file") && e.contains("/nonexistent.pem"),
            "{e}"
        );
        let e = error_of(
            "url = \"amqp://a\"",
            "arguments = { \"x-delivery-limit\" = 3 }\n",
        );
        assert!(
            e.contains("subjects.event.arguments.x-delivery-limit") && e.contains("quorum"),
            "{e}"
        );
        let ok = format!(
            "[amqp]\nurls = [\"amqp://a\", \"amqp://b\"]\nqueue_type = \"quorum\"\n{BASE}arguments = {{ \"x-delivery-limit\" = 3 }}\n"
        );
        let c = Config::from_toml(&ok, std::path::Path::new("t.toml"), |_| None).unwrap();
        assert_eq!(c.amqp_urls(), ["amqp://a", "amqp://b"]);
        assert_eq!(c.amqp_url(), "amqp://a");
        assert_eq!(c.queue_type(&c.subjects["event"]), QueueType::Quorum);
    }

    #[test]
    fn integers_stay_integers_and_strings_stay_strings() {
        assert_eq!(
            amqp_value(&toml::Value::Integer(5)).unwrap(),
            AMQPValue::LongLongInt(5)
        );
        assert_eq!(
            amqp_value(&toml::Value::String("reject-publish".into())).unwrap(),
            AMQPValue::LongString("reject-publish".into())
        );
        assert_eq!(
            amqp_value(&toml::Value::Boolean(true)).unwrap(),
            AMQPValue::Boolean(true)
        );
        assert!(amqp_value(&toml::Value::Array(vec![])).is_err());
    }

    #[test]
    fn arguments_are_checked_by_name_type_and_queue_type() {
        let int = toml::Value::Integer(5);
        let text = toml::Value::String("5".into());
        assert!(check_argument("x-delivery-limit", &int, QueueType::Quorum).is_ok());
        let quoted = check_argument("x-delivery-limit", &text, QueueType::Quorum).unwrap_err();
        assert!(quoted.contains("integer"), "{quoted}");
        let classic = check_argument("x-delivery-limit", &int, QueueType::Classic).unwrap_err();
        assert!(classic.contains("only applies to quorum"), "{classic}");
        let conflict = check_argument("x-queue-type", &text, QueueType::Quorum).unwrap_err();
        assert!(conflict.contains("queue_type"), "{conflict}");
        let dlx = check_argument("x-dead-letter-exchange", &text, QueueType::Classic).unwrap_err();
        assert!(dlx.contains("conflicts"), "{dlx}");
        let unknown = check_argument("x-max-lenght", &int, QueueType::Classic).unwrap_err();
        assert!(unknown.contains("x-max-length"), "{unknown}");
        let overflow = toml::Value::String("drop-tail".into());
        assert!(check_argument("x-overflow", &overflow, QueueType::Classic).is_err());
    }
}
