//! End to end with a real Symfony app (tests/apps/symfony: FrameworkBundle, Messenger's AMQP
//! transport, the bundle, prod environment): the app's own bus publishes, the agent consumes and
//! php-fpm serves the bundle's /_agent/messages route, which dispatches on the same bus.

mod common;

use std::time::Duration;

use common::{TestCtx, apps, header_str};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messenger_published_events_and_commands_reach_their_handlers_once() {
    let ctx = TestCtx::new("symfony").await;
    let app = apps::app_dir("symfony");
    let agent = amqp_agent::agent::Agent::start(apps::config(&ctx, &app.join("public/index.php")))
        .await
        .unwrap();
    agent.wait_consuming(WAIT).await.unwrap(); // the agent declares the queues
    let out = apps::php(
        &app.join("bin/publish.php"),
        &ctx,
        &[&ctx.id, "100", "100", "e7:recover-once", "c7:recover-once", "c13:unrecoverable"],
    );
    assert!(out.contains("published 100 events and 100 commands"), "{out}");

    common::eventually(WAIT, "199 acked and 1 dead-lettered", || async {
        let s = agent.stats();
        s["event"].acked == 100 && s["command"].acked == 99 && s["command"].dead_lettered == 1
    })
    .await;

    let records = apps::records("symfony", &ctx);
    let handled = apps::handled(&records);
    let expected: Vec<String> = (0..100)
        .map(|i| format!("e{i}"))
        .chain((0..100).filter(|&i| i != 13).map(|i| format!("c{i}")))
        .collect();
    assert_eq!(handled.len(), expected.len(), "every message handled");
    for id in &expected {
        let recs = &handled[id];
        assert_eq!(recs.len(), 1, "{id} handled once: {recs:?}");
        let kind = if id.starts_with('e') { "event" } else { "command" };
        assert_eq!(recs[0]["kind"], kind, "{id}");
        // The traceparent set at dispatch (events: the current context; commands: a stamp)
        // arrives in the handler, as the parent of the agent's span: the same trace id.
        let tp = recs[0]["traceparent"].as_str().unwrap_or_default();
        assert_eq!(tp.get(3..35), Some(apps::trace_id_of(id).as_str()), "{id}: {tp}");
    }
    // The recoverable failures were retried, then handled; the unrecoverable one never was.
    let mut failed: Vec<&str> = records
        .iter()
        .filter(|r| r.get("failed").is_some())
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    failed.sort_unstable();
    assert_eq!(failed, ["c7", "e7"]);
    assert!(!handled.contains_key("c13"));
    assert_eq!(agent.stats()["event"].retried, 1);
    assert_eq!(agent.stats()["command"].retried, 1);

    let dead = ctx.drain_dead("command").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(header_str(&dead[0].0, "x-agent-reason").as_deref(), Some("rejected"));
    assert_eq!(header_str(&dead[0].0, "x-agent-status").as_deref(), Some("422"));
    assert!(ctx.drain_dead("event").await.is_empty());

    agent.drain().await;
    ctx.cleanup().await;
}
