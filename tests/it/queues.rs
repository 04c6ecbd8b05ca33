//! Queue types and arguments on the local RabbitMQ node: quorum subjects, adopting (or refusing)
//! what exists, `check-config --broker`, and quorum delivery counting.

use crate::common;

use std::time::{Duration, Instant};

use common::TestCtx;
use common::procs::{AgentProcess, agent_cli};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};

const WAIT: Duration = Duration::from_secs(60);

fn list_queues(prefix: &str) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "type",
            "arguments",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `amqp-agent check-config --broker --config FILE`: (exit code, output).
fn check_broker(config: &std::path::Path) -> (i32, String) {
    agent_cli(&[
        "check-config",
        "--broker",
        "--config",
        config.to_str().unwrap(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_subjects_use_quorum_queues_for_main_delay_and_dead_letters() {
    let mut ctx = TestCtx::new("quorum").await;
    ctx.event_extra = "queue_type = \"quorum\"\narguments = { \"x-max-length\" = 10000 }\n".into();
    let agent = ctx.start_agent().await;
    ctx.publish_json("event", "q-1", "fail-until:2").await;
    ctx.publish_json("event", "q-2", "status:422").await;
    common::eventually(WAIT, "q-1 handled at attempt 2, q-2 dead", || async {
        let by_id = ctx.records_by_id();
        by_id.get("q-1").is_some_and(|r| r.len() == 2) && agent.stats()["event"].dead_lettered == 1
    })
    .await;
    let queues = list_queues(&ctx.queue("event"));
    let main = ctx.queue("event");
    for name in [
        main.clone(),
        format!("{main}.dead"),
        format!("{main}.retry.100ms"),
    ] {
        let line = queues
            .lines()
            .find(|l| l.split('\t').next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("queue {name} missing in:\n{queues}"));
        assert!(line.contains("quorum"), "{name} is not quorum: {line}");
    }
    let delay = queues.lines().find(|l| l.contains(".retry.")).unwrap();
    assert!(
        delay.contains("at-least-once") && delay.contains("reject-publish"),
        "{delay}"
    );
    // The integer argument arrived as a number (a string would be quoted).
    let main_line = queues
        .lines()
        .find(|l| l.starts_with(&format!("{main}\t")))
        .unwrap();
    assert!(
        main_line.contains("x-max-length")
            && main_line.contains("10000")
            && !main_line.contains("\"10000\""),
        "{main_line}"
    );
    assert_eq!(ctx.take_ids(&format!("{main}.dead")).await, ["q-2"]);
    assert!(agent.drain().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_declared_otherwise_stops_the_agent_once_with_a_config_error() {
    let ctx = TestCtx::new("inequiv").await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ctx.channel
        .queue_declare(
            ctx.queue("event").as_str().into(),
            QueueDeclareOptions::durable(),
            args,
        )
        .await
        .unwrap();
    let config = ctx.write_config();
    let log = config.with_extension("log");
    let started = Instant::now();
    let mut agent = AgentProcess::start(&config, &log);
    let status = agent.wait_exit(Duration::from_secs(30));
    let took = started.elapsed();
    let text = agent.log_text();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(took < Duration::from_secs(5), "exit took {took:?}: {text}");
    assert!(
        text.contains(&ctx.queue("event"))
            && text.contains("x-queue-type")
            && text.contains("quorum"),
        "{text}"
    );
    assert!(
        !text.contains("Restarting consumer"),
        "restarted instead of stopping: {text}"
    );
    assert!(
        text.contains("configuration does not match the broker"),
        "{text}"
    );

    // check-config --broker names the difference and exits 1, without consuming.
    let (code, out) = check_broker(&config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("DIFFERENT") && out.contains("x-queue-type"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_declare_missing_queues_are_reported_and_refused() {
    let mut ctx = TestCtx::new("passive").await;
    ctx.set("amqp.declare", false);
    let config = ctx.write_config();
    let (code, out) = check_broker(&config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("MISSING") && out.contains(&ctx.queue("event")),
        "{out}"
    );
    let log = config.with_extension("log");
    let mut agent = AgentProcess::start(&config, &log);
    let status = agent.wait_exit(Duration::from_secs(30));
    let text = agent.log_text();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("does not exist")
            && (text.contains(&ctx.queue("event")) || text.contains(&ctx.queue("command"))),
        "{text}"
    );
    // Nothing was created by the check or the refused start.
    assert!(list_queues(&ctx.queue("event")).is_empty());

    // Once the platform declared everything (here: an agent with declare = true), both pass.
    ctx.set("amqp.declare", true);
    let agent = ctx.start_agent().await;
    assert!(agent.drain().await.is_none());
    let (code, out) = check_broker(&config);
    assert_eq!(code, 0, "{out}");
}

/// A message that kills whoever handles it (here: the agent, kill -9, so no attempt is
/// recorded) is counted by the quorum queue and dead-lettered by the broker past
/// `x-delivery-limit`, with `x-death` saying why. PHP saw the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_limit_dead_letters_a_message_that_keeps_killing_its_agent() {
    let mut ctx = TestCtx::new("dlimit").await;
    ctx.event_extra = "queue_type = \"quorum\"\narguments = { \"x-delivery-limit\" = 1 }\n".into();
    let config = ctx.write_config();
    let log = config.with_extension("log");
    for round in 1..=2 {
        let agent = AgentProcess::start(&config, &log);
        if round == 1 {
            ctx.wait_ready().await;
            // The node each subject is connected to, in /metrics and /status.
            let (_, metrics) = common::procs::http(ctx.admin_port, "GET", "/metrics", None)
                .await
                .expect("admin API");
            assert!(
                metrics.contains(
                    "amqp_agent_connected_node{subject=\"event\",node=\"127.0.0.1:5672\"} 1"
                ),
                "{metrics}"
            );
            let (_, status) = common::procs::http(ctx.admin_port, "GET", "/status", None)
                .await
                .unwrap();
            assert!(status.contains("\"node\":\"127.0.0.1:5672\""), "{status}");
            ctx.publish_json("event", "killer", "sleep:4000").await;
        }
        ctx.wait_records(round, WAIT).await;
        agent.signal(libc::SIGKILL);
        drop(agent);
    }
    let records = ctx.records();
    assert_eq!(
        records[0]["params"]["HTTP_X_AGENT_DELIVERY_COUNT"],
        serde_json::Value::Null
    );
    assert_eq!(records[1]["params"]["HTTP_X_AGENT_DELIVERY_COUNT"], "1");
    assert_eq!(
        records[1]["params"]["HTTP_X_AGENT_ATTEMPT"], "1",
        "no attempt was recorded"
    );
    let dead = ctx.dead_queue("event");
    common::eventually(WAIT, "the broker dead-letters the message", || async {
        ctx.queue_len(&dead).await == 1
    })
    .await;
    let (props, _) = ctx.take_all(&dead).await.remove(0);
    let reason = common::header_str(&props, "x-first-death-reason").unwrap_or_default();
    assert_eq!(reason, "delivery_limit", "{props:?}");
    assert_eq!(ctx.queue_len(&ctx.queue("event")).await, 0);
}

/// With no node reachable the agent keeps trying every endpoint, and says so: `/readyz` is 503,
/// `/status` shows the subjects disconnected with no node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_stays_honest_while_no_node_answers() {
    let mut ctx = TestCtx::new("nonode").await;
    let dead: Vec<String> = (0..2)
        .map(|_| format!("amqp://guest:guest@127.0.0.1:{}/%2f", common::free_port()))
        .collect();
    ctx.unset("amqp.url");
    ctx.set("amqp.urls", dead);
    let config = ctx.write_config();
    let agent = AgentProcess::start(&config, &config.with_extension("log"));
    // Both endpoints tried, for both subjects, at least twice (retrying, not giving up): each
    // start of a consumer tries every endpoint, so the third start follows two failed rounds.
    ctx.wait_status("three consumer starts of each subject", |s| {
        common::all_subjects(s, |s| s["consumer_starts"].as_u64() >= Some(3))
    })
    .await;
    let (code, body) = common::procs::http(ctx.admin_port, "GET", "/readyz", None)
        .await
        .expect("admin API");
    assert_eq!(code, 503, "{body}");
    let (_, status) = common::procs::http(ctx.admin_port, "GET", "/status", None)
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    for subject in ["event", "command"] {
        assert_eq!(status["subjects"][subject]["connection"], "disconnected");
        assert_eq!(status["subjects"][subject]["node"], serde_json::Value::Null);
    }
    assert!(!agent.log_text().contains("giving up"));
}
