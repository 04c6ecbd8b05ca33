//! `[retry]` and `[limits]`: how often a message is tried, and how large it may be.

use std::time::Duration;

use serde::Deserialize;

use super::units::{duration, durations, size};
use super::{Config, ConfigError, invalid};

/// Tables and arrays nested deeper than this are cut by the (patched) AMQP parser, which skips
/// them without parsing (`vendor/amq-protocol-types/PATCHES.md`). `limits.max_header_depth` must
/// stay below it, so that a cut header is always over the limit.
pub const PARSER_MAX_DEPTH: usize = lapin::types::parsing::MAX_NESTING_DEPTH;

/// `[retry]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempt n (1-based) that failed waits `delays[n-1]` (the last one repeats).
    #[serde(default = "default_delays", deserialize_with = "durations")]
    pub delays: Vec<Duration>,
    /// Attempts before a message is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Upper bound applied to a `Retry-After` answered by PHP.
    #[serde(default = "default_max_retry_after", deserialize_with = "duration")]
    pub max_retry_after: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            delays: default_delays(),
            max_attempts: default_max_attempts(),
            max_retry_after: default_max_retry_after(),
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Bodies larger than this are dead-lettered without calling FPM.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Encoded `HTTP_X_AGENT_HEADERS` larger than this dead-letter the message.
    #[serde(default = "default_max_headers_bytes")]
    pub max_headers_bytes: usize,
    /// Nesting depth of header tables/arrays beyond which a message is dead-lettered. Must stay
    /// below the AMQP parser's cap (64), past which headers arrive cut.
    #[serde(default = "default_max_header_depth")]
    pub max_header_depth: usize,
    /// A FastCGI reply larger than this is cut off and counted as a failed attempt.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Most bytes of one batch request's body (subjects with `batch_max` > 1), every byte of
    /// every entry counted (its fields with the headers JSON, and its body): keep PHP's
    /// `post_max_size` above it. A message larger than this goes alone, where `max_body_bytes`
    /// applies.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// Memory the prefetched deliveries may take: a full prefetch window of maximum-size bodies
    /// (`max_body_bytes` × the window of every subject) over it is warned about. Bytes, or a
    /// size such as `"1GiB"` or `"512MB"`.
    #[serde(default = "default_memory_budget", deserialize_with = "size")]
    pub memory_budget: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body_bytes(),
            max_headers_bytes: default_max_headers_bytes(),
            max_header_depth: default_max_header_depth(),
            max_response_bytes: default_max_response_bytes(),
            max_batch_bytes: default_max_batch_bytes(),
            memory_budget: default_memory_budget(),
        }
    }
}

fn default_delays() -> Vec<Duration> {
    [1, 5, 30, 120, 600].map(Duration::from_secs).to_vec()
}
fn default_max_attempts() -> u32 {
    5
}
fn default_max_retry_after() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_body_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_max_headers_bytes() -> usize {
    MAX_HEADERS_PARAM
}

/// The largest `HTTP_X_AGENT_HEADERS` value one FastCGI params record can carry: php-fpm reads
/// each record's pairs on their own and refuses a record over 65,528 bytes, so the pair
/// (8 length bytes, the 20-byte name, the value) must fit in one (65,500 bytes). `fastcgi`'s
/// tests check it against the patched client's `MAX_PARAMS_RECORD`.
pub const MAX_HEADERS_PARAM: usize = 65_528 - 8 - "HTTP_X_AGENT_HEADERS".len();
fn default_max_header_depth() -> usize {
    16
}
fn default_max_batch_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_max_response_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_memory_budget() -> u64 {
    1 << 30
}

impl Config {
    pub(super) fn validate_retry(&self) -> Result<(), ConfigError> {
        if self.retry.delays.is_empty() {
            return Err(invalid("retry.delays", "needs at least one delay"));
        }
        if let Some(i) = self.retry.delays.iter().position(|d| d.as_millis() == 0) {
            return Err(invalid(
                format!("retry.delays[{i}]"),
                "must be greater than zero",
            ));
        }
        if self.retry.max_attempts == 0 {
            return Err(invalid("retry.max_attempts", "must be at least 1"));
        }
        Ok(())
    }

    pub(super) fn validate_limits(&self) -> Result<(), ConfigError> {
        if self.limits.max_headers_bytes > MAX_HEADERS_PARAM {
            return Err(invalid(
                "limits.max_headers_bytes",
                format!(
                    "must be at most {MAX_HEADERS_PARAM}: the encoded headers travel as one FastCGI param, and php-fpm refuses a params record larger than that"
                ),
            ));
        }
        if self.limits.max_batch_bytes == 0 {
            return Err(invalid(
                "limits.max_batch_bytes",
                "must be greater than zero",
            ));
        }
        if self.limits.max_body_bytes == 0 {
            return Err(invalid(
                "limits.max_body_bytes",
                "must be greater than zero",
            ));
        }
        // Deeper headers arrive cut by the AMQP parser; below its cap, a cut header is always
        // over the limit and dead-lettered, never handed to PHP with the cut in it.
        if self.limits.max_header_depth >= PARSER_MAX_DEPTH {
            return Err(invalid(
                "limits.max_header_depth",
                format!(
                    "must be below {}, the depth past which the AMQP parser cuts header tables",
                    PARSER_MAX_DEPTH
                ),
            ));
        }
        Ok(())
    }
}
