//! Operator commands: talk to a running agent's admin listener, or directly to RabbitMQ.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::time::Duration;

use anyhow::Context as _;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::dead_letters::{self, Action, Budget, Filter, FilterText, Selection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::broker;
use crate::broker::session::Session;
use crate::config::Config;
use crate::contract;
use crate::printable::printable;

/// `publish`: one message, confirmed.
pub(super) async fn publish(
    config: &Config,
    subject: &str,
    headers: &[String],
    message_id: Option<String>,
    content_type: &str,
    body: &str,
) -> anyhow::Result<i32> {
    let queue = &config
        .subjects
        .get(subject)
        .with_context(|| format!("subject `{subject}` is not configured"))?
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
        .with_message_id(broker::short(&id))
        .with_content_type(broker::short(content_type))
        .with_delivery_mode(2)
        .with_timestamp(contract::unix_now())
        .with_headers(table);
    let session = Session::open(config, "publish", true).await?;
    session.publish(queue, &body, props).await?;
    session.close().await;
    println!(
        "published {id} to {queue} ({} bytes, confirmed)",
        body.len()
    );
    Ok(0)
}

/// A minimal HTTP/1.1 request to the admin listener (loopback, our own server).
async fn admin_request(config: &Config, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    anyhow::ensure!(
        !config.admin.listen.is_empty(),
        "admin.listen is off in the config: no admin API to talk to"
    );
    let addr = config.admin.listen.as_str();
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .context("admin listener timed out")?
            .with_context(|| {
                format!("cannot reach the agent's admin API at {addr} (is it running?)")
            })?;
    let auth = config
        .admin
        .token
        .as_deref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .context("admin API did not answer")??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed admin response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed admin status line")?;
    Ok((status, body.to_owned()))
}

/// `pool set`, `pause`, `resume`.
pub(super) async fn admin_post(config: &Config, path: &str) -> anyhow::Result<i32> {
    let (status, body) = admin_request(config, "POST", path).await?;
    print!("{body}");
    Ok(if (200..300).contains(&status) { 0 } else { 1 })
}

/// `status`: a table, or the JSON document; exit code 1 when the agent is not ready.
pub(super) async fn status(config: &Config, json: bool) -> anyhow::Result<i32> {
    let (code, body) = admin_request(config, "GET", "/status").await?;
    anyhow::ensure!(code == 200, "admin API answered {code}: {body}");
    let doc: serde_json::Value = serde_json::from_str(&body).context("malformed /status")?;
    // Exit code 0 only when ready: usable as a container health check.
    let code = if doc["ready"] == true { 0 } else { 1 };
    if json {
        println!("{body}");
        return Ok(code);
    }
    println!(
        "amqp-agent {}  up {}s  {}",
        doc["version"].as_str().unwrap_or("?"),
        doc["uptime_seconds"],
        if doc["ready"] == true {
            "ready"
        } else {
            "NOT READY"
        }
    );
    println!(
        "{:<8} {:<24} {:>5} {:>5} {:>5} {:>9} {:>7} {:>9} {:>8} {:>8} {:>8}  {:<12} node",
        "subject",
        "queue",
        "pool",
        "busy",
        "idle",
        "in-flight",
        "recv",
        "acked",
        "retried",
        "dead",
        "restarts",
        "state"
    );
    let subjects: BTreeMap<String, serde_json::Value> =
        serde_json::from_value(doc["subjects"].clone()).unwrap_or_default();
    let v = |x: &serde_json::Value| match x {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for (name, s) in subjects {
        let state = match (s["connection"].as_str(), s["paused"].as_bool()) {
            _ if s["paused_until"].is_string() => {
                format!("paused until {}", v(&s["paused_until"]))
            }
            (Some("connected"), Some(true)) if s["state"] == "circuit_open" => {
                "circuit open".to_owned()
            }
            (Some("connected"), Some(true)) => "paused".to_owned(),
            (Some("connected"), _) => "consuming".to_owned(),
            _ => "disconnected".to_owned(),
        };
        println!(
            "{:<8} {:<24} {:>5} {:>5} {:>5} {:>9} {:>7} {:>9} {:>8} {:>8} {:>8}  {state:<12} {}",
            name,
            v(&s["queue"]),
            v(&s["pool_size"]),
            v(&s["busy"]),
            v(&s["idle"]),
            v(&s["in_flight"]),
            v(&s["received"]),
            v(&s["acked"]),
            v(&s["retried"]),
            v(&s["dead_lettered"]),
            v(&s["worker_restarts"]),
            s["node"].as_str().unwrap_or("-"),
        );
    }
    match doc["upstreams"].as_array() {
        Some(list) if !list.is_empty() => {
            for upstream in list {
                print_upstream(upstream);
                print_fpm(&upstream["fpm"]);
            }
        }
        _ => print_fpm(&doc["fpm"]),
    }
    Ok(code)
}

/// One FPM upstream of `/status`: breaker, requests in flight over capacity, contention.
fn print_upstream(u: &serde_json::Value) {
    let n = |k: &str| {
        u[k].as_u64()
            .map_or_else(|| "?".to_owned(), |v| v.to_string())
    };
    let capacity = u["capacity"]
        .as_u64()
        .map_or_else(|| "unknown".to_owned(), |v| v.to_string());
    println!(
        "Upstream {}  {}  in flight {}/{capacity}  waiting {}  idle connections {}  requests {}  refused {}  backlog waits {}{}",
        u["address"].as_str().unwrap_or("?"),
        u["health"].as_str().unwrap_or("?"),
        n("in_flight"),
        n("waiting"),
        n("idle_connections"),
        n("requests"),
        n("refused"),
        n("backlog_waits"),
        if u["contended"].as_bool() == Some(true) {
            "  contended (connections close after each request)"
        } else {
            ""
        },
    );
}

/// The `fpm` part of `/status`: the status page's figures and busy children, or why it is unread.
fn print_fpm(fpm: &serde_json::Value) {
    let state = fpm["state"].as_str().unwrap_or("unknown");
    let address = fpm["address"].as_str().unwrap_or("?");
    if state != "ok" {
        let why = fpm["error"].as_str().unwrap_or(match state {
            "not_configured" => "set fpm.status_path to read it",
            _ => "",
        });
        println!("FPM {address}  status page: {state}  {why}");
        return;
    }
    let n = |k: &str| {
        fpm[k]
            .as_u64()
            .map_or_else(|| "?".to_owned(), |v| v.to_string())
    };
    println!(
        "FPM {address}  max children {}  active {}  idle {}  listen queue {}  max children reached {}  slow requests {}",
        n("max_children"),
        n("active"),
        n("idle"),
        n("listen_queue"),
        n("max_children_reached"),
        n("slow_requests"),
    );
    for child in fpm["busy"].as_array().into_iter().flatten() {
        println!(
            "  pid {:<8} {:>8} ms  {}",
            child["pid"],
            child["duration_ms"],
            child["uri"].as_str().unwrap_or("-")
        );
    }
}

/// The dead-letter filter of the command line, parsed.
pub(super) fn dead_filter(f: &super::DeadFilter) -> anyhow::Result<Filter> {
    Filter::parse(FilterText {
        reason: f.reason.as_deref(),
        status: f.status.as_deref(),
        kind: f.kind.as_deref(),
        older_than: f.older_than.as_deref(),
        grep: f.grep.as_deref(),
    })
    .map_err(|e| anyhow::anyhow!("--{}", e.to_string().replace('_', "-")))
}

/// `dead-letters list`: the first `limit` matches; every message stays in the queue, in its
/// order.
pub(super) async fn dead_list(
    config: &Config,
    subject: &str,
    filter: &Filter,
    limit: usize,
) -> anyhow::Result<i32> {
    let now = contract::unix_now();
    let page =
        dead_letters::browse(config, subject, filter, 0, limit, Budget::UNBOUNDED, now).await?;
    println!(
        "{:<38} {:<24} {:<16} {:>6} {:>8} {:>8}  last error",
        "message id", "type", "reason", "status", "attempts", "age"
    );
    // Everything shown comes from the message: escaped, so it cannot drive the terminal.
    let shown =
        |text: Option<&str>, max: usize| printable(text.unwrap_or("-")).capped(max).to_string();
    let number = |n: Option<i64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    for l in &page.letters {
        let age = l.age_seconds.map_or_else(
            || "-".to_owned(),
            |s| humantime::format_duration(Duration::from_secs(s)).to_string(),
        );
        println!(
            "{:<38} {:<24} {:<16} {:>6} {:>8} {:>8}  {}",
            shown(l.message_id.as_deref(), 64),
            shown(l.kind.as_deref(), 48),
            shown(l.reason.as_deref(), 32),
            number(l.status),
            number(l.attempts),
            age.split_whitespace().next().unwrap_or("-"),
            shown(l.last_error.as_deref(), 120),
        );
    }
    let more = if page.complete {
        String::new()
    } else {
        " (more may match: --limit)".to_owned()
    };
    println!(
        "{} message(s) shown of {} in {}{more}; they remain there",
        page.letters.len(),
        page.total,
        page.queue,
    );
    Ok(0)
}

/// `dead-letters replay|discard`: the matches, at most `limit` (all without one).
pub(super) async fn dead_act(
    config: &Config,
    subject: &str,
    action: Action,
    filter: Filter,
    limit: Option<usize>,
) -> anyhow::Result<i32> {
    let (main, queue) = dead_letters::queues(config, subject)?;
    let now = contract::unix_now();
    let selection = Selection::Matching(filter);
    let p = dead_letters::act(config, subject, action, &selection, limit, now, |_| {}).await?;
    match action {
        Action::Replay => println!(
            "replayed {} message(s) from {queue} to {main}; {} unverified route(s) dropped; {} left in {queue}",
            p.done, p.routes_dropped, p.left
        ),
        Action::Discard => println!(
            "discarded {} message(s) from {queue}; {} left there",
            p.done, p.left
        ),
    }
    Ok(0)
}

/// `check-config --broker`: every queue and exchange each subject needs, checked passively.
pub(super) async fn check_broker(config: &Config) -> anyhow::Result<i32> {
    use crate::broker::topology::{Check, check_subject};
    let connection = broker::connect(config, "check-config").await?;
    let mut problems = 0;
    for (name, subject) in &config.subjects {
        println!("subject {name}:");
        for check in check_subject(&connection, config, subject).await? {
            let (mark, text, problem) = match &check {
                Check::Ok(t) => ("ok       ", t.clone(), false),
                // With amqp.declare the agent creates what is missing at start.
                Check::Missing(t) if config.amqp.declare => (
                    "absent   ",
                    format!("{t} (created at start: amqp.declare = true)"),
                    false,
                ),
                Check::Missing(t) => ("MISSING  ", t.clone(), true),
                Check::Different(t) => ("DIFFERENT", t.clone(), true),
                Check::Unknown(t) => ("unchecked", t.clone(), false),
            };
            problems += usize::from(problem);
            println!("  {mark} {text}");
        }
    }
    let _ = connection.close(200, "check done".into()).await;
    if problems > 0 {
        println!("{problems} problem(s) on the broker");
        return Ok(1);
    }
    println!("broker: ok");
    Ok(0)
}
