//! Operator commands: talk to a running agent's admin listener, or directly to RabbitMQ.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::time::Duration;

use anyhow::Context as _;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::broker;
use crate::broker::session::Session;
use crate::config::Config;
use crate::contract;
use crate::printable::printable;
use crate::provenance;

/// `publish`: one message, confirmed.
pub async fn publish(
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
pub async fn admin_post(config: &Config, path: &str) -> anyhow::Result<i32> {
    let (status, body) = admin_request(config, "POST", path).await?;
    print!("{body}");
    Ok(if (200..300).contains(&status) { 0 } else { 1 })
}

/// `status`: a table, or the JSON document; exit code 1 when the agent is not ready.
pub async fn status(config: &Config, json: bool) -> anyhow::Result<i32> {
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

fn header_text(props: &BasicProperties, name: &str) -> String {
    match props.headers().as_ref().and_then(|h| h.inner().get(name)) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::LongLongInt(n)) => n.to_string(),
        Some(other) => format!("{other:?}"),
        None => "-".to_owned(),
    }
}

/// `dead-letters list`: peeks without removing (every message taken is returned at the end).
pub async fn dead_list(config: &Config, subject: &str, limit: usize) -> anyhow::Result<i32> {
    let queue = dead_queue(config, subject)?;
    let session = Session::open(config, "dead-letters", false).await?;
    let mut taken = Vec::new();
    println!(
        "{:<38} {:<16} {:>6} {:>8}  last error",
        "message id", "reason", "status", "attempts"
    );
    while taken.len() < limit {
        let Some(msg) = session.get(&queue).await? else {
            break;
        };
        let p = &msg.delivery().properties;
        // Everything shown comes from the message: escaped, so it cannot drive the terminal.
        let shown = |text: &str, max: usize| printable(text).capped(max).to_string();
        println!(
            "{:<38} {:<16} {:>6} {:>8}  {}",
            shown(p.message_id().as_ref().map_or("-", |s| s.as_str()), 64),
            shown(&header_text(p, contract::REASON_HEADER), 32),
            shown(&header_text(p, contract::STATUS_HEADER), 16),
            shown(&header_text(p, contract::ATTEMPTS_HEADER), 16),
            shown(&header_text(p, contract::LAST_ERROR_HEADER), 120),
        );
        taken.push(msg);
    }
    for msg in &taken {
        msg.requeue().await?;
    }
    println!(
        "{} message(s) shown from {queue}; they remain there",
        taken.len()
    );
    session.close().await;
    Ok(0)
}

/// `dead-letters replay`: back to the main queue, attempt counter reset, confirmed before the
/// dead-letter copy is removed. The original route is kept (and sealed again) only when the dead
/// letter's seal verifies with a configured secret: anyone who may publish to the default
/// exchange can put a message with made-up route headers into `Q.dead`, and a replay must not
/// launder them. Such a route is dropped, each one logged and all counted.
pub async fn dead_replay(config: &Config, subject: &str, limit: usize) -> anyhow::Result<i32> {
    let queue = dead_queue(config, subject)?;
    let main = config.subjects[subject].queue.clone();
    let secrets = &config.fpm.signing_secrets;
    let session = Session::open(config, "dead-letters", true).await?;
    // Only what is in the queue now: a replayed message that fails again while this runs comes
    // back to the same queue and must not be replayed a second time.
    let mut bound = limit;
    let mut replayed = 0;
    let mut dropped = 0;
    while replayed < bound {
        let Some(msg) = session.get(&queue).await? else {
            break;
        };
        if replayed == 0 {
            let present = usize::try_from(msg.remaining()).unwrap_or(usize::MAX);
            bound = bound.min(present.saturating_add(1));
        }
        let delivery = msg.delivery();
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map_or("", |id| id.as_str());
        let binding = provenance::Binding {
            queue: &main,
            message_id,
            body: &delivery.data,
        };
        let original = delivery.properties.headers().as_ref();
        let route = match provenance::read(original, secrets, &binding) {
            // Without a secret nothing can be verified: the route is not kept either.
            (_, None) if secrets.is_empty() => Route::Unverifiable,
            (_, None) => Route::Verified,
            (_, Some(why)) => {
                dropped += 1;
                eprintln!(
                    "dropped the unverified route of dead letter {}: {}",
                    printable(message_id).capped(64),
                    why.reason()
                );
                Route::Dropped
            }
        };
        let kept: BTreeMap<_, _> = original
            .map(|h| h.inner().clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !is_agent_state(k.as_str()))
            .filter(|(k, _)| route == Route::Verified || !is_route(k.as_str()))
            .collect();
        let mut headers = FieldTable::from(kept);
        // Re-sealed so the agent keeps believing the original route it recorded.
        provenance::seal(&mut headers, secrets, &binding);
        let props = delivery.properties.clone().with_headers(headers);
        session.publish(&main, &delivery.data, props).await?;
        msg.ack().await?;
        replayed += 1;
    }
    println!(
        "replayed {replayed} message(s) from {queue} to {main}; {dropped} unverified route(s) dropped"
    );
    session.close().await;
    Ok(0)
}

/// Whether a dead letter's original route may travel with its replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Its seal verifies (or it claims no state at all).
    Verified,
    /// No seal that verifies: made up by whoever published it, or altered.
    Dropped,
    /// No signing secret configured: nothing can be verified, nothing is kept.
    Unverifiable,
}

fn is_route(name: &str) -> bool {
    name == contract::ORIGINAL_EXCHANGE_HEADER || name == contract::ORIGINAL_ROUTING_KEY_HEADER
}

/// Headers the agent writes to track attempts and failures (not the original-route ones).
fn is_agent_state(name: &str) -> bool {
    name.starts_with(contract::AGENT_HEADER_PREFIX)
        && name != contract::ORIGINAL_EXCHANGE_HEADER
        && name != contract::ORIGINAL_ROUTING_KEY_HEADER
        || name == "x-death"
        || name.starts_with("x-first-death")
        || name.starts_with("x-last-death")
}

fn dead_queue(config: &Config, subject: &str) -> anyhow::Result<String> {
    let s = config
        .subjects
        .get(subject)
        .with_context(|| format!("subject `{subject}` is not configured"))?;
    Ok(broker::dead_queue_name(&s.queue))
}

/// `check-config --broker`: every queue and exchange each subject needs, checked passively.
pub async fn check_broker(config: &Config) -> anyhow::Result<i32> {
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
