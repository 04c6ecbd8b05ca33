//! The command line: `run`, `check-config`, `publish`, and the operator commands (`status`,
//! `pool set`, `pause`, `resume`, `dead-letters list|replay|discard`).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tracing::{error, info, warn};

use crate::agent::Agent;
use crate::config::{Config, LogFormat, redact_url};
use crate::notify::Notifier;
use crate::signals::{self, Command};

mod args;
mod ops;

pub use args::{Cli, Cmd, DeadAction, DeadFilter, PoolAction, RateAction};

use crate::dead_letters::Action;

/// Parses the command line and runs it; returns the process exit code.
#[must_use]
pub fn main() -> i32 {
    let cli = Cli::parse();
    // `run` sizes the runtime from the config; every other command is fine on one thread.
    let threads = match cli.command {
        Cmd::Run => match Config::load(&cli.config) {
            Ok(config) => config.agent.worker_threads,
            Err(e) => {
                eprintln!("amqp-agent: {e}");
                return 1;
            }
        },
        _ => 1,
    };
    let runtime = match runtime(threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("amqp-agent: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let result = runtime.block_on(dispatch(cli));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("amqp-agent: {e:#}");
            1
        }
    }
}

/// One thread: a current-thread runtime (actors, FastCGI and AMQP handling never hop threads),
/// which pauses before parking while every FastCGI request in flight is mid-batch
/// ([`crate::wakeups`]); more: a multi-thread runtime with that many workers; 0: one worker per
/// core.
///
/// # Errors
/// The runtime's I/O or timer driver could not be created.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(crate::wakeups::before_park)
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let path = cli.config.as_path();
    if let Cmd::Run = cli.command {
        return run(path, cli.log_format).await;
    }
    crate::telemetry::init(cli.log_format == Some(LogFormat::Json), Some("warn"), None)?;
    match cli.command {
        Cmd::Run => unreachable!("handled above"),
        Cmd::CheckConfig { broker } => {
            let code = check_config(path)?;
            if broker {
                return ops::check_broker(&Config::load(path)?).await;
            }
            Ok(code)
        }
        Cmd::Publish {
            subject,
            headers,
            message_id,
            content_type,
            body,
        } => {
            ops::publish(
                &Config::load(path)?,
                &subject,
                &headers,
                message_id,
                &content_type,
                &body,
            )
            .await
        }
        Cmd::Status { json } => ops::status(&Config::load(path)?, json).await,
        Cmd::Pool {
            action: PoolAction::Set { subject, size },
        } => {
            ops::admin_post(
                &Config::load(path)?,
                &format!("/pools/{subject}?size={size}"),
            )
            .await
        }
        Cmd::Pool {
            action: PoolAction::Auto { subject },
        } => ops::admin_post(&Config::load(path)?, &format!("/pools/{subject}/auto")).await,
        Cmd::Rate {
            action:
                RateAction::Set {
                    subject,
                    limit,
                    burst,
                },
        } => {
            crate::config::Rate::parse(&limit).map_err(|e| anyhow::anyhow!("LIMIT: {e}"))?;
            ops::admin_post(
                &Config::load(path)?,
                &format!("/subjects/{subject}/rate?limit={limit}&burst={burst}"),
            )
            .await
        }
        Cmd::Rate {
            action: RateAction::Clear { subject },
        } => {
            ops::admin_post(
                &Config::load(path)?,
                &format!("/subjects/{subject}/rate?limit=none"),
            )
            .await
        }
        Cmd::Pause { subject, duration } => {
            let query = match duration {
                Some(d) => {
                    humantime::parse_duration(&d)
                        .map_err(|e| anyhow::anyhow!("--for `{d}`: {e}"))?;
                    format!("?for={}", d.replace(' ', ""))
                }
                None => String::new(),
            };
            ops::admin_post(
                &Config::load(path)?,
                &format!("/subjects/{subject}/pause{query}"),
            )
            .await
        }
        Cmd::Resume { subject } => {
            ops::admin_post(&Config::load(path)?, &format!("/subjects/{subject}/resume")).await
        }
        Cmd::DeadLetters { action } => {
            let config = Config::load(path)?;
            match action {
                DeadAction::List {
                    subject,
                    filter,
                    limit,
                } => ops::dead_list(&config, &subject, &ops::dead_filter(&filter)?, limit).await,
                DeadAction::Replay {
                    subject,
                    filter,
                    limit,
                    all,
                } => {
                    let limit = (!all).then_some(limit);
                    let filter = ops::dead_filter(&filter)?;
                    ops::dead_act(&config, &subject, Action::Replay, filter, limit).await
                }
                DeadAction::Discard {
                    subject,
                    filter,
                    limit,
                    all,
                } => {
                    let limit = (!all).then_some(limit);
                    let filter = ops::dead_filter(&filter)?;
                    ops::dead_act(&config, &subject, Action::Discard, filter, limit).await
                }
            }
        }
    }
}

fn check_config(path: &Path) -> anyhow::Result<i32> {
    let config = Config::load(path)?;
    for warning in config.warnings() {
        println!("warning: {warning}");
    }
    println!("{}: ok", path.display());
    for url in config.amqp_urls() {
        println!("  amqp.url     {}", redact_url(url));
    }
    println!("  fpm.address  {}", config.fpm.address);
    let admin = if config.admin.listen.is_empty() {
        "off"
    } else {
        config.admin.listen.as_str()
    };
    println!("  admin        {admin}");
    for (name, subject) in &config.subjects {
        println!(
            "  subject {name:<8} queue={} ({}) pool_size={} ({}..={})",
            subject.queue,
            config.queue_type(subject).as_str(),
            subject.pool_size,
            subject.min_pool_size,
            subject.max_pool_size
        );
    }
    Ok(0)
}

async fn run(path: &Path, log_format: Option<LogFormat>) -> anyhow::Result<i32> {
    let config = Arc::new(Config::load(path)?);
    let json = log_format.map_or(config.telemetry.log_format == Some(LogFormat::Json), |f| {
        f == LogFormat::Json
    });
    let export = crate::telemetry::export_settings(&config.telemetry, |k| {
        std::env::var(k).ok().filter(|v| !v.is_empty())
    });
    crate::telemetry::init(json, config.telemetry.log_level.as_deref(), export.as_ref())?;
    for warning in config.warnings() {
        warn!("{warning}");
    }
    let mut commands = signals::listen().context("cannot install signal handlers")?;
    info!(
        amqp = %redact_url(config.amqp_url()),
        fpm = %config.fpm.address,
        subjects = ?config.subjects.keys().collect::<Vec<_>>(),
        "Starting amqp-agent {}",
        env!("CARGO_PKG_VERSION")
    );
    let mut agent = Agent::start(config.clone()).await?;
    let handle = agent.handle();
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    if !config.admin.listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&config.admin.listen)
            .await
            .with_context(|| format!("cannot listen on admin.listen = {}", config.admin.listen))?;
        info!(listen = %config.admin.listen, "Admin API: /metrics /healthz /readyz /status");
        let handle = handle.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::admin::serve(listener, handle, async {
                let _ = admin_stopped.await;
            })
            .await
            {
                error!(error = %e, "Admin listener failed");
            }
        });
    }
    let notifier = Arc::new(Notifier::from_env());
    tokio::spawn(lifecycle(handle.clone(), notifier.clone()));
    let mut current = config.clone();
    let code = loop {
        tokio::select! {
            fatal = agent.stopped() => {
                let reason = fatal.unwrap_or_else(|| "supervision tree stopped".to_owned());
                error!("fatal: {reason}");
                break 1;
            }
            command = commands.recv() => match command {
                Some(Command::Drain) | None => {
                    info!(timeout = ?current.agent.shutdown_timeout, "Shutdown requested; draining");
                    notifier.notify("STOPPING=1");
                    break exit_code(agent.drain().await);
                }
                Some(Command::Quit) => {
                    info!("Immediate stop requested");
                    notifier.notify("STOPPING=1");
                    break exit_code(agent.stop().await);
                }
                Some(Command::Status) => {
                    let status = handle.status();
                    info!(status = %serde_json::to_string(&status).unwrap_or_default(), "Status snapshot");
                }
                Some(Command::Grow) => handle.step_pools(1),
                Some(Command::Shrink) => handle.step_pools(-1),
                Some(Command::Reload) => {
                    notifier.reloading();
                    match Config::load(path) {
                        Ok(new) => {
                            let new = Arc::new(new);
                            if new.admin != current.admin {
                                warn!("admin settings change on restart only");
                            }
                            crate::telemetry::set_log_level(new.telemetry.log_level.as_deref());
                            agent.reload(new.clone());
                            info!(path = %path.display(), "Configuration reloaded");
                            current = new;
                        }
                        Err(e) => error!(error = %e, "Reload rejected; keeping the running configuration"),
                    }
                    notifier.notify("READY=1");
                }
            }
        }
    };
    let _ = admin_stop.send(());
    crate::telemetry::shutdown().await;
    Ok(code)
}

/// READY=1 once every subject consumes; WATCHDOG=1 while the supervision tree is healthy.
async fn lifecycle(handle: crate::agent::AgentHandle, notifier: Arc<Notifier>) {
    let mut ready = false;
    let mut interval = tokio::time::interval(
        notifier
            .watchdog_interval()
            .unwrap_or(std::time::Duration::from_millis(200))
            .min(std::time::Duration::from_millis(200)),
    );
    let mut last_ping = tokio::time::Instant::now();
    loop {
        interval.tick().await;
        if !handle.alive() {
            return;
        }
        if !ready && handle.stats().values().all(|s| s.consuming) {
            ready = true;
            notifier.notify("READY=1\nSTATUS=consuming");
            info!("Ready: every subject is consuming");
        }
        if let Some(every) = notifier.watchdog_interval() {
            // Ping only while the root supervisor's loop answers.
            if last_ping.elapsed() >= every && handle.ping(every).await {
                notifier.notify("WATCHDOG=1");
                last_ping = tokio::time::Instant::now();
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
