//! Crash-loop protection with real processes: the agent binary, RabbitMQ, php-fpm.
//!
//! A test-only FPM script (`tests/php/kill-agent.php`) sends `kill -9` to the agent whenever it
//! sees the marker message; the test restarts the agent after each death, as a supervisor would.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::TestCtx;
use common::procs::AgentProcess;

const LONG: Duration = Duration::from_secs(120);

/// The kill script, next to the harness's copy of recorder.php (which it hands other messages).
fn kill_script() -> PathBuf {
    let fpm = common::fpm();
    let script = fpm.dir.join("kill-agent.php");
    let tmp = fpm
        .dir
        .join(format!("kill-agent.php.{}", uuid::Uuid::new_v4()));
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/php/kill-agent.php"),
        &tmp,
    )
    .unwrap();
    std::fs::rename(&tmp, &script).unwrap();
    script
}

fn records_dir() -> PathBuf {
    common::fpm().dir.join("records")
}

/// Tells the kill script which process is the agent now.
fn publish_pid(ctx: &TestCtx, agent: &AgentProcess) {
    let dir = records_dir();
    let tmp = dir.join(format!("{}.agent-pid.tmp", ctx.id));
    std::fs::write(&tmp, agent.child.id().to_string()).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{}.agent-pid", ctx.id))).unwrap();
}

/// How many times the kill script fired.
fn kills(ctx: &TestCtx) -> usize {
    std::fs::read_to_string(records_dir().join(format!("{}.kills", ctx.id)))
        .map_or(0, |t| t.lines().count())
}

fn start(ctx: &TestCtx, config: &Path) -> AgentProcess {
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let agent = AgentProcess::start(config, &log);
    publish_pid(ctx, &agent);
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_kills_the_agent_is_dead_lettered_as_poison_after_two_crashes() {
    let mut ctx = TestCtx::new("poison").await;
    ctx.script = kill_script();
    ctx.declare().await;
    // Neighbours take a while, so several are in flight whenever the marker kills the agent.
    let mut ids = Vec::new();
    for i in 0..30 {
        if i == 10 {
            ctx.publish_json("event", "marker", "kill-agent").await;
        }
        let id = format!("p-{i}");
        ctx.publish_json("event", &id, "sleep:50").await;
        ids.push(id);
    }
    let config = ctx.write_config();
    let dead_queue = ctx.dead_queue("event");

    // The supervisor: restart the agent whenever it dies, until the queue is drained.
    let deadline = Instant::now() + LONG;
    let mut agent = start(&ctx, &config);
    let mut deaths = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "queue not drained; {deaths} deaths"
        );
        if let Some(status) = agent.child.try_wait().unwrap() {
            deaths += 1;
            assert!(deaths <= 2, "the agent died a third time ({status})");
            agent = start(&ctx, &config);
            continue;
        }
        let by_id = ctx.records_by_id();
        if ids.iter().all(|id| by_id.contains_key(id))
            && ctx.queue_len(&ctx.queue("event")).await == 0
            && ctx.queue_len(&dead_queue).await == 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(deaths, 2, "the agent dies exactly twice");
    assert_eq!(
        kills(&ctx),
        2,
        "no FPM request for the marker after the second crash"
    );

    let dead = ctx.drain_dead("event").await;
    assert_eq!(dead.len(), 1, "only the marker is dead-lettered");
    let props = &dead[0].0;
    assert_eq!(props.message_id().as_ref().unwrap().as_str(), "marker");
    assert_eq!(
        common::header_str(props, "x-agent-reason").as_deref(),
        Some("poison")
    );
    assert_eq!(
        common::header_str(props, "x-agent-last-error").as_deref(),
        Some("poison: in flight during 2 agent crashes")
    );
    // Every other message was handled, none of them lost.
    let by_id = ctx.records_by_id();
    for id in &ids {
        assert!(by_id.contains_key(id), "{id} was not handled");
    }
    assert!(!by_id.contains_key("marker"));

    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(20)).success());
}

/// A clean stop is not a crash: with `poison_after = 1`, a message cut off by a SIGTERM drain
/// that timed out, then by SIGQUIT, is handled again on each redelivery; cut off by `kill -9`,
/// it is dead-lettered on the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_flight_at_a_clean_stop_is_not_counted() {
    let mut ctx = TestCtx::new("poison-clean").await;
    ctx.declare().await;
    ctx.set("agent.shutdown_timeout", "200ms");
    ctx.set("agent.poison_after", 1);
    let config = ctx.write_config();
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let handled = |n: usize| {
        let ctx = &ctx;
        async move {
            common::eventually(LONG, &format!("slow handled {n} times"), || async {
                ctx.records_by_id().get("slow").map_or(0, Vec::len) >= n
            })
            .await;
        }
    };
    ctx.publish_json("event", "slow", "sleep:3000").await;

    for (n, signal) in [(1, libc::SIGTERM), (2, libc::SIGQUIT), (3, libc::SIGKILL)] {
        let mut agent = AgentProcess::start(&config, &log);
        handled(n).await;
        agent.signal(signal);
        let status = agent.wait_exit(Duration::from_secs(20));
        assert_eq!(status.success(), signal != libc::SIGKILL, "{status}");
        assert_eq!(
            ctx.records_by_id()["slow"].len(),
            n,
            "cut off, not finished"
        );
    }
    let records = &ctx.records_by_id()["slow"];
    for r in &records[1..] {
        assert_eq!(r["params"]["HTTP_X_AGENT_REDELIVERED"], "1");
    }

    // After the kill -9 (one crash), the next delivery is dead-lettered without FPM.
    let mut agent = AgentProcess::start(&config, &log);
    let dead_queue = ctx.dead_queue("event");
    common::eventually(LONG, "slow dead-lettered", || async {
        ctx.queue_len(&dead_queue).await == 1
    })
    .await;
    let dead = ctx.drain_dead("event").await;
    assert_eq!(
        common::header_str(&dead[0].0, "x-agent-last-error").as_deref(),
        Some("poison: in flight during 1 agent crash")
    );
    assert_eq!(ctx.records_by_id()["slow"].len(), 3);
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(20)).success());
}
