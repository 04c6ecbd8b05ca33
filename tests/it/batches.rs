//! Batches (docs/batches.md) end to end: real RabbitMQ, the harness's php-fpm pool serving the
//! php/receiver package's batch path (tests/php/batch-recorder.php), the agent in-process. Each
//! test publishes 50 messages before the agent starts, so that one worker (pool 1, `batch_max`
//! 50, `batch_wait` 2 s) sends them as one request.

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::{TestCtx, eventually, fpm, header_str};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const N: usize = 50;

/// The batch receiver next to the pool's copy of php/receiver (written by rename, so that a
/// concurrent test never serves a half-written file).
fn batch_script() -> PathBuf {
    let dir = &fpm().dir;
    let target = dir.join("batch-recorder.php");
    let tmp = dir.join(format!(
        "batch-recorder.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/php/batch-recorder.php"),
        &tmp,
    )
    .unwrap();
    std::fs::rename(&tmp, &target).unwrap();
    target
}

/// A test whose event subject sends batches of up to 50 through one worker, with
/// `fpm.timeout` = `fpm_timeout`.
async fn ctx(name: &str, fpm_timeout: &str) -> TestCtx {
    let mut ctx = TestCtx::new(name).await;
    ctx.script = batch_script();
    ctx.pool_size = 1;
    ctx.set("subjects.event.batch_max", 50);
    ctx.set("subjects.event.batch_wait", "2s");
    ctx.set("fpm.timeout", fpm_timeout);
    ctx.declare().await;
    ctx
}

/// Publishes `m-0` … `m-49` to the event queue; `behave(i)` is message i's behaviour.
async fn publish_fifty(ctx: &TestCtx, behave: impl Fn(usize) -> &'static str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..N {
        let id = format!("m-{i}");
        ctx.publish_json("event", &id, behave(i)).await;
        ids.push(id);
    }
    ids
}

/// Records by JSON id, each id's records in the order PHP wrote them.
fn by_id(records: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut map: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in records {
        map.entry(r["json_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(r.clone());
    }
    map
}

fn attempts(records: &[Value]) -> Vec<u64> {
    records
        .iter()
        .map(|r| r["attempt"].as_u64().unwrap())
        .collect()
}

/// The dead-letter queue holds exactly `id`, dead-lettered as `rejected` with `error` in its
/// last error.
async fn assert_dead_letter(ctx: &TestCtx, id: &str, error: &str) {
    let dead = ctx.drain_dead("event").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0.message_id().as_ref().unwrap().as_str(), id);
    assert_eq!(
        header_str(&dead[0].0, "x-agent-reason").as_deref(),
        Some("rejected")
    );
    let last_error = header_str(&dead[0].0, "x-agent-last-error").unwrap();
    assert!(last_error.contains(error), "{last_error}");
}

/// The first request's records: all 50 entries were sent as one batch of 50.
fn assert_first_request_was_one_batch(records: &[Value], handled_in_it: usize) {
    let first = &records[0]["request"];
    let in_first: Vec<_> = records.iter().filter(|r| r["request"] == *first).collect();
    assert_eq!(
        in_first.len(),
        handled_in_it,
        "entries handled in the first request"
    );
    assert!(
        in_first.iter().all(|r| r["batch_size"] == 50),
        "{in_first:?}"
    );
    let order: Vec<_> = in_first
        .iter()
        .map(|r| r["json_id"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..handled_in_it).map(|i| format!("m-{i}")).collect();
    assert_eq!(order, expected, "entries are handled in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_fifty_settles_each_message_by_its_own_outcome() {
    fifty_settled_by_their_own_outcomes("batch-outcomes").await;
}

/// The same batch on the runtime `amqp-agent run` builds (one thread, with the pause before
/// parking of `amqp_agent::wakeups`): the batch's lines are read after pauses, and every entry
/// is still settled by its own line.
#[test]
fn a_batch_on_the_agents_own_runtime_pauses_between_lines_and_settles_the_same() {
    let runtime = amqp_agent::cli::runtime(1).unwrap();
    let before = amqp_agent::wakeups::pauses();
    runtime.block_on(fifty_settled_by_their_own_outcomes("batch-own-runtime"));
    let pauses = amqp_agent::wakeups::pauses() - before;
    assert!(pauses > 0, "no pause while the batch of 50 ran");
}

/// 50 entries in one batch: m-7 fails once (retried, then acked alone), m-12 is rejected
/// (dead-lettered), the other 48 are acked; one batch request in all.
async fn fifty_settled_by_their_own_outcomes(name: &str) {
    let ctx = ctx(name, "10s").await;
    publish_fifty(&ctx, |i| match i {
        7 => "fail-once",
        12 => "reject",
        _ => "ok",
    })
    .await;
    let agent = ctx.start_agent().await;
    // 50 in the batch, then m-7's second attempt.
    ctx.wait_records(N + 1, WAIT).await;
    eventually(WAIT, "49 acked, 1 retried, 1 dead-lettered", || async {
        let s = &agent.stats()["event"];
        (s.acked, s.retried, s.dead_lettered) == (49, 1, 1)
    })
    .await;
    let records = ctx.records();
    assert_first_request_was_one_batch(&records, N);
    let by_id = by_id(&records);
    assert_eq!(by_id.len(), N);
    for (id, recs) in &by_id {
        let want: &[u64] = if id == "m-7" { &[1, 2] } else { &[1] };
        assert_eq!(attempts(recs), want, "{id}");
    }
    // m-7's retry came back alone: an ordinary single request.
    assert_eq!(by_id["m-7"][1]["batch_size"], Value::Null);
    assert_dead_letter(&ctx, "m-12", "rejected by the handler").await;
    assert_eq!(ctx.queue_len(&ctx.queue("event")).await, 0);
    let metrics = agent.handle().metrics().encode();
    assert!(
        metrics.contains("amqp_agent_batch_size_count{subject=\"event\"} 1"),
        "one batch request: {}",
        metrics
            .lines()
            .filter(|l| l.contains("batch_size"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(agent.drain().await.is_none());
}

/// Waits until the fifty are acked, then checks that the first request was one batch in which
/// PHP ran m-0 … m-20 (m-20 the one that broke it), that nothing was lost and that m-0 …
/// m-`kept - 1` had their outcome in it (run once, on attempt 1). The records by id.
async fn fifty_acked_after_a_break(
    ctx: &TestCtx,
    agent: &amqp_agent::agent::Agent,
    kept: usize,
) -> BTreeMap<String, Vec<Value>> {
    eventually(WAIT, "50 acked", || async {
        agent.stats()["event"].acked == N as u64
    })
    .await;
    let records = ctx.records();
    assert_first_request_was_one_batch(&records[..21], 21);
    let by_id = by_id(&records);
    assert_eq!(by_id.len(), N, "lost 0");
    for i in 0..kept {
        assert_eq!(
            attempts(&by_id[&format!("m-{i}")]),
            [1],
            "m-{i} had its outcome"
        );
    }
    by_id
}

/// How the batch fails at m-20, on its first attempt.
enum Failure {
    /// m-20 sleeps; once the agent has settled m-0 … m-19 the test kills the FPM child (-9).
    Kill,
    /// m-20 sleeps past `fpm.timeout`.
    Timeout,
}

/// After a failure mid-batch, m-0 … m-19 have their outcome and are never handled again; m-20,
/// which PHP was running, counts one failed attempt and is handled on its second; m-21 … m-49
/// never ran: they go back to the queue without using an attempt and are handled alone, on
/// attempt 1. Nothing is lost.
async fn failure_mid_batch(name: &str, failure: Failure) {
    let (behave, fpm_timeout) = match failure {
        Failure::Kill => ("sleep-once:30000", "60s"),
        // After the timeout the child finishes m-20, and its next write (m-20's outcome with
        // m-21's `start` line) fails on the connection the agent reset: m-21 never runs there.
        Failure::Timeout => ("sleep-once:3500", "2s"),
    };
    let ctx = ctx(name, fpm_timeout).await;
    publish_fifty(&ctx, |i| if i == 20 { behave } else { "ok" }).await;
    let agent = ctx.start_agent().await;
    if let Failure::Kill = failure {
        eventually(WAIT, "m-0 … m-19 settled, m-20 running", || async {
            agent.stats()["event"].acked == 20 && by_id(&ctx.records()).contains_key("m-20")
        })
        .await;
        let pid = by_id(&ctx.records())["m-20"][0]["pid"].as_i64().unwrap();
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    }
    let by_id = fifty_acked_after_a_break(&ctx, &agent, 20).await;
    // A timeout blames m-20 (an attempt). A killed child whose socket still held unread input
    // resets the connection, and a reset may drop lines the agent had not read: then nobody is
    // blamed and m-20 goes alone like the others, without using an attempt (it is then blamed
    // for what it does alone). Either way no other entry uses an attempt.
    let m20 = attempts(&by_id["m-20"]);
    let blamed = m20 == [1, 2];
    assert!(
        blamed || (matches!(failure, Failure::Kill) && m20 == [1, 1]),
        "m-20: {m20:?}"
    );
    // The rest ran once, alone, on attempt 1: none ran a second time in a child still running
    // the batch after the agent gave up.
    let mut twice = 0;
    for i in 21..N {
        let recs = &by_id[&format!("m-{i}")];
        assert!(recs.iter().all(|r| r["attempt"] == 1), "m-{i}: {recs:?}");
        assert!(
            recs.iter().any(|r| r["batch_size"] == Value::Null),
            "m-{i} handled alone: {recs:?}"
        );
        twice += recs.len() - 1;
    }
    assert_eq!(twice, 0, "{twice} handled twice after the failure");
    let stats = agent.stats()["event"];
    let expected = if blamed { (1, 29, 0) } else { (0, 30, 0) };
    assert_eq!(
        (stats.retried, stats.requeued, stats.dead_lettered),
        expected
    );
    assert_eq!(ctx.queue_len(&ctx.queue("event")).await, 0);
    assert!(ctx.drain_dead("event").await.is_empty());
    assert!(agent.drain().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_killed_mid_batch_blames_only_the_running_entry() {
    failure_mid_batch("batch-kill", Failure::Kill).await;
}

/// The same kill on the runtime `amqp-agent run` builds, where the thread pauses before parking
/// while the batch is mid-way (`amqp_agent::wakeups`): lines read after a pause count the same.
#[test]
fn a_child_killed_mid_batch_on_the_agents_own_runtime_blames_only_the_running_entry() {
    let runtime = amqp_agent::cli::runtime(1).unwrap();
    let before = amqp_agent::wakeups::pauses();
    runtime.block_on(failure_mid_batch("batch-kill-own", Failure::Kill));
    assert!(
        amqp_agent::wakeups::pauses() > before,
        "no pause while the batch ran"
    );
}

/// PHP dies in the reset between two entries (the framework's long-running-worker reset): the
/// packages write an entry's outcome line together with the next entry's `start` line, then
/// reset, so the entry before keeps its ack and the next one takes the failure (an attempt; it
/// never ran), retried alone; the rest go back to the queue without using one
/// (docs/batches.md, "One write per entry").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_that_kills_php_is_the_next_entrys_failure() {
    let ctx = ctx("batch-reset-exit", "10s").await;
    publish_fifty(&ctx, |i| if i == 20 { "exit-in-reset-once" } else { "ok" }).await;
    let agent = ctx.start_agent().await;
    let by_id = fifty_acked_after_a_break(&ctx, &agent, 21).await;
    assert_eq!(
        attempts(&by_id["m-21"]),
        [2],
        "m-21 never ran in the batch and used an attempt"
    );
    assert!(
        by_id["m-21"][0]["batch_size"] == Value::Null,
        "retried alone"
    );
    for i in 22..N {
        let recs = &by_id[&format!("m-{i}")];
        assert_eq!(attempts(recs), [1], "m-{i}");
        assert!(
            recs[0]["batch_size"] == Value::Null,
            "m-{i} handled alone: {recs:?}"
        );
    }
    let stats = agent.stats()["event"];
    assert_eq!(
        (stats.retried, stats.requeued, stats.dead_lettered),
        (1, 28, 0)
    );
    assert_eq!(ctx.queue_len(&ctx.queue("event")).await, 0);
    assert!(ctx.drain_dead("event").await.is_empty());
    assert!(agent.drain().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_mid_batch_blames_only_the_running_entry() {
    failure_mid_batch("batch-timeout", Failure::Timeout).await;
}

/// An entry over `limits.max_body_bytes` is dead-lettered alone, without reaching PHP; the
/// other 49 of the batch are handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_entry_is_dead_lettered_alone() {
    let mut ctx = ctx("batch-oversized", "10s").await;
    ctx.set("limits.max_body_bytes", 1000);
    for i in 0..N {
        let id = format!("m-{i}");
        if i == 30 {
            let body = serde_json::json!({"id": id, "pad": "x".repeat(2000)}).to_string();
            let props = lapin::BasicProperties::default().with_message_id(id.as_str().into());
            ctx.publish("event", body.as_bytes(), props).await;
        } else {
            ctx.publish_json("event", &id, "ok").await;
        }
    }
    let agent = ctx.start_agent().await;
    eventually(WAIT, "49 acked, 1 dead-lettered", || async {
        let s = &agent.stats()["event"];
        (s.acked, s.dead_lettered) == (49, 1)
    })
    .await;
    let records = ctx.records();
    let by_id = by_id(&records);
    assert_eq!(by_id.len(), N - 1);
    assert!(!by_id.contains_key("m-30"), "never sent to PHP");
    assert!(by_id.values().all(|r| attempts(r) == [1]));
    // The oversized entry was left out of the request: 49 entries went.
    assert!(records.iter().all(|r| r["batch_size"] == 49), "{records:?}");
    let dead = ctx.drain_dead("event").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0.message_id().as_ref().unwrap().as_str(), "m-30");
    assert_eq!(
        header_str(&dead[0].0, "x-agent-reason").as_deref(),
        Some("body_too_large")
    );
    assert!(agent.drain().await.is_none());
}

/// A hostile batch sent straight to php-fpm, as someone who can reach FPM would: built with the
/// agent's own encoder and signatures, then one entry's signature replaced by another entry's.
/// The php/receiver package refuses that entry alone (401) and handles the 49 others; the
/// agent's reply parser reads the 401 line as that entry's dead-letter verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_entry_is_rejected_alone() {
    use amqp_agent::batch::outcomes::Reader;
    use amqp_agent::batch::wire::Encoder;
    use amqp_agent::contract::{Envelope, RequestTemplate};
    use amqp_agent::outcome::Verdict;
    let ctx = ctx("batch-hostile", "10s").await;
    let config = ctx.config();
    let template = RequestTemplate::new(&config, "event");
    let bodies: Vec<String> = (0..N)
        .map(|i| serde_json::json!({"id": format!("m-{i}"), "behave": "ok"}).to_string())
        .collect();
    let ids: Vec<String> = (0..N).map(|i| format!("m-{i}")).collect();
    let envelopes: Vec<Envelope<'_>> = ids
        .iter()
        .map(|id| Envelope {
            subject: "event",
            message_id: id.as_str().into(),
            message_id_generated: false,
            attempt: 1,
            redelivered: false,
            routing_key: "event",
            exchange: "",
            content_type: Some("application/json"),
            kind: None,
            correlation_id: None,
            timestamp: None,
            headers: None,
        })
        .collect();
    let now = amqp_agent::contract::unix_now();
    let all: Vec<_> = envelopes
        .iter()
        .zip(&bodies)
        .map(|(e, b)| template.params(e, b.as_bytes(), (None, None), now).unwrap())
        .collect();
    let signature = |p: &[(&'static str, std::borrow::Cow<'_, str>)]| {
        p.iter()
            .find(|(n, _)| *n == "HTTP_X_AGENT_SIGNATURE")
            .unwrap()
            .1
            .to_string()
    };
    let stolen = signature(&all[10]);
    let nonce = "feedc0defeedc0defeedc0defeedc0de";
    let mut encoder = Encoder::new(0, nonce);
    for (i, params) in all.iter().enumerate() {
        let mut params = params.clone();
        if i == 9 {
            for (name, value) in &mut params {
                if *name == "HTTP_X_AGENT_SIGNATURE" {
                    *value = stolen.clone().into();
                }
            }
        }
        encoder.push(i, &params, bodies[i].as_bytes());
    }
    let (params, body) = encoder.finish(&all[0]);
    let mut fpm_client = amqp_agent::fastcgi::FpmClient::new(
        config.fpm_addresses().remove(0),
        Duration::from_secs(10),
        1 << 20,
    );
    let mut reader = Reader::new(0..N, true, nonce);
    let mut verdicts = BTreeMap::new();
    fpm_client
        .request_streaming(&params, &body, &|| false, &mut |chunk| {
            reader
                .feed(chunk, &mut |i, v| {
                    verdicts.insert(i, v);
                })
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap();
    assert_eq!(reader.finish(), None, "every entry answered");
    assert_eq!(verdicts.len(), N);
    for (i, verdict) in &verdicts {
        if *i == 9 {
            assert!(
                // Refused alone, and never handled: a 401 is judged as for a single request
                // (the secrets differ: no attempt used, the subject pauses).
                matches!(
                    verdict,
                    Verdict::Transient {
                        status: Some(401),
                        counts: false,
                        ..
                    }
                ),
                "{verdict:?}"
            );
        } else {
            assert_eq!(*verdict, Verdict::Success, "entry {i}");
        }
    }
    let by_id = by_id(&ctx.records());
    assert_eq!(by_id.len(), N - 1);
    assert!(!by_id.contains_key("m-9"), "never handled");
    assert!(by_id.values().all(|r| r.len() == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fastcgi_span_per_batch_linked_to_each_message_span() {
    use common::procs::AgentProcess;
    let (otlp_port, spans) = common::otlp::receiver().await;
    let mut ctx = ctx("batch-trace", "10s").await;
    ctx.set("subjects.event.batch_max", 5);
    // Five messages, each in its own publisher trace.
    let trace_of = |i: usize| format!("{:032x}", 0xabc0 + i);
    for i in 0..5 {
        let mut headers = lapin::types::FieldTable::default();
        headers.insert(
            "traceparent".into(),
            lapin::types::AMQPValue::LongString(
                format!("00-{}-00f067aa0ba902b7-01", trace_of(i)).into(),
            ),
        );
        // The last entry takes a second: the others' process spans must end before it.
        let behave = if i == 4 { "sleep-once:1000" } else { "ok" };
        let body = serde_json::json!({"id": format!("t-{i}"), "behave": behave}).to_string();
        let props = lapin::BasicProperties::default()
            .with_message_id(format!("t-{i}").into())
            .with_headers(headers);
        ctx.publish("event", body.as_bytes(), props).await;
    }
    let log = fpm().dir.join(format!("{}.log", ctx.id));
    let env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{otlp_port}"),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
    ];
    let mut agent = AgentProcess::start_with(&ctx.write_config(), &log, &env, &[]);
    ctx.wait_records(5, WAIT).await;
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(30)).code(), Some(0));
    eventually(WAIT, "spans exported", || async {
        let spans = spans.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.name.ends_with(" process"))
            .count()
            >= 5
            && spans.iter().any(|s| s.name == "FastCGI POST")
    })
    .await;
    let spans = spans.lock().unwrap().clone();
    let fastcgi: Vec<_> = spans.iter().filter(|s| s.name == "FastCGI POST").collect();
    assert_eq!(fastcgi.len(), 1, "one FastCGI span for the batch");
    let process: Vec<_> = spans
        .iter()
        .filter(|s| s.name.ends_with(" process"))
        .collect();
    assert_eq!(process.len(), 5);
    let mut linked: Vec<String> = fastcgi[0]
        .links
        .iter()
        .map(|l| hex::encode(&l.span_id))
        .collect();
    let mut process_ids: Vec<String> = process.iter().map(|s| hex::encode(&s.span_id)).collect();
    linked.sort();
    process_ids.sort();
    assert_eq!(linked, process_ids, "linked to each message's process span");
    // Each entry continues its own message's trace: PHP's parent is that message's process span.
    let records = ctx.records();
    assert!(records.iter().all(|r| r["batch_size"] == 5));
    for r in &records {
        let i: usize = r["json_id"].as_str().unwrap()[2..].parse().unwrap();
        let tp = r["traceparent"].as_str().unwrap();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts[1], trace_of(i), "{tp}");
        let parent = process
            .iter()
            .find(|s| hex::encode(&s.span_id) == parts[2])
            .expect("PHP's parent is a process span");
        assert_eq!(hex::encode(&parent.trace_id), trace_of(i));
    }
    // A message's process span ends with its own outcome, not with the batch: t-0..t-3 were
    // settled as their lines arrived, a second before t-4's. (tracing-opentelemetry takes a
    // span's end time from its last exit, which is the end of its settlement; the batch's
    // entries live until the batch is done, so nothing may enter their spans after settling.)
    let end_of = |i: usize| {
        process
            .iter()
            .find(|s| hex::encode(&s.trace_id) == trace_of(i))
            .map(|s| s.end_time_unix_nano)
            .expect("a process span per message")
    };
    for i in 0..4 {
        let gap_ms = end_of(4).saturating_sub(end_of(i)) / 1_000_000;
        assert!(
            gap_ms >= 500,
            "t-{i}'s process span ended {gap_ms} ms before t-4's (t-4's handler slept 1000 ms)"
        );
    }
}

/// Message `bad` of a batch of 50 misbehaves on every attempt (`behave`), with
/// `retry.max_attempts` = 3. Every other message is handled exactly once (at most `stale_ok` of
/// them twice: a killed child's reset can drop lines the agent had not read), none is
/// dead-lettered; the
/// bad one is dead-lettered (`max_attempts`) after its three attempts.
async fn one_bad_message(
    name: &str,
    bad: usize,
    behave: &'static str,
    fpm_timeout: &str,
    stale_ok: usize,
) {
    let ctx = ctx(name, fpm_timeout).await;
    publish_fifty(&ctx, |i| if i == bad { behave } else { "ok" }).await;
    let agent = ctx.start_agent().await;
    eventually(WAIT, "every message acked or dead-lettered", || async {
        let s = agent.stats()["event"];
        s.acked + s.dead_lettered == N as u64
    })
    .await;
    let bad_id = format!("m-{bad}");
    let dead = ctx.take_ids(&ctx.dead_queue("event")).await;
    let innocents: Vec<&String> = dead.iter().filter(|id| **id != bad_id).collect();
    assert!(
        innocents.is_empty(),
        "{} innocent messages dead-lettered: {innocents:?}",
        innocents.len()
    );
    assert_eq!(dead, std::slice::from_ref(&bad_id));
    let records = ctx.records();
    assert_first_request_was_one_batch(&records[..bad + 1], bad + 1);
    let by_id = by_id(&records);
    // Its attempts 1, 2, 3, in order. A run may repeat an attempt without using it: a killed
    // child's connection can be reset, which drops its unread lines (nobody is blamed, each
    // entry is retried alone). At most 1 + 2 per attempt.
    let mut bad_attempts = attempts(&by_id[&bad_id]);
    assert!(bad_attempts.len() <= 7, "{bad_id}: {bad_attempts:?}");
    bad_attempts.dedup();
    assert_eq!(bad_attempts, [1, 2, 3], "{bad_id}");
    let mut twice = 0;
    for i in (0..N).filter(|i| *i != bad) {
        let recs = by_id.get(&format!("m-{i}")).map_or(&[][..], Vec::as_slice);
        assert!(!recs.is_empty(), "m-{i} never handled");
        assert!(recs.iter().all(|r| r["attempt"] == 1), "m-{i}: {recs:?}");
        twice += recs.len() - 1;
    }
    assert!(twice <= stale_ok, "{twice} messages handled twice");
    let stats = agent.stats()["event"];
    assert_eq!(
        (stats.acked, stats.dead_lettered, stats.retried),
        (49, 1, 2)
    );
    assert_eq!(ctx.queue_len(&ctx.queue("event")).await, 0);
    assert!(agent.drain().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_exits_php_costs_no_neighbour() {
    one_bad_message("batch-exit", 0, "exit", "10s", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_kills_its_child_costs_no_neighbour() {
    // A killed child resets its connection, which can drop outcome lines the agent had not read
    // yet: those entries ran, are retried alone on attempt 1 and run again (at-least-once). They
    // never use an attempt and are never dead-lettered; how many depends on timing, so the
    // bound is loose.
    one_bad_message("batch-kill-always", 20, "kill", "10s", 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_always_times_out_costs_no_neighbour() {
    // The timed-out child stops at its next write (the agent resets the connection it gave up
    // on), so no neighbour runs twice.
    one_bad_message("batch-timeout-always", 20, "sleep:3000", "1s", 0).await;
}

/// Publishes `m-0` … `m-4`; `behave(i)` is message i's behaviour.
async fn publish_five(ctx: &TestCtx, behave: impl Fn(usize) -> &'static str) {
    for i in 0..5 {
        ctx.publish_json("event", &format!("m-{i}"), behave(i))
            .await;
    }
}

/// A reason with a byte that is not UTF-8, cut by PHP's 1,000-byte limit: the entry is
/// dead-lettered with what it said (the bytes replaced, the cut on a character boundary), and
/// its neighbours are handled once, never a batch protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reason_that_is_not_utf8_costs_no_neighbour() {
    let ctx = ctx("batch-utf8", "10s").await;
    publish_five(&ctx, |i| if i == 2 { "reject-cut" } else { "ok" }).await;
    let agent = ctx.start_agent().await;
    eventually(WAIT, "every message acked or dead-lettered", || async {
        let s = agent.stats()["event"];
        s.acked + s.dead_lettered == 5
    })
    .await;
    let by_id = by_id(&ctx.records());
    for i in 0..5 {
        assert_eq!(attempts(&by_id[&format!("m-{i}")]), [1], "m-{i}");
    }
    assert!(by_id.values().all(|r| r[0]["batch_size"] == 5));
    assert_dead_letter(&ctx, "m-2", "bad \u{fffd} byte aaaa").await;
    let stats = agent.stats()["event"];
    assert_eq!((stats.acked, stats.dead_lettered, stats.retried), (4, 1, 0));
    assert!(agent.drain().await.is_none());
}

/// A handler prints what looks like outcome lines (`1 ack`, `2 ack`) and exits: PHP flushes its
/// output buffers on exit, yet no entry is acked without having run. The printing message is
/// dead-lettered after its attempts; the others are each handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_after_exit_acks_nothing() {
    let ctx = ctx("batch-print-exit", "10s").await;
    publish_five(&ctx, |i| if i == 0 { "print-exit" } else { "ok" }).await;
    let agent = ctx.start_agent().await;
    eventually(WAIT, "every message acked or dead-lettered", || async {
        let s = agent.stats()["event"];
        s.acked + s.dead_lettered == 5
    })
    .await;
    let by_id = by_id(&ctx.records());
    for i in 1..5 {
        let id = format!("m-{i}");
        assert_eq!(
            by_id.get(&id).map(|r| attempts(r)),
            Some(vec![1]),
            "{id} acked without being handled once"
        );
    }
    assert_eq!(attempts(&by_id["m-0"]), [1, 2, 3]);
    assert_eq!(ctx.take_ids(&ctx.dead_queue("event")).await, ["m-0"]);
    let stats = agent.stats()["event"];
    assert_eq!((stats.acked, stats.dead_lettered), (4, 1));
    assert!(agent.drain().await.is_none());
}

/// Entries with 4 KiB of headers each and tiny bodies: `limits.max_batch_bytes` bounds the whole
/// request body PHP receives (the headers JSON and every field included), not the bodies only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_bound_counts_every_byte_of_an_entry() {
    const BOUND: u64 = 64 * 1024;
    let mut ctx = ctx("batch-header-bytes", "10s").await;
    ctx.set("limits.max_batch_bytes", BOUND as i64);
    for i in 0..N {
        let id = format!("m-{i}");
        let mut headers = lapin::types::FieldTable::default();
        headers.insert(
            "pad".into(),
            lapin::types::AMQPValue::LongString("h".repeat(4096).into()),
        );
        let body = serde_json::json!({"id": id, "behave": "ok"}).to_string();
        let props = lapin::BasicProperties::default()
            .with_message_id(id.as_str().into())
            .with_headers(headers);
        ctx.publish("event", body.as_bytes(), props).await;
    }
    let agent = ctx.start_agent().await;
    eventually(WAIT, "50 acked", || async {
        agent.stats()["event"].acked == N as u64
    })
    .await;
    let records = ctx.records();
    let by_id = by_id(&records);
    assert_eq!(by_id.len(), N);
    assert!(by_id.values().all(|r| attempts(r) == [1]));
    let sizes: Vec<(u64, u64)> = records
        .iter()
        .map(|r| {
            (
                r["batch_size"].as_u64().unwrap_or(1),
                r["batch_bytes"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert!(
        sizes.iter().all(|(_, bytes)| *bytes <= BOUND),
        "a request body over limits.max_batch_bytes ({BOUND}): {sizes:?}"
    );
    // Still batches: 4 KiB entries fill a 64 KiB bound about 15 at a time.
    assert!(sizes.iter().any(|(size, _)| *size >= 10), "{sizes:?}");
    assert_eq!(
        agent.stats()["event"].requeued,
        0,
        "no entry left out of its request"
    );
    assert!(agent.drain().await.is_none());
}

/// A subject with `batch_max = "auto"` on `pool` workers (no `batch_wait`: "auto" never waits).
async fn auto_ctx(name: &str, pool: usize) -> TestCtx {
    let mut ctx = TestCtx::new(name).await;
    ctx.script = batch_script();
    ctx.pool_size = pool;
    ctx.set("subjects.event.batch_max", "auto");
    ctx.set("fpm.timeout", "5s");
    ctx.declare().await;
    ctx
}

/// `batch_max = "auto"`: a backlog goes in large batches, then a trickle one message per
/// request, each handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_sends_a_backlog_in_batches_and_a_trickle_one_by_one() {
    let ctx = auto_ctx("batches-auto", 2).await;
    for i in 0..300 {
        ctx.publish_json("event", &format!("b-{i}"), "ok").await;
    }
    let agent = ctx.start_agent().await;
    eventually(WAIT, "the backlog handled", || async {
        agent.stats()["event"].acked == 300
    })
    .await;
    let backlog = by_id(&ctx.records());
    assert_eq!(backlog.len(), 300);
    assert!(backlog.values().all(|r| r.len() == 1), "each handled once");
    let largest = backlog
        .values()
        .filter_map(|r| r[0]["batch_size"].as_u64())
        .max()
        .unwrap_or(0);
    eprintln!("auto: largest batch of the backlog {largest}");
    // The broker's view: two batches of batch_limit (50) per worker, the one running and the
    // next (config::batch_window), pool 2.
    assert_eq!(
        consumer_prefetch(&ctx.queue("event")),
        200,
        "prefetch of the event consumer"
    );
    assert!(
        largest >= 10,
        "largest batch {largest}: a backlog goes in batches"
    );

    // A trickle: each message alone in the queue, two idle workers.
    for i in 0..10 {
        let id = format!("t-{i}");
        ctx.publish_json("event", &id, "ok").await;
        eventually(WAIT, &format!("{id} handled"), || async {
            by_id(&ctx.records()).contains_key(&id)
        })
        .await;
    }
    let records = by_id(&ctx.records());
    for i in 0..10 {
        let r = &records[&format!("t-{i}")];
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0]["batch_size"],
            Value::Null,
            "t-{i} went in a request of its own"
        );
    }
    let status = serde_json::to_value(agent.handle().status()).unwrap();
    let auto = &status["subjects"]["event"]["batch_auto"];
    assert_eq!(auto["size"], 1, "{auto}");
    assert!(auto["entry_ms"].as_f64().is_some(), "{auto}");
    agent.stop().await;
}

/// The `prefetch_count` RabbitMQ shows for the one consumer of `queue`.
fn consumer_prefetch(queue: &str) -> u64 {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_consumers", "queue_name", "prefetch_count"])
        .output()
        .expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let counts: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(q, _)| *q == queue)
        .map(|(_, n)| n.trim().parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 1, "one consumer of {queue}: {text}");
    counts[0]
}

/// `batch_max` not set (the default): a receiver that says it takes batches (the package's acks
/// carry `X-Agent-Accepts-Batches: 2`) gets a backlog in batches after its first reply; one that
/// does not say so gets one message per request, and `/status` says why. Each message is
/// handled once either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_batches_only_once_the_receiver_says_it_takes_batches() {
    for says in [true, false] {
        let name = if says {
            "batches-default-yes"
        } else {
            "batches-default-no"
        };
        let mut ctx = TestCtx::new(name).await;
        ctx.script = batch_script();
        ctx.pool_size = 2;
        ctx.declare().await;
        assert!(!ctx.toml().contains("batch_max"), "the default is tested");
        if !says {
            std::fs::write(
                fpm()
                    .dir
                    .join("records")
                    .join(format!("{}.no-batches", ctx.id)),
                "",
            )
            .unwrap();
        }
        for i in 0..300 {
            ctx.publish_json("event", &format!("d-{i}"), "ok").await;
        }
        let agent = ctx.start_agent().await;
        eventually(WAIT, "the backlog handled", || async {
            agent.stats()["event"].acked == 300
        })
        .await;
        let records = ctx.records();
        let backlog = by_id(&records);
        assert_eq!(backlog.len(), 300);
        assert!(backlog.values().all(|r| r.len() == 1), "each handled once");
        assert!(attempts(&records).iter().all(|a| *a == 1), "none retried");
        let sizes: Vec<Option<u64>> = records.iter().map(|r| r["batch_size"].as_u64()).collect();
        let largest = sizes.iter().flatten().max().copied().unwrap_or(1);
        let status = serde_json::to_value(agent.handle().status()).unwrap();
        let auto = &status["subjects"]["event"]["batch_auto"];
        eprintln!(
            "default, receiver says it takes batches: {says}; largest batch {largest}; {auto}"
        );
        // The broker's view of the consumer: the prefetch a batch needs once the receiver said
        // it takes batches (two batches of 50 per worker, pool 2: the memory budget bounds
        // bytes, not this window), else the config's prefetch_per_worker (2) per worker.
        let prefetch = consumer_prefetch(&ctx.queue("event"));
        assert_eq!(
            prefetch,
            if says { 200 } else { 4 },
            "prefetch of the event consumer"
        );
        if says {
            assert_eq!(
                sizes[0], None,
                "the first request goes alone: nothing said yet"
            );
            assert!(
                largest >= 10,
                "largest batch {largest}: a backlog goes in batches"
            );
        } else {
            assert!(sizes.iter().all(Option::is_none), "one message per request");
            assert_eq!(auto["bound"], "receiver", "{auto}");
        }
        agent.stop().await;
    }
}

/// `batch_max = "auto"` follows a handler that turns slow (10 ms, then 200 ms a message):
/// batches shrink to one message per request after the first slow batch, no request reaches
/// `fpm.timeout` (5 s) and no message is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_shrinks_batches_when_the_handler_turns_slow() {
    let ctx = auto_ctx("batches-auto-slow", 1).await;
    for i in 0..100 {
        ctx.publish_json("event", &format!("fast-{i}"), "sleep:10")
            .await;
    }
    for i in 0..20 {
        ctx.publish_json("event", &format!("slow-{i}"), "sleep:200")
            .await;
    }
    let agent = ctx.start_agent().await;
    eventually(
        Duration::from_secs(120),
        "every message handled",
        || async { agent.stats()["event"].acked == 120 },
    )
    .await;
    let records = ctx.records();
    assert!(
        records.iter().all(|r| r["attempt"] == 1),
        "no message was retried"
    );
    assert_eq!(agent.stats()["event"].retried, 0);
    let by = by_id(&records);
    assert_eq!(by.len(), 120);
    let fast_batched = (0..100)
        .filter(|i| by[&format!("fast-{i}")][0]["batch_size"].as_u64() > Some(1))
        .count();
    assert!(
        fast_batched >= 50,
        "fast messages in batches: {fast_batched}"
    );
    // After the first batch that met slow messages, they go alone: at most the first batch's
    // (1 + 100 ms / 10 ms = 11) and one shrinking step's were sent together.
    let slow_alone = (0..20)
        .filter(|i| by[&format!("slow-{i}")][0]["batch_size"].is_null())
        .count();
    eprintln!("auto: fast in batches {fast_batched} of 100, slow alone {slow_alone} of 20");
    assert!(
        slow_alone >= 7,
        "slow messages sent alone: {slow_alone} of 20"
    );
    let largest_slow_batch = (0..20)
        .filter_map(|i| by[&format!("slow-{i}")][0]["batch_size"].as_u64())
        .max()
        .unwrap_or(1);
    assert!(
        largest_slow_batch <= 11,
        "a batch held {largest_slow_batch} messages of 200 ms"
    );
    let status = serde_json::to_value(agent.handle().status()).unwrap();
    let auto = &status["subjects"]["event"]["batch_auto"];
    assert!(
        auto["entry_ms"].as_f64().unwrap() > 100.0,
        "the estimate follows the slower handler: {auto}"
    );
    agent.stop().await;
}

/// `batch_max = "auto"` and a handler that turns too slow for the batch in flight to end within
/// `fpm.timeout` (#24, found by the bench's slowdown row: batches of the same size were cut by
/// the timeout again and again, each costing its running message an attempt). The request cut
/// by the timeout teaches the estimator; at most that one request times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_learns_from_a_batch_cut_by_the_timeout() {
    let mut ctx = auto_ctx("batches-auto-cut", 1).await;
    ctx.set("fpm.timeout", "2s");
    // A latency bound that lets fast entries go 50 at a time (10 ms each: 0.5 s a batch).
    ctx.set("subjects.event.batch_latency", "1s");
    for i in 0..120 {
        ctx.publish_json("event", &format!("m-{i}"), "slow-on-flag:10:600")
            .await;
    }
    let agent = ctx.start_agent().await;
    // Turn the handler slow while a batch of at least 20 is in flight and has started at most
    // 5 entries: 15 or more entries of 600 ms are left in a request cut at 2 s.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no batch of 20 seen"
        );
        let records = ctx.records();
        if let Some(last) = records.last() {
            let request = &last["request"];
            let started = records.iter().filter(|r| r["request"] == *request).count();
            if last["batch_size"].as_u64() >= Some(20) && started <= 5 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let flag = common::fpm()
        .dir
        .join("records")
        .join(format!("{}.slow", ctx.id));
    std::fs::write(&flag, b"").unwrap();
    eventually(
        Duration::from_secs(300),
        "every message handled",
        || async { agent.stats()["event"].acked == 120 },
    )
    .await;
    let stats = &agent.stats()["event"];
    let seen_twice = by_id(&ctx.records())
        .values()
        .filter(|r| r.len() > 1)
        .count();
    let mut requests: Vec<(String, u64)> = Vec::new();
    for r in ctx.records() {
        let req = r["request"].as_str().unwrap_or_default().to_owned();
        if requests.last().is_none_or(|(last, _)| *last != req) {
            requests.push((req, r["batch_size"].as_u64().unwrap_or(1)));
        }
    }
    let sizes: Vec<u64> = requests.iter().take(12).map(|(_, n)| *n).collect();
    eprintln!(
        "auto: retried {}, requeued {}, messages PHP saw twice {seen_twice}, first request sizes {sizes:?}",
        stats.retried, stats.requeued
    );
    assert!(
        stats.retried <= 1,
        "{} messages retried: requests kept being cut by fpm.timeout",
        stats.retried
    );
    assert_eq!(stats.dead_lettered, 0);
    agent.stop().await;
}
