//! FPM capacity: the status page read from a real php-fpm pool with `pm.status_path`, its
//! errors as states, and requests running past `fpm.slow_after` (docs/fpm-capacity.md).

mod common;

use std::time::Duration;

use common::TestCtx;
use common::procs::{AgentProcess, PrivateFpm, http};

const LONG: Duration = Duration::from_secs(30);
const READ_STATUS: &str = "status_path = \"/fpm-status\"\nstatus_interval = \"200ms\"\n";

/// A test context on a private FPM pool of `max_children`, with `pm.status_path` when
/// `status_page`; the agent reads `/fpm-status` every 200 ms.
async fn with_pool(
    name: &str,
    max_children: u32,
    status_page: bool,
    pool_size: usize,
) -> (TestCtx, PrivateFpm) {
    let mut ctx = TestCtx::new(name).await;
    let fpm = PrivateFpm::start_with(name, max_children, status_page.then_some("/fpm-status"));
    ctx.fpm_port = fpm.port;
    ctx.pool_size = pool_size;
    ctx.fpm_extra = READ_STATUS.to_owned();
    (ctx, fpm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_is_read_shown_and_exported() {
    let (ctx, fpm) = with_pool("fpmstatus", 4, true, 1).await;
    let agent = ctx.start_agent().await;
    let handle = agent.handle();
    common::eventually(LONG, "status page read", || async {
        handle.status().fpm.state == "ok"
    })
    .await;
    let fpm_state = handle.status().fpm;
    assert_eq!(fpm_state.max_children, Some(4));
    assert_eq!(fpm_state.address, format!("127.0.0.1:{}", fpm.port));
    assert_eq!(fpm_state.children.len(), 4);
    ctx.publish_json("event", "long-1", "sleep:2000").await;
    let record = ctx.wait_records(1, LONG).await.remove(0);
    let pid = record["pid"].as_u64().unwrap();
    common::eventually(LONG, "the busy child in /status", || async {
        handle
            .status()
            .fpm
            .busy
            .iter()
            .any(|c| u64::from(c.pid) == pid && c.uri.contains("recorder.php"))
    })
    .await;
    let status = handle.status();
    assert!(status.fpm.active >= Some(1), "{:?}", status.fpm);
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["fpm"]["state"], "ok");
    assert_eq!(json["fpm"]["max_children"], 4);
    let metrics = handle.metrics().encode();
    let upstream = format!("upstream=\"127.0.0.1:{}\"", fpm.port);
    for line in [
        format!("amqp_agent_fpm_status_up{{{upstream}}} 1"),
        format!("amqp_agent_fpm_max_children{{{upstream}}} 4"),
    ] {
        assert!(metrics.contains(&line), "no `{line}` in:\n{metrics}");
    }
    assert!(metrics.contains("amqp_agent_fpm_listen_queue{"));
    agent.drain().await;
    ctx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_status_page_then_a_stopped_fpm_are_states_not_crashes() {
    // The pool has no pm.status_path: FPM answers 404.
    let (ctx, mut fpm) = with_pool("fpmstatus404", 2, false, 2).await;
    let agent = ctx.start_agent().await;
    let handle = agent.handle();
    common::eventually(LONG, "404 shown", || async {
        handle.status().fpm.state == "not_found"
    })
    .await;
    assert!(handle.status().fpm.error.unwrap().contains("404"));
    ctx.publish_json("event", "still-handled", "ok").await;
    ctx.wait_records(1, LONG).await;
    fpm.down();
    common::eventually(LONG, "FPM down shown", || async {
        handle.status().fpm.state == "down"
    })
    .await;
    assert!(handle.alive(), "the agent keeps running");
    assert!(
        handle
            .metrics()
            .encode()
            .contains("amqp_agent_fpm_status_up{"),
        "status_up exported"
    );
    let status = handle.status();
    for (name, s) in &status.subjects {
        assert_eq!(s.target_pool_size, 2, "{name} keeps its configured size");
    }
    agent.stop().await;
    ctx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_slow_after_is_logged_once_with_its_child() {
    let (mut ctx, fpm) = with_pool("fpmslow", 4, true, 2).await;
    ctx.fpm_extra += "slow_after = \"500ms\"\n";
    ctx.declare().await;
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let agent = AgentProcess::start(&ctx.write_config(), &log);
    agent.wait_log("Consuming", 2, LONG).await;
    ctx.publish_json("event", "quick-1", "ok").await;
    ctx.publish_json("event", "slow-1", "sleep:2500").await;
    let records = ctx.wait_records(2, LONG).await;
    let pid = records.iter().find(|r| r["json_id"] == "slow-1").unwrap()["pid"]
        .as_u64()
        .unwrap();
    const LINE: &str = "Request running past fpm.slow_after";
    agent.wait_log(LINE, 1, LONG).await;
    // Wait until the slow message is acked, then check it was reported once.
    common::eventually(LONG, "slow message acked", || async {
        ctx.queue_len(&ctx.queue("event")).await == 0
            && http(ctx.admin_port, "GET", "/metrics", None)
                .await
                .is_some_and(|(_, m)| {
                    m.contains("amqp_agent_messages_acked_total{subject=\"event\"} 2")
                })
    })
    .await;
    let text = agent.log_text();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(LINE)).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = lines[0];
    for part in [
        "message_id=slow-1".to_owned(),
        "subject=event".to_owned(),
        format!("upstream=127.0.0.1:{}", fpm.port),
        format!("fpm_pid={pid}"),
    ] {
        assert!(line.contains(&part), "no `{part}` in: {line}");
    }
    let (_, metrics) = http(ctx.admin_port, "GET", "/metrics", None).await.unwrap();
    assert!(
        metrics.contains("amqp_agent_fpm_slow_messages_total{subject=\"event\"} 1"),
        "{metrics}"
    );
    drop(agent);
    ctx.cleanup().await;
}
