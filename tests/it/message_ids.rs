//! Messages published without an AMQP message_id: each one is counted, and the warning is
//! logged once per subject per minute (with the count), not once per message. Each subject has
//! its own limit: one subject's line does not hold back the other's.

use crate::common;

use std::time::Duration;

use common::TestCtx;
use common::procs::{AgentProcess, http};
use lapin::BasicProperties;

const WAIT: Duration = Duration::from_secs(60);
const LINE: &str = "Messages without message_id";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_message_ids_are_counted_and_warned_about_once_a_minute_per_subject() {
    let ctx = TestCtx::new("no-id").await;
    ctx.declare().await;
    // Without message_id: 40 events and 25 commands; one message of each subject with an id.
    let without = [("event", 40), ("command", 25)];
    for (subject, n) in without {
        for i in 0..n {
            let body = serde_json::json!({"id": format!("{subject}-n{i}"), "behave": "ok"});
            ctx.publish(
                subject,
                body.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
        ctx.publish_json(subject, &format!("{subject}-with-id"), "ok")
            .await;
    }
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let agent = AgentProcess::start(&ctx.write_config(), &log);
    let port = ctx.admin_port;
    let scrape = || async {
        http(port, "GET", "/metrics", None)
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    common::eventually(WAIT, "every message acked", || async {
        let m = scrape().await;
        without.iter().all(|(subject, n)| {
            m.contains(&format!(
                "amqp_agent_messages_acked_total{{subject=\"{subject}\"}} {}\n",
                n + 1
            ))
        })
    })
    .await;

    // The metric counts every message without an id, per subject.
    let m = scrape().await;
    for (subject, n) in without {
        let want =
            format!("amqp_agent_messages_without_message_id_total{{subject=\"{subject}\"}} {n}\n");
        assert!(m.contains(&want), "no `{want}` in:\n{m}");
    }
    // Within a minute: each subject logs its first occurrence (count=1) and holds back the
    // others; one line per subject, each in that subject's span.
    let lines_of = |subject: &str| -> Vec<String> {
        agent
            .log_text()
            .lines()
            .filter(|l| l.contains(LINE) && l.contains(&format!("subject={subject}")))
            .map(str::to_owned)
            .collect()
    };
    common::eventually(WAIT, "a warning line for each subject", || async {
        without
            .iter()
            .all(|(subject, _)| !lines_of(subject).is_empty())
    })
    .await;
    let all = agent.log_text();
    let all: Vec<&str> = all.lines().filter(|l| l.contains(LINE)).collect();
    assert_eq!(all.len(), 2, "one line per subject: {all:?}");
    for (subject, _) in without {
        let lines = lines_of(subject);
        assert_eq!(lines.len(), 1, "{subject}: {lines:?}");
        assert!(lines[0].contains("count=1"), "{}", lines[0]);
        assert!(
            lines[0].contains("docs/php-frameworks.md#message-ids"),
            "the line names the doc: {}",
            lines[0]
        );
    }
    assert_eq!(ctx.records().len(), 40 + 25 + 2);
}
