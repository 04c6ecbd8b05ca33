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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_slow_after_is_logged_once_with_its_child() {
    let (mut ctx, fpm) = with_pool("fpmslow", 4, true, 2).await;
    ctx.fpm_extra += "slow_after = \"500ms\"\n";
    ctx.declare().await;
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let agent = AgentProcess::start(&ctx.write_config(), &log);
    ctx.wait_ready().await;
    ctx.publish_json("event", "quick-1", "ok").await;
    ctx.publish_json("event", "slow-1", "sleep:2500").await;
    let records = ctx.wait_records(2, LONG).await;
    let pid = records.iter().find(|r| r["json_id"] == "slow-1").unwrap()["pid"]
        .as_u64()
        .unwrap();
    const LINE: &str = "Request running past fpm.slow_after";
    // Wait until the slow message is acked (the report comes while it runs), then check it was
    // reported once.
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_pool_grows_from_min_within_max_children_and_shrinks_back() {
    // FPM has 8 children; `command` is fixed at 1, so `event` may use 7.
    let (mut ctx, _fpm) = with_pool("fpmauto", 8, true, 1).await;
    ctx.event_extra =
        "pool_mode = \"auto\"\nmin_pool_size = 1\nmax_pool_size = 32\ncooldown = \"1s\"\n"
            .to_owned();
    ctx.declare().await;
    for i in 0..600 {
        ctx.publish_json("event", &format!("a-{i}"), "sleep:20")
            .await;
    }
    let agent = ctx.start_agent().await;
    let handle = agent.handle();
    assert_eq!(
        handle.status().subjects["event"].target_pool_size,
        1,
        "starts at min"
    );
    let (mut peak, mut worst_sum) = (0, 0);
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(120);
    while ctx.records().len() < 600 {
        assert!(std::time::Instant::now() < deadline, "backlog not drained");
        let s = handle.status();
        let sum: u64 = s
            .subjects
            .values()
            .map(|s| s.stats.pool_size.max(s.target_pool_size))
            .sum();
        worst_sum = worst_sum.max(sum);
        peak = peak.max(s.subjects["event"].target_pool_size);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "auto pool: 600 × 20 ms drained in {:?}, peak event pool {peak}, largest sum {worst_sum}",
        started.elapsed()
    );
    assert!(
        worst_sum <= 8,
        "pools summed to {worst_sum} > max_children 8"
    );
    assert!(peak >= 5, "the auto pool grew only to {peak}");
    // Pinned by an operator: the autoscaler leaves it alone until `pool auto`.
    handle.set_pool("event", 3).unwrap();
    assert_eq!(handle.pins().into_iter().collect::<Vec<_>>(), ["event"]);
    // Ten status reads (2 s): without the pin the idle pool would shrink after its 1 s cooldown.
    let mut reads = handle.metrics().fpm.subscribe();
    for _ in 0..10 {
        reads.changed().await.unwrap();
    }
    assert_eq!(
        handle.status().subjects["event"].target_pool_size,
        3,
        "pinned"
    );
    handle.pool_auto("event").unwrap();
    assert!(handle.pool_auto("command").is_err(), "command is fixed");
    common::eventually(LONG, "the idle pool back at its minimum", || async {
        handle.status().subjects["event"].target_pool_size == 1
    })
    .await;
    agent.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_auto_subjects_weighted_three_to_one_share_fpm_children_by_weight() {
    let (mut ctx, _fpm) = with_pool("fpmweights", 8, true, 1).await;
    for (subject, weight) in [("event", 3), ("command", 1)] {
        let key = |k: &str| format!("subjects.{subject}.{k}");
        ctx.set(&key("pool_mode"), "auto");
        ctx.set(&key("min_pool_size"), 1);
        ctx.set(&key("max_pool_size"), 32);
        ctx.set(&key("cooldown"), "500ms");
        ctx.set(&key("weight"), weight);
    }
    ctx.declare().await;
    for i in 0..700 {
        ctx.publish_json("event", &format!("e-{i}"), "sleep:50")
            .await;
        ctx.publish_json("command", &format!("c-{i}"), "sleep:50")
            .await;
    }
    let config = ctx.config();
    assert_eq!(
        config.subjects["command"].pool_mode,
        amqp_agent::autoscale::PoolMode::Auto
    );
    let agent = amqp_agent::agent::Agent::start(config).await.unwrap();
    let handle = agent.handle();
    let sizes = || {
        let s = handle.status();
        (
            s.subjects["event"].target_pool_size,
            s.subjects["command"].target_pool_size,
        )
    };
    // No child is kept free for the status page (it takes a lease like a message): 8 shared
    // 3 : 1.
    common::eventually(LONG, "event 6 and command 2", || async {
        sizes() == (6, 2)
    })
    .await;
    agent.stop().await;
}
