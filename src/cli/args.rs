//! The command line, as `clap` definitions: global options and sub-commands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::LogFormat;

/// amqp-agent: RabbitMQ consumer that hands every message to PHP-FPM over FastCGI.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Log output format (default: `telemetry.log_format`, else text).
    #[arg(long, global = true, value_enum, env = "AMQP_AGENT_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Config file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "amqp-agent.toml",
        env = "AMQP_AGENT_CONFIG"
    )]
    pub config: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Sub-commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Consume every configured subject until SIGTERM / SIGINT (drain) or SIGQUIT (immediate).
    Run,
    /// Validate the config file and print warnings; exit 1 when it is invalid.
    CheckConfig {
        /// Also connect and check, without consuming or changing anything, every queue and
        /// exchange the config needs; print what is missing or different (exit 1 on any).
        #[arg(long)]
        broker: bool,
    },
    /// Publish one message to a subject's queue and wait for the broker's confirm.
    Publish {
        /// Subject (`event` or `command`).
        #[arg(long)]
        subject: String,
        /// Application header `name=value` (repeatable).
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
        /// AMQP message_id (default: a random UUID).
        #[arg(long)]
        message_id: Option<String>,
        /// AMQP content_type.
        #[arg(long, default_value = "application/json")]
        content_type: String,
        /// Message body, or `-` to read it from stdin.
        body: String,
    },
    /// Pools, in-flight work, paused subjects and counters of the running agent.
    Status {
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Resize pools of the running agent.
    Pool {
        /// What to do with the pool.
        #[command(subcommand)]
        action: PoolAction,
    },
    /// Stop consuming a subject (in-flight work finishes; nothing is lost).
    Pause {
        /// Subject.
        subject: String,
        /// Resume by itself after this long (`90s`, `15m`, `2h`; at most 7d); kept over SIGHUP.
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
    },
    /// Resume consuming a subject.
    Resume {
        /// Subject.
        subject: String,
    },
    /// Set or lift a subject's rate limit on the running agent (per agent; kept over SIGHUP
    /// unless the file's `rate_limit` changes).
    Rate {
        /// What to do.
        #[command(subcommand)]
        action: RateAction,
    },
    /// Inspect or replay a subject's dead-letter queue.
    DeadLetters {
        /// What to do.
        #[command(subcommand)]
        action: DeadAction,
    },
}

/// `pool` actions.
#[derive(Debug, Subcommand)]
pub enum PoolAction {
    /// Set a subject's pool to an absolute size.
    Set {
        /// Subject.
        subject: String,
        /// New size (within the subject's min/max pool size).
        size: usize,
    },
    /// Release a subject pinned by `pool set`, SIGTTIN or SIGTTOU back to the autoscaler.
    Auto {
        /// Subject (with `pool_mode = "auto"`).
        subject: String,
    },
}

/// `rate` actions.
#[derive(Debug, Subcommand)]
pub enum RateAction {
    /// Hold a subject to `LIMIT` messages handed to PHP: `50/s`, `300/m`, `3600/h`.
    Set {
        /// Subject.
        subject: String,
        /// The rate.
        limit: String,
        /// Messages that may go at once after a quiet spell.
        #[arg(long, default_value_t = 1)]
        burst: u32,
    },
    /// Lift a subject's rate limit.
    Clear {
        /// Subject.
        subject: String,
    },
}

/// `dead-letters` actions.
#[derive(Debug, Subcommand)]
pub enum DeadAction {
    /// Show dead-lettered messages (they stay in the queue, in their order).
    List {
        /// Subject.
        subject: String,
        /// Which ones.
        #[command(flatten)]
        filter: DeadFilter,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Move dead-lettered messages back to the subject's queue, attempt counter reset; each
    /// copy is confirmed by the broker before its dead letter is removed.
    Replay {
        /// Subject.
        subject: String,
        /// Which ones (default: all).
        #[command(flatten)]
        filter: DeadFilter,
        /// At most this many.
        #[arg(long, default_value_t = 100, conflicts_with = "all")]
        limit: usize,
        /// Every message that matches, however many.
        #[arg(long)]
        all: bool,
    },
    /// Remove dead-lettered messages for good.
    Discard {
        /// Subject.
        subject: String,
        /// Which ones (default: all).
        #[command(flatten)]
        filter: DeadFilter,
        /// At most this many.
        #[arg(long, default_value_t = 100, conflicts_with = "all")]
        limit: usize,
        /// Every message that matches, however many.
        #[arg(long)]
        all: bool,
    },
}

/// The dead-letter filter: every option given must hold.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DeadFilter {
    /// The reason recorded (`x-agent-reason`, else the broker's `x-first-death-reason`):
    /// `rejected`, `max_attempts`, `poison`, `delivery_limit`, ...
    #[arg(long)]
    pub reason: Option<String>,
    /// The last HTTP status (`x-agent-status`): `404`, a class such as `5xx`, or `0` for none.
    #[arg(long)]
    pub status: Option<String>,
    /// The message type: the AMQP `type` property or Messenger's `type` header (the class name,
    /// whole or its last segment).
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// Dead-lettered at least this long ago (`90s`, `15m`, `2d`).
    #[arg(long, value_name = "DURATION")]
    pub older_than: Option<String>,
    /// Text in a property, a header (name or value) or the body, without ASCII case.
    #[arg(long, value_name = "TEXT")]
    pub grep: Option<String>,
}
