//! A real broker restart (`rabbitmqctl stop_app` / `start_app`). It runs alone
//! (`common::turn::alone`), so no other test sees the broker go away.

use crate::common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::TestCtx;
use common::procs::AgentProcess;

const LONG: Duration = Duration::from_secs(180);

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Restores the broker even when the test fails half-way.
struct StartAppOnDrop;
impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_loses_nothing() {
    let _alone = common::turn::alone().await; // every other test uses this broker
    let ctx = TestCtx::new("restart").await;
    ctx.declare().await;
    let mut ids = BTreeSet::new();
    for i in 0..1000 {
        let id = format!("r-{i}");
        ctx.publish_json(
            if i % 2 == 0 { "event" } else { "command" },
            &id,
            "sleep:25",
        )
        .await;
        ids.insert(id);
    }
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let _agent = AgentProcess::start(&ctx.write_config(), &log);
    common::eventually(LONG, "150 handled", || async { ctx.records().len() >= 150 }).await;
    let _guard = StartAppOnDrop;
    rabbitmqctl(&["stop_app"]);
    let before = ctx.records().len();
    common::wait_status(ctx.admin_port, "a subject disconnected", LONG, |s| {
        common::any_subject(s, |s| s["connection"] == "disconnected")
    })
    .await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    let t = Instant::now();
    assert!(
        before < ids.len(),
        "the backlog must outlast the broker stop"
    );
    common::eventually(LONG, "progress after the restart", || async {
        ctx.records().len() > before
    })
    .await;
    let recover = t.elapsed();
    // The test's own connection died with the broker.
    let ctx2 = TestCtx {
        id: ctx.id.clone(),
        ..TestCtx::new("restart-check").await
    };
    common::eventually(LONG, "every message handled", || async {
        let by_id = ctx2.records_by_id();
        ids.iter().all(|id| by_id.contains_key(id))
    })
    .await;
    for subject in ["event", "command"] {
        let q = ctx2.queue(subject);
        common::eventually(LONG, "queue empty", || async {
            ctx2.queue_len(&q).await == 0
        })
        .await;
        assert_eq!(ctx2.queue_len(&ctx2.dead_queue(subject)).await, 0);
    }
    let by_id = ctx2.records_by_id();
    let duplicates: usize = ids.iter().map(|id| by_id[id].len() - 1).sum();
    println!(
        "FAULT broker restart: sent={} handled={} lost=0 duplicates={duplicates} time_to_recover={} ms",
        ids.len(),
        ids.len(),
        recover.as_millis()
    );
    assert!(duplicates <= 16, "{duplicates} duplicates");
}
