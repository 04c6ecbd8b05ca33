//! The command line: `run`, `check-config`, `publish`.

use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use lapin::BasicProperties;
use lapin::options::ConfirmSelectOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use tracing::{error, info, warn};

use crate::agent::Agent;
use crate::config::{Config, redact_url};
use crate::signals::{self, Command};

/// amqp-agent: RabbitMQ consumer that hands every message to PHP-FPM over FastCGI.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "AMQP_AGENT_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Sub-commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Consume every configured subject until SIGTERM / SIGINT (drain) or SIGQUIT (immediate).
    Run {
        /// Config file.
        #[arg(
            long,
            short,
            default_value = "amqp-agent.toml",
            env = "AMQP_AGENT_CONFIG"
        )]
        config: PathBuf,
    },
    /// Validate a config file and print warnings; exit 1 when it is invalid.
    CheckConfig {
        /// Config file.
        #[arg(
            long,
            short,
            default_value = "amqp-agent.toml",
            env = "AMQP_AGENT_CONFIG"
        )]
        config: PathBuf,
    },
    /// Publish one message to a subject's queue and wait for the broker's confirm.
    Publish {
        /// Config file (for the AMQP URL and the subject's queue).
        #[arg(
            long,
            short,
            default_value = "amqp-agent.toml",
            env = "AMQP_AGENT_CONFIG"
        )]
        config: PathBuf,
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
}

/// Parses the command line and runs it; returns the process exit code.
#[must_use]
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Run { config } => run(&config).await,
            Cmd::CheckConfig { config } => check_config(&config),
            Cmd::Publish {
                config,
                subject,
                headers,
                message_id,
                content_type,
                body,
            } => {
                publish(
                    &config,
                    &subject,
                    &headers,
                    message_id,
                    &content_type,
                    &body,
                )
                .await
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            eprintln!("amqp-agent: {e:#}");
            1
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,lapin=warn,amq_protocol=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    let config = Config::load(path)?;
    for warning in config.warnings() {
        warn!("{warning}");
    }
    Ok(config)
}

fn check_config(path: &std::path::Path) -> anyhow::Result<i32> {
    let config = Config::load(path)?;
    for warning in config.warnings() {
        println!("warning: {warning}");
    }
    println!("{}: ok", path.display());
    println!("  amqp.url     {}", redact_url(config.amqp_url()));
    println!("  fpm.address  {}", config.fpm.address);
    for (name, subject) in &config.subjects {
        println!(
            "  subject {name:<8} queue={} pool_size={}",
            subject.queue, subject.pool_size
        );
    }
    Ok(0)
}

async fn run(path: &std::path::Path) -> anyhow::Result<i32> {
    let config = Arc::new(load(path)?);
    let mut commands = signals::listen().context("cannot install signal handlers")?;
    info!(
        amqp = %redact_url(config.amqp_url()),
        fpm = %config.fpm.address,
        subjects = ?config.subjects.keys().collect::<Vec<_>>(),
        "Starting amqp-agent {}",
        env!("CARGO_PKG_VERSION")
    );
    let mut agent = Agent::start(config.clone()).await?;
    loop {
        tokio::select! {
            fatal = agent.stopped() => {
                let reason = fatal.unwrap_or_else(|| "supervision tree stopped".to_owned());
                anyhow::bail!("fatal: {reason}");
            }
            command = commands.recv() => match command {
                Some(Command::Drain) | None => {
                    info!(timeout = ?config.agent.shutdown_timeout, "Shutdown requested; draining");
                    return Ok(exit_code(agent.drain().await));
                }
                Some(Command::Quit) => {
                    info!("Immediate stop requested");
                    return Ok(exit_code(agent.stop().await));
                }
                Some(Command::Status) => {
                    for (subject, stats) in agent.stats() {
                        info!(subject, ?stats, "Status");
                    }
                }
                Some(Command::Grow | Command::Shrink | Command::Reload) => {
                    warn!(?command, "Not supported yet; ignored");
                }
            }
        }
    }
}

fn exit_code(fatal: Option<String>) -> i32 {
    match fatal {
        Some(reason) => {
            error!("fatal: {reason}");
            1
        }
        None => 0,
    }
}

async fn publish(
    path: &std::path::Path,
    subject: &str,
    headers: &[String],
    message_id: Option<String>,
    content_type: &str,
    body: &str,
) -> anyhow::Result<i32> {
    let config = Config::load(path)?;
    let queue = &config
        .subjects
        .get(subject)
        .with_context(|| {
            format!(
                "subject `{subject}` is not configured in {}",
                path.display()
            )
        })?
        .queue;
    let body = if body == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read the body from stdin")?;
        buf
    } else {
        body.as_bytes().to_vec()
    };
    let mut table = FieldTable::default();
    for header in headers {
        let (name, value) = header
            .split_once('=')
            .with_context(|| format!("--header `{header}` is not NAME=VALUE"))?;
        table.insert(
            name.into(),
            AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
        );
    }
    let id = message_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let props = BasicProperties::default()
        .with_message_id(crate::broker::short(&id))
        .with_content_type(crate::broker::short(content_type))
        .with_delivery_mode(2)
        .with_timestamp(crate::contract::unix_now())
        .with_headers(table);
    let connection = crate::broker::connect(config.amqp_url(), "publish").await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    crate::broker::publish_confirmed(&channel, "", queue, &body, props, Duration::from_secs(10))
        .await?;
    let _ = connection.close(200, "bye".into()).await;
    println!(
        "published {id} to {queue} ({} bytes, confirmed)",
        body.len()
    );
    Ok(0)
}
