//! Data that comes from a message: content types PHP must not parse, agent state headers a
//! publisher may forge, and message text that must not forge log lines or drive a terminal.

use crate::common;

use std::time::Duration;

use amqp_agent::agent::Agent;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};

use common::procs::{AgentProcess, agent_cli};
use common::{TestCtx, body_of};

const WAIT: Duration = Duration::from_secs(30);

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// `fpm.signature_v1 = true` (receivers older than v2): the legacy `v1` value is sent before
/// `v2`, and each verifies alone in PHP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_v1_adds_the_legacy_value_for_old_receivers() {
    let mut ctx = TestCtx::new("sig-v1").await;
    ctx.set("fpm.signature_v1", true);
    let agent = ctx.start_agent().await;
    ctx.publish_json("event", "old", "ok").await;
    let records = ctx.wait_records(1, WAIT).await;
    let signature = records[0]["params"]["HTTP_X_AGENT_SIGNATURE"]
        .as_str()
        .unwrap();
    let keys: Vec<&str> = signature
        .split(',')
        .map(|p| p.split_once('=').unwrap().0)
        .collect();
    assert_eq!(keys, ["t", "v1", "v2"], "{signature}");
    assert_eq!(records[0]["sig_ok"], true, "v2 verifies in PHP");
    assert_eq!(records[0]["sig_v1_ok"], true, "v1 verifies in PHP");
    assert!(agent.drain().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_message_reaches_php_whole_in_php_input() {
    let ctx = TestCtx::new("multipart").await;
    let agent = ctx.start_agent().await;
    let content_type = "multipart/form-data; boundary=XyZ";
    // A well-formed form: PHP would parse it into $_POST/$_FILES (and empty php://input) if it
    // saw this CONTENT_TYPE. The JSON id and behaviour ride in the first part.
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\n\
                Content-Type: text/plain\r\n\r\n{\"id\":\"mp\"}\r\n--XyZ--\r\n";
    let props = BasicProperties::default()
        .with_message_id("mp".into())
        .with_content_type(content_type.into());
    ctx.publish("event", body.as_bytes(), props).await;
    let form = "a=1&b=2";
    let props = BasicProperties::default()
        .with_message_id("form".into())
        .with_content_type("Application/X-WWW-Form-URLEncoded ; charset=utf-8".into());
    ctx.publish("event", form.as_bytes(), props).await;
    let json = r#"{"id":"js"}"#;
    let props = BasicProperties::default()
        .with_message_id("js".into())
        .with_content_type("application/json".into());
    ctx.publish("event", json.as_bytes(), props).await;

    let records = ctx.wait_records(3, WAIT).await;
    let by_id = |id: &str| {
        records
            .iter()
            .find(|r| r["params"]["HTTP_X_AGENT_MESSAGE_ID"] == id)
            .unwrap_or_else(|| panic!("{id} recorded"))
    };
    let mp = by_id("mp");
    assert_eq!(body_of(mp), body.as_bytes(), "php://input holds the body");
    assert_eq!(mp["params"]["CONTENT_TYPE"], "application/octet-stream");
    assert_eq!(mp["params"]["HTTP_X_AGENT_CONTENT_TYPE"], content_type);
    assert_eq!(mp["sig_ok"], true, "v2 verifies in PHP");
    assert_eq!(mp["sig_v1_ok"], false, "no v1 without fpm.signature_v1");
    let signature = mp["params"]["HTTP_X_AGENT_SIGNATURE"].as_str().unwrap();
    assert!(
        signature.starts_with("t=") && signature.contains(",v2=") && !signature.contains("v1="),
        "{signature}"
    );
    let form_rec = by_id("form");
    assert_eq!(body_of(form_rec), form.as_bytes());
    assert_eq!(
        form_rec["params"]["CONTENT_TYPE"],
        "application/octet-stream"
    );
    assert_eq!(
        form_rec["params"]["HTTP_X_AGENT_CONTENT_TYPE"],
        "Application/X-WWW-Form-URLEncoded ; charset=utf-8"
    );
    let js = by_id("js");
    assert_eq!(js["params"]["CONTENT_TYPE"], "application/json");
    assert_eq!(
        js["params"]["HTTP_X_AGENT_CONTENT_TYPE"],
        "application/json"
    );
    assert_eq!(js["sig_ok"], true);
    common::eventually(WAIT, "all acked", || async {
        agent.stats()["event"].acked == 3
    })
    .await;
    agent.drain().await;
}

/// Headers a publisher sets to skip retries and claim a route it may not use, with a forged
/// `x-death` entry that names the agent's own delay queue.
fn spoofed_headers(ctx: &TestCtx) -> FieldTable {
    let mut h = FieldTable::default();
    h.insert("x-agent-attempt".into(), AMQPValue::LongLongInt(99));
    h.insert("x-agent-original-exchange".into(), text("amq.topic"));
    h.insert(
        "x-agent-original-routing-key".into(),
        text("admin.only.route"),
    );
    h.insert("x-agent-seal".into(), text(&"ab".repeat(32)));
    let mut death = FieldTable::default();
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    death.insert("reason".into(), text("expired"));
    death.insert(
        "queue".into(),
        text(&ctx.delay_queue("event", Duration::from_millis(100))),
    );
    death.insert("exchange".into(), text(""));
    h.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
    );
    h
}

async fn spoofed_attempt_is_ignored_and_real_retries_count(ctx: TestCtx, agent: Agent) {
    // Fails until attempt 3: a believed attempt 99 would be dead-lettered at once instead.
    let body = serde_json::json!({"id": "spoof", "behave": "fail-until:3"}).to_string();
    let props = BasicProperties::default()
        .with_message_id("spoof".into())
        .with_headers(spoofed_headers(&ctx));
    ctx.publish("event", body.as_bytes(), props).await;
    common::eventually(WAIT, "three attempts, then acked", || async {
        agent.stats()["event"].acked == 1
    })
    .await;
    let records = &ctx.records_by_id()["spoof"];
    let attempts: Vec<&str> = records
        .iter()
        .map(|r| r["params"]["HTTP_X_AGENT_ATTEMPT"].as_str().unwrap())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    for r in records {
        let p = &r["params"];
        assert_eq!(p["HTTP_X_AGENT_ROUTING_KEY"], ctx.queue("event"));
        assert_eq!(p["HTTP_X_AGENT_EXCHANGE"], "");
    }
    // RabbitMQ hands a publisher's own `x-death` to the consumer unchanged: it cannot be the
    // proof that a message came back through the delay queue.
    let first: serde_json::Value = serde_json::from_str(
        records[0]["params"]["HTTP_X_AGENT_HEADERS"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        first["x-death"][0]["queue"],
        ctx.delay_queue("event", Duration::from_millis(100))
    );
    assert_eq!(agent.stats()["event"].retried, 2);
    assert_eq!(agent.stats()["event"].dead_lettered, 0);
    agent.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_attempt_and_route_are_ignored_and_real_retries_still_count() {
    let ctx = TestCtx::new("spoof").await;
    let agent = ctx.start_agent().await;
    spoofed_attempt_is_ignored_and_real_retries_count(ctx, agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_secrets_real_retries_count_through_x_death() {
    let mut ctx = TestCtx::new("spoof-nokey").await;
    ctx.set("fpm.signing_secrets", toml::value::Array::new());
    assert!(!ctx.toml().contains(&ctx.secret));
    let agent = Agent::start(ctx.config()).await.unwrap();
    agent.wait_consuming(WAIT).await.unwrap();
    // A genuine retry is believed from RabbitMQ's own x-death entry of the delay queue.
    let body = serde_json::json!({"id": "plain", "behave": "fail-until:3"}).to_string();
    let props = BasicProperties::default().with_message_id("plain".into());
    ctx.publish("event", body.as_bytes(), props).await;
    common::eventually(WAIT, "three attempts, then acked", || async {
        agent.stats()["event"].acked == 1
    })
    .await;
    let attempts: Vec<String> = ctx.records_by_id()["plain"]
        .iter()
        .map(|r| {
            r["params"]["HTTP_X_AGENT_ATTEMPT"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert_eq!(agent.stats()["event"].dead_lettered, 0);
    agent.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_text_cannot_forge_log_lines_or_reach_the_terminal_raw() {
    let ctx = TestCtx::new("logforge").await;
    ctx.declare().await;
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let agent = AgentProcess::start(&ctx.write_config(), &log);
    ctx.wait_ready().await;

    let forged = "2026-11-30T00:00:00.000000Z  INFO amqp_agent: FORGED";
    let id = format!("evil\n{forged} id\x1b[2J\x1b]0;pwned\x07\r");
    let mut h = FieldTable::default();
    h.insert(
        "traceparent".into(),
        text(&format!("bad\n{forged} traceparent")),
    );
    h.insert(
        "x-agent-attempt".into(),
        text(&format!("1\n{forged} attempt\x1b[31m")),
    );
    let body = serde_json::json!({"id": "evil", "behave": "status:404"}).to_string();
    let props = BasicProperties::default()
        .with_message_id(id.as_str().into())
        .with_headers(h);
    ctx.publish("event", body.as_bytes(), props).await;
    // Wait on the dead-letter queue itself: the log line comes before the copy is confirmed.
    let dead = ctx.dead_queue("event");
    common::eventually(WAIT, "the message is in the dead-letter queue", || async {
        ctx.queue_len(&dead).await == 1
    })
    .await;

    let raw = std::fs::read(&log).unwrap();
    assert!(!raw.contains(&0x1b), "a raw ESC reached the log");
    assert!(!raw.contains(&0x07), "a raw BEL reached the log");
    let text = String::from_utf8(raw).unwrap();
    let mut seen = 0;
    for line in text.lines() {
        if let Some(at) = line.find("FORGED") {
            seen += 1;
            assert!(!line.starts_with(forged), "forged line: {line}");
            assert!(
                line[..at].ends_with(&forged[..forged.len() - "FORGED".len()])
                    && line[..at].contains("\\n"),
                "FORGED not inside an escaped field: {line}"
            );
        }
    }
    assert!(
        seen >= 3,
        "id, traceparent and attempt were logged:\n{text}"
    );
    assert!(text.contains("evil\\n2026-11-30T00:00:00"), "{text}");
    assert!(text.contains("\\x1b[2J"), "{text}");
    drop(agent);

    // The operator's listing escapes the same id.
    let cfg = ctx.write_config();
    let (code, listing) = agent_cli(&[
        "--config",
        cfg.to_str().unwrap(),
        "dead-letters",
        "list",
        "event",
    ]);
    assert_eq!(code, 0, "{listing}");
    assert!(
        !listing.contains('\x1b') && !listing.contains('\x07'),
        "{listing}"
    );
    assert!(listing.contains("evil\\n2026-11-30"), "{listing}");
    assert!(
        listing.lines().all(|l| !l.starts_with("2026-11-30")),
        "{listing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_keeps_its_original_route() {
    let mut ctx = TestCtx::new("replay-route").await;
    let exchange = ctx.use_topic_exchange();
    let agent = ctx.start_agent().await;
    ctx.publish_json_to(&exchange, "orders.created", "rr", "status:404")
        .await;
    common::eventually(WAIT, "dead-lettered", || async {
        agent.stats()["event"].dead_lettered == 1
    })
    .await;
    // The replayed copy comes through the default exchange: only the agent's re-seal keeps the
    // original route believable.
    let cfg = ctx.write_config();
    let (code, out) = agent_cli(&[
        "--config",
        cfg.to_str().unwrap(),
        "dead-letters",
        "replay",
        "event",
    ]);
    assert_eq!(code, 0, "{out}");
    common::eventually(WAIT, "dead-lettered again", || async {
        agent.stats()["event"].dead_lettered == 2
    })
    .await;
    let records = &ctx.records_by_id()["rr"];
    assert_eq!(records.len(), 2);
    for r in records {
        let p = &r["params"];
        assert_eq!(p["HTTP_X_AGENT_ROUTING_KEY"], "orders.created");
        assert_eq!(p["HTTP_X_AGENT_EXCHANGE"], exchange.as_str());
        assert_eq!(p["HTTP_X_AGENT_ATTEMPT"], "1");
    }
    agent.drain().await;
}

/// PHP cuts the media type at the first space: these reach it as forms unless the agent reads
/// them the same way (issue #22, hole 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_types_with_a_word_after_a_space_reach_php_opaque() {
    let ctx = TestCtx::new("formspace").await;
    let agent = ctx.start_agent().await;
    let multipart = "multipart/form-data x; boundary=XyZ";
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\n\
                Content-Type: text/plain\r\n\r\n{\"id\":\"mpx\"}\r\n--XyZ--\r\n";
    let props = BasicProperties::default()
        .with_message_id("mpx".into())
        .with_content_type(multipart.into());
    ctx.publish("event", body.as_bytes(), props).await;
    let urlencoded = "application/x-www-form-urlencoded x";
    let form = "a=1&b=2";
    let props = BasicProperties::default()
        .with_message_id("formx".into())
        .with_content_type(urlencoded.into());
    ctx.publish("event", form.as_bytes(), props).await;

    let records = ctx.wait_records(2, WAIT).await;
    let by_id = |id: &str| {
        records
            .iter()
            .find(|r| r["params"]["HTTP_X_AGENT_MESSAGE_ID"] == id)
            .unwrap_or_else(|| panic!("{id} recorded"))
    };
    for (id, sent, content_type) in [("mpx", body, multipart), ("formx", form, urlencoded)] {
        let record = by_id(id);
        assert_eq!(
            body_of(record),
            sent.as_bytes(),
            "{id}: php://input holds the body (PHP did not parse it as a form)"
        );
        assert_eq!(record["params"]["CONTENT_TYPE"], "application/octet-stream");
        assert_eq!(record["params"]["HTTP_X_AGENT_CONTENT_TYPE"], content_type);
    }
    agent.drain().await;
}

/// Route headers and a made-up seal published straight into `Q.dead` (default exchange): the
/// replay must not seal them (issue #22, hole 1). The message is replayed on its own route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_drops_a_route_forged_in_the_dead_letter_queue() {
    let ctx = TestCtx::new("replay-forged").await;
    let agent = ctx.start_agent().await;
    let mut h = FieldTable::default();
    h.insert("x-agent-attempt".into(), AMQPValue::LongLongInt(3));
    h.insert("x-agent-original-exchange".into(), text("billing"));
    h.insert(
        "x-agent-original-routing-key".into(),
        text("refund.approve"),
    );
    h.insert("x-agent-seal".into(), text(&"ab".repeat(32)));
    h.insert("x-agent-reason".into(), text("http_404"));
    h.insert("tenant".into(), text("acme"));
    let body = serde_json::json!({"id": "forged", "behave": "ok"}).to_string();
    let props = BasicProperties::default()
        .with_message_id("forged".into())
        .with_headers(h);
    ctx.publish_to("", &ctx.dead_queue("event"), body.as_bytes(), props)
        .await;
    let cfg = ctx.write_config();
    let (code, out) = agent_cli(&[
        "--config",
        cfg.to_str().unwrap(),
        "dead-letters",
        "replay",
        "event",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("replayed 1"), "{out}");
    let record = ctx.wait_records(1, WAIT).await.remove(0);
    let p = &record["params"];
    assert_eq!(p["HTTP_X_AGENT_MESSAGE_ID"], "forged");
    assert_eq!(p["HTTP_X_AGENT_EXCHANGE"], "", "{p}");
    assert_eq!(
        p["HTTP_X_AGENT_ROUTING_KEY"],
        ctx.queue("event").as_str(),
        "{p}"
    );
    assert_eq!(p["HTTP_X_AGENT_ATTEMPT"], "1");
    let headers: serde_json::Value =
        serde_json::from_str(p["HTTP_X_AGENT_HEADERS"].as_str().unwrap()).unwrap();
    assert_eq!(
        headers["tenant"], "acme",
        "other headers are kept: {headers}"
    );
    assert!(
        headers.get("x-agent-original-routing-key").is_none(),
        "{headers}"
    );
    assert!(out.contains("1 unverified route(s) dropped"), "{out}");
    common::eventually(WAIT, "acked", || async {
        agent.stats()["event"].acked == 1
    })
    .await;
    agent.drain().await;
}
