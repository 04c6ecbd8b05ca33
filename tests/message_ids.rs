//! Messages published without an AMQP message_id: each one is counted, and the warning is
//! logged once per subject per minute (with the count), not once per message.

mod common;

use std::time::Duration;

use common::TestCtx;
use common::procs::{AgentProcess, http};
use lapin::BasicProperties;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_message_ids_are_counted_and_warned_about_once_a_minute() {
    let ctx = TestCtx::new("no-id").await;
    ctx.declare().await;
    for i in 0..40 {
        let body = serde_json::json!({"id": format!("n{i}"), "behave": "ok"}).to_string();
        ctx.publish("event", body.as_bytes(), BasicProperties::default())
            .await;
    }
    ctx.publish_json("event", "with-id", "ok").await;
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let agent = AgentProcess::start(&ctx.write_config(), &log);
    let port = ctx.admin_port;
    let scrape = || async {
        http(port, "GET", "/metrics", None)
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    common::eventually(WAIT, "41 acked", || async {
        scrape()
            .await
            .contains("amqp_agent_messages_acked_total{subject=\"event\"} 41\n")
    })
    .await;

    let m = scrape().await;
    assert!(
        m.contains("amqp_agent_messages_without_message_id_total{subject=\"event\"} 40\n"),
        "{m}"
    );
    // Within a minute: the first occurrence is logged (count=1), the 39 others are held back.
    let text = agent.log_text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Messages without message_id"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("count=1"), "{}", lines[0]);
    assert_eq!(ctx.records().len(), 41);
}
