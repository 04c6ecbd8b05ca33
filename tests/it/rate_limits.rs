//! Rate limits per subject (issue #26, item 4): a backlog drains at the limit, without requeue
//! churn, and a runtime change applies within a second. Rates are read from when PHP started
//! each request (`t_start_us` of the recorder), not from the test's own clock.

use crate::common;

use std::time::Duration;

use amqp_agent::config::Rate;
use amqp_agent::rate::RateLimit;
use common::TestCtx;

const BACKLOG: usize = 1000;

/// Start times (µs) of PHP's requests, sorted.
fn starts(ctx: &TestCtx) -> Vec<i64> {
    let mut t: Vec<i64> = ctx
        .records()
        .iter()
        .filter_map(|r| r["t_start_us"].as_i64())
        .collect();
    t.sort_unstable();
    t
}

fn in_window(starts: &[i64], from: i64, len: Duration) -> usize {
    let to = from + i64::try_from(len.as_micros()).unwrap();
    starts.iter().filter(|t| **t >= from && **t < to).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_at_the_rate_limit_and_a_change_applies_within_a_second() {
    // Rates are counted within 5 %: no other test loads php-fpm or the cores meanwhile.
    let _alone = common::turn::alone().await;
    let mut ctx = TestCtx::new("rate").await;
    ctx.set("subjects.event.rate_limit", "50/s");
    ctx.declare().await;
    for i in 0..BACKLOG {
        ctx.publish_json("event", &format!("r-{i}"), "ok").await;
    }
    let agent = ctx.start_agent().await;
    // Ten seconds of drain, measured from PHP's first request.
    common::eventually(Duration::from_secs(30), "ten seconds of drain", || async {
        let t = starts(&ctx);
        t.first()
            .is_some_and(|first| t.last().unwrap() - first >= 10_500_000)
    })
    .await;
    let t = starts(&ctx);
    let first = t[0];
    let in_ten = in_window(&t, first, Duration::from_secs(10));
    eprintln!("50/s: {in_ten} requests in the first 10 s");
    assert!((475..=525).contains(&in_ten), "{in_ten} in 10 s at 50/s");
    let status = agent.handle().status();
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["subjects"]["event"]["rate_limit"], "50/s, burst 1");

    // Raise it at run time: the new rate holds from one second after the change.
    let changed_at = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap();
    let faster = RateLimit {
        rate: Rate::parse("200/s").unwrap(),
        burst: 1,
    };
    agent.handle().set_rate("event", Some(faster)).unwrap();
    common::eventually(
        Duration::from_secs(30),
        "two seconds at the new rate",
        || async {
            starts(&ctx)
                .last()
                .is_some_and(|l| *l >= changed_at + 2_000_000)
        },
    )
    .await;
    let t = starts(&ctx);
    let second = in_window(&t, changed_at + 1_000_000, Duration::from_secs(1));
    eprintln!("200/s: {second} requests in the second after the change");
    assert!((190..=210).contains(&second), "{second} in 1 s at 200/s");

    common::eventually(Duration::from_secs(60), "the whole backlog", || async {
        agent.stats()["event"].acked == BACKLOG as u64
    })
    .await;
    // No requeue churn: every message reached PHP once, never redelivered.
    let records = ctx.records_by_id();
    assert_eq!(records.len(), BACKLOG);
    for (id, recs) in &records {
        assert_eq!(recs.len(), 1, "{id}");
        assert_eq!(recs[0]["params"]["HTTP_X_AGENT_REDELIVERED"], "0", "{id}");
    }
    let stats = agent.stats()["event"];
    assert_eq!((stats.requeued, stats.received), (0, BACKLOG as u64));
    let metrics = agent.handle().metrics().encode();
    assert!(
        common::metric_sum(
            &metrics,
            "amqp_agent_rate_limit_wait_seconds_total",
            &[("subject", "event")]
        ) > 1.0,
        "time waited for the limiter is exported"
    );
    // SIGHUP with the file's rate unchanged keeps the operator's; a changed file's applies.
    let rate_of = |agent: &amqp_agent::agent::Agent| {
        serde_json::to_value(agent.handle().status()).unwrap()["subjects"]["event"]["rate_limit"]
            .clone()
    };
    agent.reload(ctx.config());
    common::eventually(Duration::from_secs(10), "reload applied", || async {
        rate_of(&agent) == "200/s, burst 1"
    })
    .await;
    ctx.set("subjects.event.rate_limit", "10/m");
    ctx.set("subjects.event.rate_burst", 3);
    agent.reload(ctx.config());
    common::eventually(Duration::from_secs(10), "the file's new rate", || async {
        rate_of(&agent) == "10/m, burst 3"
    })
    .await;
    agent.stop().await;
}
