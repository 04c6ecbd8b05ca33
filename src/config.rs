//! The agent's configuration: one TOML file, validated before anything starts.
//!
//! The structs here *are* the reference documentation of the file (see
//! `config/amqp-agent.example.toml`). Every table denies unknown keys so a typo
//! stops start-up with a message naming the key instead of silently using a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

mod amqp;
pub use amqp::{QueueType, TlsConfig, amqp_value, check_argument};

/// The two kinds of asynchronous work a PHP application publishes.
pub const SUBJECTS: [&str; 2] = ["event", "command"];

/// Environment variable that overrides `amqp.url`.
pub const ENV_AMQP_URL: &str = "AMQP_AGENT_AMQP_URL";
/// Environment variable that overrides `fpm.signing_secrets` (comma separated).
pub const ENV_SIGNING_SECRET: &str = "AMQP_AGENT_SIGNING_SECRET";
/// Environment variable that overrides `admin.token`.
pub const ENV_ADMIN_TOKEN: &str = "AMQP_AGENT_ADMIN_TOKEN";
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

/// `[telemetry]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Log format: `text` (default) or `json`. `--log-format` overrides it.
    #[serde(default)]
    pub log_format: Option<String>,
    /// Log filter, as `RUST_LOG` (default `info`); `RUST_LOG` overrides it. Applied on SIGHUP.
    #[serde(default)]
    pub log_level: Option<String>,
    /// OTLP endpoint for traces. Tracing is off unless this or `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `grpc` (default) or `http/protobuf`. `OTEL_EXPORTER_OTLP_PROTOCOL` overrides it.
    #[serde(default)]
    pub otlp_protocol: Option<String>,
    /// `service.name` of the spans (default `amqp-agent`). `OTEL_SERVICE_NAME` overrides it.
    #[serde(default)]
    pub service_name: Option<String>,
    /// Sampler, as `OTEL_TRACES_SAMPLER` (default `parentbased_always_on`); the variable overrides it.
    #[serde(default)]
    pub sampler: Option<String>,
    /// Sampler argument (ratio), as `OTEL_TRACES_SAMPLER_ARG`.
    #[serde(default)]
    pub sampler_arg: Option<f64>,
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` of the admin HTTP listener; empty string turns it off.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Bearer token that every command (POST) must carry, on any address; reads (GET) never
    /// need it. At least 16 bytes. Without it, commands are refused unless
    /// `allow_unauthenticated_commands` is set. `AMQP_AGENT_ADMIN_TOKEN` overrides it.
    #[serde(default)]
    pub token: Option<String>,
    /// Development only: accept commands without a token when none is configured. Refused on a
    /// listener that is not on loopback; `check-config` warns about it.
    #[serde(default)]
    pub allow_unauthenticated_commands: bool,
    /// Most admin connections open at once. One more is answered `503` and closed at once, so
    /// the listener never holds more file descriptors than this.
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: usize,
    /// A connection must send its complete request head within this time, else it is closed.
    #[serde(
        default = "default_admin_header_timeout",
        deserialize_with = "duration"
    )]
    pub header_timeout: Duration,
    /// Longest time a request may take once its head has arrived (handler and response).
    #[serde(
        default = "default_admin_request_timeout",
        deserialize_with = "duration"
    )]
    pub request_timeout: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token: None,
            allow_unauthenticated_commands: false,
            max_connections: default_admin_max_connections(),
            header_timeout: default_admin_header_timeout(),
            request_timeout: default_admin_request_timeout(),
        }
    }
}

fn default_admin_max_connections() -> usize {
    64
}
fn default_admin_header_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_admin_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_admin_listen() -> String {
    "127.0.0.1:9466".to_owned()
}

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
    #[serde(default, deserialize_with = "amqp::opt_duration")]
    pub heartbeat: Option<Duration>,
    /// TLS settings for `amqps://` URLs.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// `[fpm]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FpmConfig {
    /// `host:port` for TCP, or `unix:/path/to.sock`; or a list of them (several upstreams:
    /// workers are spread over the healthy ones, docs/fpm-capacity.md).
    pub address: AddressList,
    /// Absolute path of the PHP front controller, as FPM sees it.
    pub script_filename: String,
    /// `REQUEST_URI` sent to PHP; `{subject}` is replaced by the subject name.
    #[serde(default = "default_request_uri")]
    pub request_uri: String,
    /// `DOCUMENT_ROOT`; defaults to the directory of `script_filename`.
    #[serde(default)]
    pub document_root: Option<String>,
    /// `SERVER_NAME` sent to PHP (some frameworks build URLs from it).
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Upper bound for one FastCGI request, connect to last byte.
    #[serde(default = "default_fpm_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// HMAC secrets. The first signs; all are sent during a rotation.
    #[serde(default)]
    pub signing_secrets: Vec<String>,
    /// A file with one secret per line, used in addition to `signing_secrets`.
    #[serde(default)]
    pub signing_secrets_file: Option<PathBuf>,
    /// Success requires the response header `X-Agent-Ack: 1` besides a 2xx status.
    #[serde(default = "default_true")]
    pub require_ack_header: bool,
    /// FPM's status page, as the pool's `pm.status_path` (e.g. `/fpm-status`); unset: not read.
    #[serde(default)]
    pub status_path: Option<String>,
    /// How often the status page is read (on a FastCGI connection of its own).
    #[serde(default = "default_status_interval", deserialize_with = "duration")]
    pub status_interval: Duration,
    /// A request running longer than this is logged once and counted (default: `timeout` / 2).
    #[serde(default, deserialize_with = "opt_duration")]
    pub slow_after: Option<Duration>,
    /// The pool's `pm.max_children`, when the status page cannot tell it (`pm = dynamic` or
    /// `ondemand`); with `pm = static` it is read from the status page.
    #[serde(default)]
    pub max_children: Option<u32>,
    /// How long an FPM connection no request uses stays open ("0s": closed after every
    /// request). php-fpm pins a child to an open connection, so an idle one starves others.
    #[serde(default = "default_keep_alive_idle", deserialize_with = "duration")]
    pub keep_alive_idle: Duration,
    /// Longest time an FPM connection is kept across requests; it is then closed after its
    /// request, so that the child serves the connections waiting in FPM's backlog in turn.
    #[serde(default = "default_keep_alive_max", deserialize_with = "duration")]
    pub keep_alive_max: Duration,
}

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

/// `[subjects.<name>]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectConfig {
    /// Queue to consume. Its retry queues are `<queue>.retry.<ms>`, its dead-letter queue `<queue>.dead`.
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
    /// Exchange type used when declaring `exchange`.
    #[serde(default = "default_exchange_type")]
    pub exchange_type: String,
    /// Binding keys of the queue on `exchange` (default: the queue name).
    #[serde(default)]
    pub binding_keys: Vec<String>,
    /// `fixed`: `pool_size`, changed only by an operator. `auto`: starts at `min_pool_size` and
    /// is sized from the backlog and FPM's capacity (needs `fpm.status_path`).
    #[serde(default)]
    pub pool_mode: crate::autoscale::PoolMode,
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
    /// Most messages sent to PHP in one FastCGI request (docs/batches.md). 1 (the default): one
    /// request per message. The PHP side must understand batches.
    #[serde(default = "default_batch_max")]
    pub batch_max: u16,
    /// How long an idle worker may wait for a batch to fill; 0 (the default) takes what is
    /// already prefetched.
    #[serde(default, deserialize_with = "duration")]
    pub batch_wait: Duration,
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
    /// Most body bytes in one batch request (subjects with `batch_max` > 1); a message larger
    /// than this goes alone, where `max_body_bytes` applies.
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

fn default_true() -> bool {
    true
}
fn default_prefetch_per_worker() -> u16 {
    8
}
fn default_confirm_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_request_uri() -> String {
    "/_agent/messages/{subject}".to_owned()
}
fn default_server_name() -> String {
    "amqp-agent".to_owned()
}
fn default_fpm_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_keep_alive_idle() -> Duration {
    Duration::from_millis(100)
}
fn default_keep_alive_max() -> Duration {
    Duration::from_secs(1)
}
fn default_status_interval() -> Duration {
    Duration::from_secs(2)
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
fn default_pool_size() -> u16 {
    4
}
fn default_min_pool_size() -> u16 {
    1
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
fn default_max_pool_size() -> u16 {
    64
}
fn default_exchange_type() -> String {
    "topic".to_owned()
}
fn default_max_body_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_max_headers_bytes() -> usize {
    64 * 1024
}
fn default_max_header_depth() -> usize {
    16
}
fn default_batch_max() -> u16 {
    1
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

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write e.g. \"500ms\", \"30s\", \"2m\""
        ))
    })
}

/// A size: a number of bytes, or a string with a unit (`B`, `KB`, `MB`, `GB`, `KiB`, `MiB`,
/// `GiB`).
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    let text = match Size::deserialize(d)? {
        Size::Bytes(n) => return Ok(n),
        Size::Text(text) => text,
    };
    let digits = text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = text.trim()[digits.len()..].to_ascii_lowercase();
    let scale: u64 = match unit.as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => 0,
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|_| scale > 0)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{text}` is not a size; write bytes, or e.g. \"512MiB\", \"2GiB\""
            ))
        })
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts
        .iter()
        .map(|text| {
            humantime::parse_duration(text).map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a duration ({e}); write e.g. \"500ms\", \"30s\", \"2m\""
                ))
            })
        })
        .collect()
}

/// `fpm.address`: one address (a string) or several (a list), as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressList(pub Vec<String>);

impl<'de> Deserialize<'de> for AddressList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        match OneOrMany::deserialize(d) {
            Ok(OneOrMany::One(a)) => Ok(Self(vec![a])),
            Ok(OneOrMany::Many(list)) => Ok(Self(list)),
            Err(_) => Err(serde::de::Error::custom(
                "expected an address (\"host:port\" or \"unix:/path\") or a list of them",
            )),
        }
    }
}

impl std::fmt::Display for AddressList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

/// Where PHP-FPM listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FpmAddress {
    /// `host:port`
    Tcp(String),
    /// `unix:/path`
    Unix(PathBuf),
}

impl FpmAddress {
    /// Parses `host:port` or `unix:/path`.
    ///
    /// # Errors
    /// When the address has neither form.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a socket path".into());
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        match text.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Self::Tcp(text.to_owned()))
            }
            _ => Err(format!("`{text}` is neither `host:port` nor `unix:/path`")),
        }
    }
}

impl std::fmt::Display for FpmAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => f.write_str(addr),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Config {
    /// Reads, parses, applies environment overrides and validates a config file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file or key at fault.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
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

    fn resolve_secrets(
        &mut self,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if let Some(url) = env(ENV_AMQP_URL).filter(|u| !u.is_empty()) {
            if let Some(problem) = report::uri_problem(&url) {
                return Err(invalid("amqp.url", format!("{ENV_AMQP_URL}: {problem}")));
            }
            self.amqp.url = Some(url);
            self.amqp.urls.clear();
        } else if let (None, Some(file)) = (&self.amqp.url, &self.amqp.url_file) {
            let url = std::fs::read_to_string(file).map_err(|e| {
                invalid(
                    "amqp.url_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            if let Some(problem) = report::uri_problem(url.trim()) {
                return Err(invalid(
                    "amqp.url_file",
                    format!("{}: {problem}", file.display()),
                ));
            }
            self.amqp.url = Some(url.trim().to_owned());
        }
        if let Some(token) = env(ENV_ADMIN_TOKEN).filter(|t| !t.is_empty()) {
            self.admin.token = Some(token);
        }
        if self
            .admin
            .token
            .as_deref()
            .is_some_and(|t| report::PLACEHOLDER_SECRETS.contains(&t))
        {
            return Err(invalid(
                "admin.token",
                "is the example file's placeholder; set a long random token of your own",
            ));
        }
        if let Some(listen) = env(ENV_ADMIN_LISTEN) {
            self.admin.listen = listen;
        }
        if let Some(secrets) = env(ENV_SIGNING_SECRET).filter(|s| !s.is_empty()) {
            self.fpm.signing_secrets = secrets
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            for (i, secret) in self.fpm.signing_secrets.iter().enumerate() {
                if let Some(problem) = report::secret_problem(secret) {
                    let n = i + 1;
                    return Err(invalid(
                        "fpm.signing_secrets",
                        format!("{ENV_SIGNING_SECRET}: secret {n} {problem}"),
                    ));
                }
            }
        }
        if let Some(file) = &self.fpm.signing_secrets_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                invalid(
                    "fpm.signing_secrets_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            for (i, line) in text.lines().enumerate() {
                let secret = line.trim();
                if secret.is_empty() {
                    continue;
                }
                if let Some(problem) = report::secret_problem(secret) {
                    let n = i + 1;
                    return Err(invalid(
                        "fpm.signing_secrets_file",
                        format!("{}: the secret on line {n} {problem}", file.display()),
                    ));
                }
                self.fpm.signing_secrets.push(secret.to_owned());
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_amqp()?;
        if self.amqp.prefetch_per_worker == 0 {
            return Err(invalid("amqp.prefetch_per_worker", "must be at least 1"));
        }
        if self.fpm.address.0.is_empty() {
            return Err(invalid("fpm.address", "needs at least one address"));
        }
        for (i, address) in self.fpm.address.0.iter().enumerate() {
            FpmAddress::parse(address).map_err(|m| invalid("fpm.address", m))?;
            if self.fpm.address.0[..i].contains(address) {
                return Err(invalid(
                    "fpm.address",
                    format!("`{address}` is listed twice"),
                ));
            }
        }
        if !self.fpm.script_filename.starts_with('/') {
            return Err(invalid("fpm.script_filename", "must be an absolute path"));
        }
        if !self.fpm.request_uri.starts_with('/') {
            return Err(invalid("fpm.request_uri", "must start with `/`"));
        }
        if self.fpm.timeout.is_zero() {
            return Err(invalid("fpm.timeout", "must be greater than zero"));
        }
        self.validate_fpm_status()?;
        for (i, secret) in self.fpm.signing_secrets.iter().enumerate() {
            if let Some(problem) = report::secret_problem(secret) {
                return Err(invalid(format!("fpm.signing_secrets[{i}]"), problem));
            }
        }
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
        if self.agent.poison_after > 0 && !self.agent.state_dir.is_absolute() {
            return Err(invalid("agent.state_dir", "must be an absolute path"));
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
        if self.limits.max_header_depth >= crate::contract::PARSER_MAX_DEPTH {
            return Err(invalid(
                "limits.max_header_depth",
                format!(
                    "must be below {}, the depth past which the AMQP parser cuts header tables",
                    crate::contract::PARSER_MAX_DEPTH
                ),
            ));
        }
        Ok(())
    }

    fn validate_fpm_status(&self) -> Result<(), ConfigError> {
        if self
            .fpm
            .status_path
            .as_deref()
            .is_some_and(|p| !p.starts_with('/') || p.contains(['?', '\r', '\n', '\0']))
        {
            return Err(invalid(
                "fpm.status_path",
                "must start with `/` and hold no query (as the pool's pm.status_path)",
            ));
        }
        if self.fpm.status_interval < Duration::from_millis(100) {
            return Err(invalid("fpm.status_interval", "must be at least 100ms"));
        }
        if self.fpm.slow_after.is_some_and(|d| d.is_zero()) {
            return Err(invalid("fpm.slow_after", "must be greater than zero"));
        }
        if self.fpm.max_children == Some(0) {
            return Err(invalid("fpm.max_children", "must be at least 1"));
        }
        Ok(())
    }

    /// `fpm.slow_after`, or half of `fpm.timeout`.
    #[must_use]
    pub fn slow_after(&self) -> Duration {
        self.fpm.slow_after.unwrap_or(self.fpm.timeout / 2)
    }

    fn validate_observability(&self) -> Result<(), ConfigError> {
        let t = &self.telemetry;
        if t.log_format
            .as_deref()
            .is_some_and(|f| !["text", "json"].contains(&f))
        {
            return Err(invalid("telemetry.log_format", "must be `text` or `json`"));
        }
        if let Some(level) = t
            .log_level
            .as_deref()
            .filter(|l| !crate::telemetry::valid_log_level(l))
        {
            return Err(invalid(
                "telemetry.log_level",
                format!(
                    "`{level}` is not a log filter (e.g. `info`, `debug`, `warn,amqp_agent=debug`)"
                ),
            ));
        }
        if t.otlp_protocol
            .as_deref()
            .is_some_and(|p| !["grpc", "http/protobuf"].contains(&p))
        {
            return Err(invalid(
                "telemetry.otlp_protocol",
                "must be `grpc` or `http/protobuf`",
            ));
        }
        if let Some(sampler) = t
            .sampler
            .as_deref()
            .filter(|s| crate::telemetry::sampler(s, t.sampler_arg).is_none())
        {
            return Err(invalid(
                "telemetry.sampler",
                format!("unknown sampler `{sampler}`"),
            ));
        }
        if self.admin.listen.is_empty() {
            return Ok(());
        }
        let addr: std::net::SocketAddr = self.admin.listen.parse().map_err(|_| {
            invalid(
                "admin.listen",
                format!("`{}` is not `ip:port`", self.admin.listen),
            )
        })?;
        self.validate_admin(addr.ip().is_loopback())
    }

    fn validate_admin(&self, loopback: bool) -> Result<(), ConfigError> {
        let a = &self.admin;
        if a.token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(invalid("admin.token", "must be at least 16 bytes"));
        }
        if !loopback && a.token.is_none() {
            return Err(invalid(
                "admin.token",
                "required when admin.listen is not a loopback address",
            ));
        }
        if !loopback && a.allow_unauthenticated_commands {
            return Err(invalid(
                "admin.allow_unauthenticated_commands",
                "only allowed when admin.listen is a loopback address",
            ));
        }
        if !(1..=1024).contains(&a.max_connections) {
            return Err(invalid("admin.max_connections", "must be 1 to 1024"));
        }
        for (key, value) in [
            ("admin.header_timeout", a.header_timeout),
            ("admin.request_timeout", a.request_timeout),
        ] {
            if value.is_zero() || value > Duration::from_secs(300) {
                return Err(invalid(key, "must be above 0 and at most 5m"));
            }
        }
        Ok(())
    }

    fn validate_subject(&self, name: &str, subject: &SubjectConfig) -> Result<(), ConfigError> {
        let key = format!("subjects.{name}");
        if !SUBJECTS.contains(&name) {
            return Err(invalid(
                &key,
                format!("unknown subject; expected one of {SUBJECTS:?}"),
            ));
        }
        if !(1..=1000).contains(&subject.batch_max) {
            return Err(invalid(format!("{key}.batch_max"), "must be 1 to 1000"));
        }
        if subject.batch_wait > Duration::from_secs(10) {
            return Err(invalid(format!("{key}.batch_wait"), "must be at most 10s"));
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
        if subject.pool_mode == crate::autoscale::PoolMode::Auto && self.fpm.status_path.is_none() {
            return Err(invalid(
                format!("{key}.pool_mode"),
                "`auto` needs fpm.status_path (FPM's capacity is read from its status page)",
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
        if !["direct", "topic", "fanout", "headers"].contains(&subject.exchange_type.as_str()) {
            return Err(invalid(
                format!("{key}.exchange_type"),
                "must be direct, topic, fanout or headers",
            ));
        }
        if !subject.binding_keys.is_empty() && subject.exchange.is_none() {
            return Err(invalid(format!("{key}.binding_keys"), "needs `exchange`"));
        }
        Ok(())
    }

    /// The AMQP URI (validated present); the first endpoint when `amqp.urls` is set.
    #[must_use]
    pub fn amqp_url(&self) -> &str {
        self.amqp_urls().first().copied().unwrap_or_default()
    }

    /// The parsed FPM addresses (validated): one per upstream, in the order written.
    #[must_use]
    pub fn fpm_addresses(&self) -> Vec<FpmAddress> {
        self.fpm
            .address
            .0
            .iter()
            .map(|a| FpmAddress::parse(a).expect("validated at load"))
            .collect()
    }

    /// True when `other` differs from `self` only in pool sizes, admin or telemetry settings —
    /// changes a running consumer of `subject` can take without reconnecting.
    #[must_use]
    pub fn same_for_consumer(&self, other: &Config, subject: &str) -> bool {
        let neutral = |c: &Config| {
            let mut s = c.subjects.get(subject).cloned();
            if let Some(s) = s.as_mut() {
                s.pool_size = 0;
                s.min_pool_size = 0;
                s.max_pool_size = 0;
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

    /// Non-fatal remarks an operator should read (printed by `check-config` and at start).
    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.fpm.signing_secrets.is_empty() {
            out.push("fpm.signing_secrets is empty: requests to PHP are not signed".to_owned());
        }
        // RabbitMQ closes a channel whose delivery stays unacked longer than consumer_timeout.
        if self.fpm.timeout >= Duration::from_secs(30 * 60) {
            out.push(
                "fpm.timeout is not below RabbitMQ's default consumer_timeout (30m)".to_owned(),
            );
        }
        if self.fpm.status_path.is_none() && self.fpm.max_children.is_none() {
            out.push(
                "neither fpm.status_path nor fpm.max_children is set: requests in flight are not \
                 capped at FPM's pm.max_children, so keep the pools' sum over all agents at or below it"
                    .to_owned(),
            );
        }
        if !self.fpm.require_ack_header {
            out.push("fpm.require_ack_header = false: any 2xx counts as success".to_owned());
        }
        if !self.admin.listen.is_empty() && self.admin.token.is_none() {
            out.push(if self.admin.allow_unauthenticated_commands {
                "admin.allow_unauthenticated_commands = true: any local process (or a request \
                 forged by one) can pause subjects and resize pools; development only"
                    .to_owned()
            } else {
                "admin.token is not set: the admin API refuses every command \
                 (pool set, pause, resume)"
                    .to_owned()
            });
        }
        if self.admin.token.is_some() && self.admin.allow_unauthenticated_commands {
            out.push(
                "admin.allow_unauthenticated_commands is ignored: admin.token is set".to_owned(),
            );
        }
        out.extend(self.memory_warning());
        out.extend(self.amqp_warnings());
        out
    }

    /// Warns when a full prefetch window of maximum-size bodies, at the configured pool sizes,
    /// would exceed `limits.memory_budget`. (Growing a pool towards `max_pool_size` is an
    /// operator's decision; the warning does not fire for every default config because of it.) lapin buffers a whole body
    /// before `max_body_bytes` is checked, so only RabbitMQ's `max_message_size` bounds it.
    fn memory_warning(&self) -> Option<String> {
        let window = |pool: fn(&SubjectConfig) -> u16| -> u64 {
            self.subjects
                .values()
                .map(|s| {
                    u64::from(prefetch(
                        usize::from(pool(s)),
                        crate::batch::prefetch_per_worker(self, s),
                    ))
                })
                .sum()
        };
        let body = self.limits.max_body_bytes as u64;
        let budget = self.limits.memory_budget;
        let mib = |bytes: u64| bytes.div_ceil(1 << 20);
        let deliveries = window(|s| s.pool_size);
        if body.saturating_mul(deliveries) <= budget {
            return None;
        }
        let pools = "the configured pool sizes";
        Some(format!(
            "limits.max_body_bytes ({} MiB) × the prefetch window at {pools} ({deliveries} \
             deliveries) is {} MiB, over limits.memory_budget ({} MiB): lower max_body_bytes, \
             amqp.prefetch_per_worker or the pool sizes, or raise the budget; set RabbitMQ's \
             max_message_size to at most max_body_bytes",
            mib(body),
            mib(body.saturating_mul(deliveries)),
            mib(budget),
        ))
    }
}

/// The `basic.qos` prefetch of a subject: pool size × `prefetch_per_worker`, at least one
/// worker's worth, at most 65535.
#[must_use]
pub fn prefetch(pool: usize, per_worker: u16) -> u16 {
    u16::try_from(pool.max(1).saturating_mul(usize::from(per_worker))).unwrap_or(u16::MAX)
}

/// Hides the password of an AMQP URI for logs and status output.
#[must_use]
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

mod report;
pub use report::ParseProblem;

#[cfg(test)]
mod tests;
