//! End-to-end: real RabbitMQ, real php-fpm with the recording receiver, the agent in-process.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{TestCtx, body_of, header_str};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, ByteArray, FieldArray, FieldTable, LongString};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_messages_over_both_subjects_are_each_handled_once_and_acked() {
    let ctx = TestCtx::new("bulk").await;
    ctx.declare().await;
    let per_subject = 1500;
    for subject in ["event", "command"] {
        for i in 0..per_subject {
            ctx.publish_json(subject, &format!("{subject}-{i}"), "ok")
                .await;
        }
    }
    let agent = ctx.start_agent().await;
    ctx.wait_records(2 * per_subject, WAIT).await;
    common::eventually(WAIT, "every message acked", || async {
        agent.stats().values().map(|s| s.acked).sum::<u64>() == 2 * per_subject as u64
    })
    .await;
    let by_id = ctx.records_by_id();
    assert_eq!(by_id.len(), 2 * per_subject);
    let dupes: Vec<_> = by_id
        .iter()
        .filter(|(_, r)| r.len() != 1)
        .map(|(id, _)| id)
        .collect();
    assert!(dupes.is_empty(), "handled more than once: {dupes:?}");
    for subject in ["event", "command"] {
        let expected: BTreeSet<String> =
            (0..per_subject).map(|i| format!("{subject}-{i}")).collect();
        let got: BTreeSet<String> = by_id
            .keys()
            .filter(|k| k.starts_with(subject))
            .cloned()
            .collect();
        assert_eq!(got, expected);
        assert!(
            by_id[&format!("{subject}-0")][0]["params"]["REQUEST_URI"]
                .as_str()
                .unwrap()
                .ends_with(subject)
        );
        assert_eq!(ctx.queue_len(&ctx.queue(subject)).await, 0);
    }
    let stats = agent.stats();
    assert_eq!(stats["event"].retried + stats["command"].retried, 0);
    assert!(agent.drain().await.is_none());
    // Nothing was left unacked: after the agent closed its connections, the queues stay empty.
    for subject in ["event", "command"] {
        assert_eq!(ctx.queue_len(&ctx.queue(subject)).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_arrive_byte_for_byte() {
    let ctx = TestCtx::new("params").await;
    let agent = ctx.start_agent().await;

    let mut nested = FieldTable::default();
    nested.insert("depth".into(), AMQPValue::LongLongInt(2));
    let mut headers = FieldTable::default();
    headers.insert("tenant".into(), AMQPValue::LongString("acme".into()));
    headers.insert("nested".into(), AMQPValue::FieldTable(nested));
    headers.insert(
        "list".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongLongInt(1),
            AMQPValue::Boolean(false),
        ])),
    );
    headers.insert(
        "raw".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![0u8, 159, 146, 150])),
    );
    headers.insert(
        "PHP_VALUE".into(),
        AMQPValue::LongString("memory_limit=1M".into()),
    );
    headers.insert(
        "SCRIPT_FILENAME".into(),
        AMQPValue::LongString("/etc/passwd".into()),
    );
    headers.insert("crlf".into(), AMQPValue::LongString("a\r\nb".into()));
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    );
    headers.insert(
        "tracestate".into(),
        AMQPValue::LongString("vendor=value".into()),
    );

    // Not UTF-8, with NUL bytes and the FastCGI record boundary crossed.
    let mut binary: Vec<u8> = vec![0xff, 0xfe, 0x00, b'{', 0x80];
    binary.extend((0..70_000u32).map(|i| (i % 251) as u8));
    let props = BasicProperties::default()
        .with_message_id("bin-1".into())
        .with_content_type("application/x-test".into())
        .with_type("order.placed".into())
        .with_correlation_id("corr-9".into())
        .with_timestamp(1_700_000_123)
        .with_headers(headers);
    ctx.publish("event", &binary, props).await;

    // 1 MiB JSON body.
    let big = serde_json::json!({"id": "big-1", "pad": "x".repeat(1 << 20)}).to_string();
    ctx.publish(
        "command",
        big.as_bytes(),
        BasicProperties::default().with_message_id("big-1".into()),
    )
    .await;

    let records = ctx.wait_records(2, WAIT).await;
    let bin = records
        .iter()
        .find(|r| r["params"]["HTTP_X_AGENT_MESSAGE_ID"] == "bin-1")
        .expect("binary message recorded");
    let p = &bin["params"];
    assert_eq!(bin["body_len"], binary.len());
    assert_eq!(
        bin["body_sha256"].as_str().unwrap(),
        hex::encode(Sha256::digest(&binary))
    );
    assert_eq!(p["REQUEST_METHOD"], "POST");
    assert_eq!(
        p["SCRIPT_FILENAME"],
        common::fpm().recorder.display().to_string()
    );
    assert_eq!(p["REQUEST_URI"], format!("/t/{}/event", ctx.id));
    assert_eq!(p["CONTENT_TYPE"], "application/x-test");
    assert_eq!(p["CONTENT_LENGTH"], binary.len().to_string());
    assert_eq!(p["HTTP_X_AGENT_SUBJECT"], "event");
    assert_eq!(p["HTTP_X_AGENT_ATTEMPT"], "1");
    assert_eq!(p["HTTP_X_AGENT_REDELIVERED"], "0");
    assert_eq!(p["HTTP_X_AGENT_ROUTING_KEY"], ctx.queue("event"));
    assert_eq!(p["HTTP_X_AGENT_EXCHANGE"], "");
    assert_eq!(p["HTTP_X_AGENT_TYPE"], "order.placed");
    assert_eq!(p["HTTP_X_AGENT_CORRELATION_ID"], "corr-9");
    assert_eq!(p["HTTP_X_AGENT_TIMESTAMP"], "1700000123");
    assert_eq!(
        p["HTTP_TRACEPARENT"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(p["HTTP_TRACESTATE"], "vendor=value");
    assert_eq!(bin["sig_ok"], true, "signature must verify in PHP");
    let h: serde_json::Value =
        serde_json::from_str(p["HTTP_X_AGENT_HEADERS"].as_str().unwrap()).unwrap();
    assert_eq!(h["tenant"], "acme");
    assert_eq!(h["nested"]["depth"], 2);
    assert_eq!(h["list"], serde_json::json!([1, false]));
    assert_eq!(h["raw"], "AJ+Slg==");
    assert_eq!(h["crlf"], "a\r\nb");
    // A header named like a FastCGI param stays inside the JSON.
    assert_eq!(h["PHP_VALUE"], "memory_limit=1M");
    assert!(p.get("PHP_VALUE").is_none() && p.get("PHP_ADMIN_VALUE").is_none());
    assert_eq!(bin["ini_memory_limit"], "256M");
    for (name, value) in p.as_object().unwrap() {
        let v = value.as_str().unwrap_or_default();
        assert!(!v.contains(['\r', '\n', '\0']), "{name} carries CR/LF/NUL");
    }

    let big_rec = records.iter().find(|r| r["json_id"] == "big-1").unwrap();
    assert_eq!(big_rec["body_len"], big.len());
    assert_eq!(
        big_rec["body_sha256"].as_str().unwrap(),
        hex::encode(Sha256::digest(big.as_bytes()))
    );
    assert_eq!(
        big_rec["params"]["CONTENT_TYPE"],
        "application/octet-stream"
    );
    assert_eq!(big_rec["params"]["HTTP_X_AGENT_SUBJECT"], "command");
    assert!(agent.drain().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_verifies_signatures_and_refuses_a_wrong_secret() {
    // The example receiver verifies the signature with the pool's AGENT_SIGNING_SECRET.
    let mut good = TestCtx::new("sig-good").await;
    good.script = common::fpm().receiver.clone();
    let agent = good.start_agent().await;
    good.publish_json("event", "s1", "ok").await;
    common::eventually(WAIT, "acked by receiver.php", || async {
        agent.stats()["event"].acked == 1
    })
    .await;
    assert_eq!(agent.stats()["event"].dead_lettered, 0);
    agent.drain().await;

    // A rotation done in the wrong order: PHP's secret is not one of the agent's. Every request
    // would be refused; that is the configuration's fault, not the messages': the subject
    // pauses, no message is dead-lettered or uses an attempt, and all are handled once the
    // secrets agree again (issue #20, case 5; before, all five were dead-lettered at once).
    let mut bad = TestCtx::new("sig-bad").await;
    bad.script = common::fpm().receiver.clone();
    bad.secret = "a-wrong-secret-0123456789".to_owned();
    bad.retry_toml = "[retry]\ndelays = [\"200ms\"]\nmax_attempts = 1\n".to_owned();
    let agent = bad.start_agent().await;
    for i in 0..5 {
        bad.publish_json("event", &format!("s2-{i}"), "ok").await;
    }
    common::eventually(WAIT, "paused after a refused signature", || async {
        agent.stats()["event"].paused
    })
    .await;
    let metrics = agent.handle().metrics().encode();
    assert!(
        common::metric_sum(
            &metrics,
            "amqp_agent_signature_rejected_total",
            &[("subject", "event")]
        ) >= 1.0,
        "{metrics}"
    );
    let stats = agent.stats()["event"];
    assert_eq!((stats.dead_lettered, stats.acked), (0, 0), "{stats:?}");
    assert!(bad.drain_dead("event").await.is_empty());
    // The operator fixes the agent's side (SIGHUP with the right secret).
    bad.secret = common::SECRET.to_owned();
    agent.reload(bad.config());
    common::eventually(WAIT, "all five handled once the secrets agree", || async {
        agent.stats()["event"].acked == 5
    })
    .await;
    assert_eq!(agent.stats()["event"].dead_lettered, 0);
    assert!(
        bad.drain_dead("event").await.is_empty(),
        "max_attempts = 1 and none used"
    );
    common::eventually(WAIT, "consuming again", || async {
        !agent.stats()["event"].paused
    })
    .await;
    agent.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcome_table_rows() {
    let mut ctx = TestCtx::new("outcomes").await;
    ctx.extra_toml = "[limits]\nmax_body_bytes = 1000\n".to_owned();
    ctx.retry_toml = "[retry]\ndelays = [\"100ms\"]\nmax_attempts = 3\n".to_owned();
    let agent = ctx.start_agent().await;
    let cases = [
        ("ok", "ok"),
        ("s404", "status:404"),
        ("s422", "status:422"),
        ("s503", "status:503"),
        ("s500", "status:500"),
        ("s429", "status:429"),
        ("s408", "status:408"),
        ("s425", "status:425"),
        ("noack", "noack"),
        ("flaky", "fail-until:2"),
        ("fatal", "fatal"),
        ("slow", "sleep:7000"),
    ];
    for (id, behave) in cases {
        ctx.publish_json("event", id, behave).await;
    }
    // Over max_body_bytes: dead-lettered without calling FPM.
    let huge = serde_json::json!({"id": "toolarge", "pad": "y".repeat(2000)}).to_string();
    ctx.publish(
        "event",
        huge.as_bytes(),
        BasicProperties::default().with_message_id("toolarge".into()),
    )
    .await;

    let expected_dead = [
        "s404", "s422", "s503", "s500", "s429", "s408", "s425", "noack", "fatal", "slow",
        "toolarge",
    ];
    common::eventually(Duration::from_secs(90), "outcomes settled", || async {
        let s = agent.stats()["event"];
        s.dead_lettered as usize == expected_dead.len() && s.acked == 2 && s.in_flight == 0
    })
    .await;
    let dead = ctx.drain_dead("event").await;
    let by_id: std::collections::BTreeMap<String, &BasicProperties> = dead
        .iter()
        .map(|(p, _)| (p.message_id().as_ref().unwrap().to_string(), p))
        .collect();
    assert_eq!(
        by_id.keys().cloned().collect::<BTreeSet<_>>(),
        expected_dead.iter().map(|s| (*s).to_owned()).collect()
    );
    let records = ctx.records_by_id();
    let attempts = |id: &str| records.get(id).map_or(0, Vec::len);
    // Any other 4xx: dead-lettered at once, one attempt.
    for id in ["s404", "s422"] {
        assert_eq!(attempts(id), 1, "{id}");
        assert_eq!(
            header_str(by_id[id], "x-agent-reason").as_deref(),
            Some("rejected")
        );
        assert_eq!(
            header_str(by_id[id], "x-agent-attempts").as_deref(),
            Some("1")
        );
    }
    assert_eq!(
        header_str(by_id["s404"], "x-agent-status").as_deref(),
        Some("404")
    );
    // Retryable: max_attempts attempts, then dead-lettered with the reason.
    for id in ["s503", "s500", "s429", "s408", "s425", "noack", "fatal"] {
        assert_eq!(attempts(id), 3, "{id}");
        assert_eq!(
            header_str(by_id[id], "x-agent-reason").as_deref(),
            Some("max_attempts"),
            "{id}"
        );
        assert_eq!(
            header_str(by_id[id], "x-agent-attempts").as_deref(),
            Some("3"),
            "{id}"
        );
        assert!(
            header_str(by_id[id], "x-agent-last-error").is_some_and(|e| !e.is_empty()),
            "{id}"
        );
    }
    assert_eq!(
        header_str(by_id["s503"], "x-agent-status").as_deref(),
        Some("503")
    );
    assert!(
        header_str(by_id["noack"], "x-agent-last-error")
            .unwrap()
            .contains("no_ack_header")
    );
    // The timeout (5 s) cut the slow handler: retried, then dead-lettered as timeouts.
    assert_eq!(attempts("slow"), 3);
    assert!(
        header_str(by_id["slow"], "x-agent-last-error")
            .unwrap()
            .contains("timed out")
    );
    // Too large: FPM never called.
    assert_eq!(attempts("toolarge"), 0);
    assert_eq!(
        header_str(by_id["toolarge"], "x-agent-reason").as_deref(),
        Some("body_too_large")
    );
    // Successes.
    assert_eq!(attempts("ok"), 1);
    let flaky = &records["flaky"];
    assert_eq!(flaky.len(), 2);
    assert_eq!(flaky[1]["params"]["HTTP_X_AGENT_ATTEMPT"], "2");
    let headers: serde_json::Value =
        serde_json::from_str(flaky[1]["params"]["HTTP_X_AGENT_HEADERS"].as_str().unwrap()).unwrap();
    assert!(
        headers["x-agent-last-error"]
            .as_str()
            .unwrap()
            .contains("500")
    );
    assert_eq!(ctx.queue_len(&ctx.queue("event")).await, 0);
    agent.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_really_wait_and_a_long_delay_does_not_block_a_short_one() {
    let mut ctx = TestCtx::new("delays").await;
    ctx.retry_toml = "[retry]\ndelays = [\"1s\"]\nmax_attempts = 3\n".to_owned();
    let agent = ctx.start_agent().await;
    // "long" asks for 5 s via Retry-After; "short" uses the 1 s schedule and is published after.
    ctx.publish_json("event", "long", "retry-after:503:5").await;
    common::eventually(WAIT, "first attempt of long", || async {
        ctx.records_by_id().contains_key("long")
    })
    .await;
    ctx.publish_json("event", "short", "fail-until:2").await;
    common::eventually(WAIT, "short handled twice", || async {
        ctx.records_by_id()
            .get("short")
            .is_some_and(|r| r.len() == 2)
    })
    .await;
    let records = ctx.records_by_id();
    let start = |id: &str, n: usize| records[id][n]["t_start_us"].as_i64().unwrap();
    let short_gap = start("short", 1) - start("short", 0);
    assert!(
        short_gap >= 1_000_000,
        "1 s retry served after {short_gap} µs"
    );
    // The 1 s retry was not held behind the 5 s one published before it.
    assert_eq!(
        records["long"].len(),
        1,
        "short's second attempt came before long's retry"
    );
    common::eventually(WAIT, "long retried", || async {
        ctx.records_by_id()["long"].len() >= 2
    })
    .await;
    let records = ctx.records_by_id();
    let long_gap = records["long"][1]["t_start_us"].as_i64().unwrap()
        - records["long"][0]["t_start_us"].as_i64().unwrap();
    assert!(
        long_gap >= 5_000_000,
        "Retry-After: 5 honoured, got {long_gap} µs"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_messages_are_still_delivered() {
    let ctx = TestCtx::new("odd").await;
    let agent = ctx.start_agent().await;
    // No message_id: the agent makes one up, and a retry keeps it.
    let body = serde_json::json!({"id": "noid", "behave": "fail-until:2"}).to_string();
    ctx.publish("command", body.as_bytes(), BasicProperties::default())
        .await;
    // Non-numeric attempt header and a malformed traceparent.
    let mut h = FieldTable::default();
    h.insert(
        "x-agent-attempt".into(),
        AMQPValue::LongString(LongString::from("many")),
    );
    h.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from("not-a-trace")),
    );
    let body = serde_json::json!({"id": "weird", "behave": "ok"}).to_string();
    ctx.publish(
        "command",
        body.as_bytes(),
        BasicProperties::default()
            .with_message_id("weird".into())
            .with_headers(h),
    )
    .await;
    common::eventually(WAIT, "both handled", || async {
        let r = ctx.records_by_id();
        r.get("noid").is_some_and(|v| v.len() == 2) && r.contains_key("weird")
    })
    .await;
    let r = ctx.records_by_id();
    let id1 = r["noid"][0]["params"]["HTTP_X_AGENT_MESSAGE_ID"]
        .as_str()
        .unwrap();
    let id2 = r["noid"][1]["params"]["HTTP_X_AGENT_MESSAGE_ID"]
        .as_str()
        .unwrap();
    assert_eq!(id1.len(), 36, "generated UUID");
    assert_eq!(id1, id2, "the retry keeps the generated id");
    assert_eq!(r["weird"][0]["params"]["HTTP_X_AGENT_ATTEMPT"], "1");
    assert!(r["weird"][0]["params"].get("HTTP_TRACEPARENT").is_none());
    agent.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_binary_bodies_round_trip_exactly() {
    let ctx = TestCtx::new("binary").await;
    let agent = ctx.start_agent().await;
    let body: Vec<u8> = (0..=255u8).chain([0xc3, 0x28, 0x00, 0xff]).collect();
    ctx.publish(
        "event",
        &body,
        BasicProperties::default().with_message_id("b".into()),
    )
    .await;
    let records = ctx.wait_records(1, WAIT).await;
    assert_eq!(body_of(&records[0]), body);
    agent.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_bindings_route_and_retries_keep_the_original_routing_key() {
    let mut ctx = TestCtx::new("exchange").await;
    let exchange = ctx.use_topic_exchange();
    let agent = ctx.start_agent().await;
    ctx.publish_json_to(&exchange, "orders.created", "routed", "fail-until:2")
        .await;
    common::eventually(WAIT, "retried once", || async {
        ctx.records_by_id()
            .get("routed")
            .is_some_and(|r| r.len() == 2)
    })
    .await;
    for record in &ctx.records_by_id()["routed"] {
        assert_eq!(record["params"]["HTTP_X_AGENT_EXCHANGE"], exchange.as_str());
        assert_eq!(
            record["params"]["HTTP_X_AGENT_ROUTING_KEY"],
            "orders.created"
        );
    }
    agent.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_with_a_reason_or_handled() {
    let mut ctx = TestCtx::new("badinput").await;
    ctx.retry_toml = "[retry]\ndelays = [\"100ms\"]\nmax_attempts = 2\n".to_owned();
    let agent = ctx.start_agent().await;
    let json = |id: &str, behave: &str| {
        serde_json::json!({"id": id, "behave": behave})
            .to_string()
            .into_bytes()
    };
    let props = |id: &str| BasicProperties::default().with_message_id(id.into());

    // A header table with thousands of entries: too large to encode.
    let mut wide = FieldTable::default();
    // (3,000 entries fit RabbitMQ's 128 KiB frame; their JSON exceeds limits.max_headers_bytes.)
    for i in 0..3000 {
        wide.insert(
            format!("h{i}").into(),
            AMQPValue::LongString(LongString::from("0123456789abcdef")),
        );
    }
    ctx.publish(
        "event",
        &json("wide", "ok"),
        props("wide").with_headers(wide),
    )
    .await;
    // Deeply nested tables.
    let mut deep = FieldTable::default();
    for _ in 0..40 {
        let mut outer = FieldTable::default();
        outer.insert("t".into(), AMQPValue::FieldTable(deep));
        deep = outer;
    }
    ctx.publish(
        "event",
        &json("deep", "ok"),
        props("deep").with_headers(deep),
    )
    .await;
    // Header values with CR, LF, NUL: delivered, JSON-escaped.
    let mut ctl = FieldTable::default();
    ctl.insert(
        "x".into(),
        AMQPValue::LongString(LongString::from("a\r\nb\0c")),
    );
    ctx.publish("event", &json("ctl", "ok"), props("ctl").with_headers(ctl))
        .await;
    // FPM replies that cannot count as success: huge (over limits.max_response_bytes), cut off
    // by the child dying mid-reply, and stderr only.
    ctx.publish("command", &json("huge", "huge"), props("huge"))
        .await;
    ctx.publish("command", &json("cut", "exit-midway"), props("cut"))
        .await;
    ctx.publish("command", &json("stderr", "stderr-only"), props("stderr"))
        .await;

    common::eventually(WAIT, "bad input settled", || async {
        let s = agent.stats();
        s["event"].dead_lettered == 2
            && s["command"].dead_lettered == 3
            && s["event"].acked == 1
            && s["command"].in_flight == 0
    })
    .await;
    let reason = |dead: &[(BasicProperties, Vec<u8>)], id: &str| {
        let (p, _) = dead
            .iter()
            .find(|(p, _)| p.message_id().as_ref().unwrap().as_str() == id)
            .unwrap_or_else(|| panic!("{id} not dead-lettered"));
        (
            header_str(p, "x-agent-reason").unwrap(),
            header_str(p, "x-agent-last-error").unwrap(),
        )
    };
    let dead_events = ctx.drain_dead("event").await;
    assert_eq!(reason(&dead_events, "wide").0, "headers_unencodable");
    assert_eq!(reason(&dead_events, "deep").0, "headers_unencodable");
    let records = ctx.records_by_id();
    assert!(
        !records.contains_key("wide") && !records.contains_key("deep"),
        "FPM is not called for unencodable headers"
    );
    let ctl_headers: serde_json::Value = serde_json::from_str(
        records["ctl"][0]["params"]["HTTP_X_AGENT_HEADERS"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ctl_headers["x"], "a\r\nb\0c");

    let dead_commands = ctx.drain_dead("command").await;
    let (r, e) = reason(&dead_commands, "huge");
    assert_eq!(r, "max_attempts");
    assert!(e.contains("fpm_reply_too_large"), "{e}");
    let (r, e) = reason(&dead_commands, "cut");
    assert_eq!(r, "max_attempts");
    assert!(
        e.contains("fpm_truncated_reply") || e.contains("fpm_connection_lost"),
        "{e}"
    );
    let (r, e) = reason(&dead_commands, "stderr");
    assert_eq!(r, "max_attempts");
    assert!(e.contains("no_ack_header"), "{e}");
    for id in ["huge", "cut", "stderr"] {
        assert_eq!(records[id].len(), 2, "{id}: two attempts");
    }
    agent.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_queues_are_declared_again_and_consumption_resumes() {
    let ctx = TestCtx::new("deleted").await;
    let agent = ctx.start_agent().await;
    // Delete the delay queue: the next retry declares it again.
    ctx.delete_queue(&ctx.delay_queue("event", Duration::from_millis(100)))
        .await;
    ctx.publish_json("event", "retry-after-delete", "fail-until:2")
        .await;
    common::eventually(WAIT, "retried", || async {
        ctx.records_by_id()
            .get("retry-after-delete")
            .is_some_and(|r| r.len() == 2)
    })
    .await;
    // Delete the main queue: the broker cancels the consumer; the agent redeclares and consumes again.
    ctx.delete_queue(&ctx.queue("command")).await;
    common::eventually(WAIT, "consumer restarted", || async {
        let s = agent.stats()["command"];
        s.consumer_starts >= 2 && s.consuming
    })
    .await;
    ctx.publish_json("command", "after-delete", "ok").await;
    common::eventually(WAIT, "handled after redeclare", || async {
        ctx.records_by_id().contains_key("after-delete")
    })
    .await;
    assert!(agent.fatal().is_none());
    agent.drain().await;
}
