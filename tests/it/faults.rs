//! Fault injection with real processes: the agent binary, RabbitMQ, php-fpm.
//!
//! Each scenario publishes a known set of message ids, injects a fault mid-stream and checks
//! with the recording receiver and the queues: lost = 0, duplicates only for messages that were
//! in flight. Each prints its figures (`FAULT ...` lines; run with `--nocapture` to see them).

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::TestCtx;
use common::procs::{AgentProcess, PrivateFpm, TcpProxy};

const LONG: Duration = Duration::from_secs(120);

/// What a scenario measured.
struct Figures {
    sent: usize,
    handled: usize,
    lost: usize,
    duplicates: usize,
}

/// Compares the published ids with what PHP recorded.
fn tally(ctx: &TestCtx, ids: &BTreeSet<String>) -> Figures {
    let by_id = ctx.records_by_id();
    let handled = ids.iter().filter(|id| by_id.contains_key(*id)).count();
    let duplicates = ids
        .iter()
        .map(|id| by_id.get(id).map_or(0, |r| r.len().saturating_sub(1)))
        .sum();
    Figures {
        sent: ids.len(),
        handled,
        lost: ids.len() - handled,
        duplicates,
    }
}

fn report(name: &str, f: &Figures, recover: Option<Duration>) {
    let recover = recover.map_or("-".to_owned(), |d| format!("{} ms", d.as_millis()));
    println!(
        "FAULT {name}: sent={} handled={} lost={} duplicates={} time_to_recover={recover}",
        f.sent, f.handled, f.lost, f.duplicates
    );
}

async fn publish_many(ctx: &TestCtx, prefix: &str, n: usize, behave: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let subject = if i % 2 == 0 { "event" } else { "command" };
        let id = format!("{prefix}-{i}");
        ctx.publish_json(subject, &id, behave).await;
        ids.insert(id);
    }
    ids
}

async fn all_handled(ctx: &TestCtx, ids: &BTreeSet<String>, timeout: Duration) {
    common::eventually(timeout, "every message handled", || async {
        let by_id = ctx.records_by_id();
        ids.iter().all(|id| by_id.contains_key(id))
    })
    .await;
}

/// Queues (main, dead) of both subjects are empty: nothing is waiting or was dead-lettered.
async fn queues_empty(ctx: &TestCtx) {
    for subject in ["event", "command"] {
        let q = ctx.queue(subject);
        common::eventually(LONG, &format!("{q} empty"), || async {
            ctx.queue_len(&q).await == 0
        })
        .await;
        assert_eq!(
            ctx.queue_len(&ctx.dead_queue(subject)).await,
            0,
            "nothing may be dead-lettered"
        );
    }
}

/// The 100 ms delay queue of `subject`.
fn delay_queue(ctx: &TestCtx, subject: &str) -> String {
    ctx.delay_queue(subject, Duration::from_millis(100))
}

/// Time from `since` until the record count grows past `before`.
async fn recovery(ctx: &TestCtx, before: usize, since: Instant) -> Duration {
    assert!(
        before < 1000,
        "the backlog must outlast the fault ({before} handled already)"
    );
    common::eventually(LONG, "progress after the fault", || async {
        ctx.records().len() > before
    })
    .await;
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_agent_mid_stream() {
    let ctx = TestCtx::new("kill9").await;
    ctx.declare().await;
    let ids = publish_many(&ctx, "k", 1500, "sleep:10").await;
    let config = ctx.write_config();
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let mut agent = AgentProcess::start(&config, &log);
    common::eventually(LONG, "300 handled", || async { ctx.records().len() >= 300 }).await;
    agent.signal(libc::SIGKILL);
    agent.wait_exit(Duration::from_secs(10));
    let before = ctx.records().len();
    let t = Instant::now();
    let _agent = AgentProcess::start(&config, &log);
    let recover = recovery(&ctx, before, t).await;
    all_handled(&ctx, &ids, LONG).await;
    queues_empty(&ctx).await;
    let f = tally(&ctx, &ids);
    report("kill -9 agent", &f, Some(recover));
    assert_eq!(f.lost, 0);
    // Only what was in flight can repeat: at most the prefetch of both subjects (2 × 4 × 2).
    assert!(f.duplicates <= 16, "{} duplicates", f.duplicates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_link_cut_and_restored() {
    let mut ctx = TestCtx::new("linkcut").await;
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    ctx.amqp_url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    ctx.declare().await;
    let ids = publish_many(&ctx, "l", 1200, "sleep:10").await;
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let _agent = AgentProcess::start(&ctx.write_config(), &log);
    common::eventually(LONG, "200 handled", || async { ctx.records().len() >= 200 }).await;
    proxy.cut();
    // While cut, no progress is possible; wait until the agent noticed and is reconnecting.
    ctx.wait_status("a subject disconnected", |s| {
        common::any_subject(s, |s| s["connection"] == "disconnected")
    })
    .await;
    let before = ctx.records().len();
    proxy.restore();
    let t = Instant::now();
    let recover = recovery(&ctx, before, t).await;
    all_handled(&ctx, &ids, LONG).await;
    queues_empty(&ctx).await;
    let f = tally(&ctx, &ids);
    report("broker link cut", &f, Some(recover));
    assert_eq!(f.lost, 0);
    assert!(f.duplicates <= 16, "{} duplicates", f.duplicates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn php_fpm_stopped_then_started_dead_letters_nothing() {
    let mut ctx = TestCtx::new("fpmdown").await;
    let mut fpm = PrivateFpm::start("down");
    ctx.fpm_port = fpm.port;
    ctx.retry_toml = "[retry]\ndelays = [\"200ms\"]\nmax_attempts = 2\n".to_owned();
    ctx.declare().await;
    let ids = publish_many(&ctx, "f", 800, "sleep:10").await;
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let _agent = AgentProcess::start(&ctx.write_config(), &log);
    common::eventually(LONG, "100 handled", || async { ctx.records().len() >= 100 }).await;
    fpm.down();
    ctx.wait_status("both subjects paused", |s| {
        common::all_subjects(s, |s| s["paused"] == true)
    })
    .await;
    let before = ctx.records().len();
    // The outage lasts well past max_attempts × delay: an unreachable FPM must not use up attempts.
    let outage = Instant::now();
    common::eventually(LONG, "attempts that did not reach FPM", || async {
        common::metrics(ctx.admin_port).await.is_some_and(|m| {
            let unreached = [("status", "fpm_unavailable")];
            common::metric_sum(&m, "amqp_agent_fpm_responses_total", &unreached) >= 2.0
        }) && outage.elapsed() > Duration::from_secs(2)
    })
    .await;
    fpm.up();
    let t = Instant::now();
    let recover = recovery(&ctx, before, t).await;
    all_handled(&ctx, &ids, LONG).await;
    queues_empty(&ctx).await;
    let f = tally(&ctx, &ids);
    report("php-fpm stopped and started", &f, Some(recover));
    assert_eq!(f.lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_fpm_child_killed_mid_request_gets_its_message_retried() {
    let ctx = TestCtx::new("childkill").await;
    let agent = ctx.start_agent().await;
    ctx.publish_json("event", "victim", "sleep:3000").await;
    let ids = publish_many(&ctx, "c", 100, "ok").await;
    common::eventually(LONG, "victim started", || async {
        ctx.records_by_id().contains_key("victim")
    })
    .await;
    let pid = ctx.records_by_id()["victim"][0]["pid"].as_i64().unwrap();
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    common::eventually(LONG, "victim retried", || async {
        ctx.records_by_id()["victim"].len() >= 2
    })
    .await;
    all_handled(&ctx, &ids, LONG).await;
    common::eventually(LONG, "victim acked", || async {
        agent.stats()["event"].acked as usize + agent.stats()["command"].acked as usize == 101
    })
    .await;
    queues_empty(&ctx).await;
    let f = tally(&ctx, &ids);
    report("FPM child kill -9", &f, None);
    assert_eq!(f.lost, 0);
    assert_eq!(agent.stats()["event"].dead_lettered, 0);
    agent.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_message_and_a_slow_handler_do_not_hold_up_the_rest() {
    let mut ctx = TestCtx::new("poison").await;
    ctx.retry_toml = "[retry]\ndelays = [\"100ms\"]\nmax_attempts = 3\n".to_owned();
    let agent = ctx.start_agent().await;
    ctx.publish_json("event", "poison", "status:500").await;
    ctx.publish_json("event", "slow", "sleep:8000").await;
    let ids = publish_many(&ctx, "p", 400, "ok").await;
    all_handled(&ctx, &ids, LONG).await;
    common::eventually(LONG, "poison and slow dead-lettered", || async {
        agent.stats()["event"].dead_lettered == 2
    })
    .await;
    let dead = ctx.drain_dead("event").await;
    let dead_ids: BTreeSet<String> = dead
        .iter()
        .map(|(p, _)| p.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(
        dead_ids,
        ["poison", "slow"].iter().map(|s| (*s).to_owned()).collect()
    );
    let by_id = ctx.records_by_id();
    assert_eq!(by_id["poison"].len(), 3);
    assert_eq!(by_id["slow"].len(), 3);
    let f = tally(&ctx, &ids);
    report("poison + slow handler", &f, None);
    assert_eq!((f.lost, f.duplicates), (0, 0));
    agent.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_finishes_in_flight_work_and_exits_0() {
    let ctx = TestCtx::new("sigterm").await;
    ctx.declare().await;
    let ids = publish_many(&ctx, "t", 1000, "sleep:20").await;
    let config = ctx.write_config();
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let mut agent = AgentProcess::start(&config, &log);
    common::eventually(LONG, "100 handled", || async { ctx.records().len() >= 100 }).await;
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(0),
        "drain must exit 0; log:\n{}",
        agent.log_text()
    );
    assert!(
        agent.log_text().contains("Drained"),
        "in-flight work finished before exit"
    );
    let _again = AgentProcess::start(&config, &log);
    all_handled(&ctx, &ids, LONG).await;
    queues_empty(&ctx).await;
    let f = tally(&ctx, &ids);
    report("SIGTERM under load", &f, None);
    assert_eq!(f.lost, 0);
    // In-flight requests finished and were acked before exit: nothing runs twice.
    assert_eq!(f.duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_worker_is_replaced_and_its_message_retried() {
    let ctx = TestCtx::new("panic").await;
    // A worker given a message whose id starts with `__panic__` panics, unless the delivery is
    // a redelivery.
    let hook: amqp_agent::actors::hook::DeliveryHook = std::sync::Arc::new(|delivery| {
        let id = delivery.properties.message_id().as_ref();
        if id.is_some_and(|id| id.as_str().starts_with("__panic__")) && !delivery.redelivered {
            panic!("test hook: worker panics on {id:?}");
        }
    });
    let agent = ctx.start_agent_with_hook(Some(hook)).await;
    ctx.publish_json("command", "__panic__1", "ok").await;
    let ids = publish_many(&ctx, "w", 200, "ok").await;
    all_handled(&ctx, &ids, LONG).await;
    common::eventually(LONG, "panicked message handled", || async {
        ctx.records_by_id().contains_key("__panic__1")
    })
    .await;
    common::eventually(LONG, "all acked", || async {
        let s = agent.stats();
        s["event"].acked + s["command"].acked == 201
    })
    .await;
    let stats = agent.stats()["command"];
    assert_eq!(stats.worker_restarts, 1);
    assert_eq!(stats.pool_size, 4, "the pool is back to full size");
    let by_id = ctx.records_by_id();
    assert_eq!(by_id["__panic__1"].len(), 1);
    assert_eq!(
        by_id["__panic__1"][0]["params"]["HTTP_X_AGENT_REDELIVERED"],
        "1"
    );
    let f = tally(&ctx, &ids);
    report("worker panic", &f, None);
    assert_eq!((f.lost, f.duplicates), (0, 0));
    agent.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_restart_intensity_the_agent_exits_non_zero() {
    let mut ctx = TestCtx::new("intensity").await;
    // Another connection holds the queue exclusively: declaring it fails every time
    // (RESOURCE_LOCKED), which a restart might fix, so it counts as a crash. (A queue declared
    // with other arguments is a configuration error instead: `queues.rs`.)
    let exclusive = lapin::options::QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    ctx.channel
        .queue_declare(
            ctx.queue("event").as_str().into(),
            exclusive,
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    ctx.extra_toml = "restart_backoff = \"10ms\"\nrestart_backoff_max = \"50ms\"\nmax_restarts = 3\nrestart_window = \"1m\"\n".to_owned();
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let mut agent = AgentProcess::start(&ctx.write_config(), &log);
    let status = agent.wait_exit(Duration::from_secs(60));
    let text = agent.log_text();
    assert_eq!(status.code(), Some(1), "log:\n{text}");
    assert!(text.contains("giving up"), "{text}");
    assert!(text.contains("RESOURCE_LOCKED"), "{text}");
    println!("FAULT restart intensity: exit code {:?}", status.code());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigquit_stops_at_once_and_loses_nothing() {
    let ctx = TestCtx::new("sigquit").await;
    ctx.declare().await;
    let ids = publish_many(&ctx, "q", 600, "sleep:50").await;
    let config = ctx.write_config();
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let mut agent = AgentProcess::start(&config, &log);
    common::eventually(LONG, "50 handled", || async { ctx.records().len() >= 50 }).await;
    let t = Instant::now();
    agent.signal(libc::SIGQUIT);
    let status = agent.wait_exit(Duration::from_secs(15));
    let stop = t.elapsed();
    assert_eq!(status.code(), Some(0));
    let _again = AgentProcess::start(&config, &log);
    all_handled(&ctx, &ids, LONG).await;
    queues_empty(&ctx).await;
    let f = tally(&ctx, &ids);
    report("SIGQUIT under load", &f, Some(stop));
    assert_eq!(f.lost, 0);
    assert!(f.duplicates <= 16, "{} duplicates", f.duplicates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_retry_publish_leaves_the_original_unacked() {
    let mut ctx = TestCtx::new("pubfail").await;
    // Topology managed elsewhere (the agent only checks it, passively, at start); the event delay
    // queue is deleted once the agent consumes, so the retry copy is unroutable.
    ctx.retry_toml = "[retry]\ndelays = [\"100ms\"]\nmax_attempts = 5\n".to_owned();
    ctx.set("amqp.declare", false);
    ctx.declare().await;
    let delay_args = |subject: &str| {
        let mut args = lapin::types::FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            lapin::types::AMQPValue::LongLongInt(100),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            lapin::types::AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            lapin::types::AMQPValue::LongString(ctx.queue(subject).as_str().into()),
        );
        args
    };
    for subject in ["event", "command"] {
        for (name, args) in [
            (ctx.dead_queue(subject), lapin::types::FieldTable::default()),
            (delay_queue(&ctx, subject), delay_args(subject)),
        ] {
            ctx.channel
                .queue_declare(
                    name.as_str().into(),
                    lapin::options::QueueDeclareOptions::durable(),
                    args,
                )
                .await
                .unwrap();
        }
    }
    let agent = amqp_agent::agent::Agent::start(ctx.config()).await.unwrap();
    agent.wait_consuming(LONG).await.unwrap();
    ctx.delete_queue(&delay_queue(&ctx, "event")).await;
    ctx.publish_json("event", "comes-back", "fail-until:2")
        .await;
    // Attempt 1 fails, its retry copy cannot be stored: the original is returned, not acked, and
    // comes back (redelivered) as attempt 1 again.
    common::eventually(LONG, "the original came back", || async {
        ctx.records_by_id()
            .get("comes-back")
            .is_some_and(|r| r.len() >= 2)
    })
    .await;
    let again = &ctx.records_by_id()["comes-back"][1];
    assert_eq!(again["params"]["HTTP_X_AGENT_ATTEMPT"], "1");
    assert_eq!(again["params"]["HTTP_X_AGENT_REDELIVERED"], "1");
    assert_eq!(
        agent.stats()["event"].retried,
        0,
        "no retry copy was stored"
    );
    assert!(agent.stats()["event"].requeued >= 1);
    // Once the delay queue exists, the retry goes through and attempt 2 succeeds.
    let args = delay_args("event");
    ctx.channel
        .queue_declare(
            delay_queue(&ctx, "event").as_str().into(),
            lapin::options::QueueDeclareOptions::durable(),
            args,
        )
        .await
        .unwrap();
    common::eventually(LONG, "handled on attempt 2", || async {
        ctx.records_by_id()["comes-back"]
            .iter()
            .any(|r| r["params"]["HTTP_X_AGENT_ATTEMPT"] == "2")
    })
    .await;
    common::eventually(LONG, "acked", || async {
        agent.stats()["event"].acked == 1
    })
    .await;
    agent.drain().await;
}

/// Acks are coalesced into `multiple` acks up to the oldest message still running; the ones that
/// finished after it must not wait for it. A handler that runs for a minute, ten quick messages
/// behind it: once the agent reports the ten acked, kill -9 — only the slow one comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_message_does_not_hold_back_the_acks_of_later_ones() {
    // A private pool: the slow handler keeps one FPM child busy after the agent is gone.
    let fpm = PrivateFpm::start("hol");
    let mut ctx = TestCtx::new("hol").await;
    ctx.fpm_port = fpm.port;
    ctx.pool_size = 2;
    ctx.declare().await;
    ctx.publish_json("event", "slow", "sleep:60000").await;
    let mut fast = BTreeSet::new();
    for i in 0..10 {
        let id = format!("quick-{i}");
        ctx.publish_json("event", &id, "ok").await;
        fast.insert(id);
    }
    ctx.set("fpm.timeout", "120s");
    let config = ctx.write_config();
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let mut agent = AgentProcess::start(&config, &log);
    all_handled(&ctx, &fast, LONG).await;
    ctx.wait_status("the ten quick messages acked", |s| {
        s["subjects"]["event"]["acked"] == 10
    })
    .await;
    assert!(
        ctx.records_by_id().contains_key("slow"),
        "the slow handler is running"
    );
    agent.signal(libc::SIGKILL);
    agent.wait_exit(Duration::from_secs(10));
    let queue = ctx.queue("event");
    common::eventually(LONG, "unacked messages back in the queue", || async {
        ctx.queue_len(&queue).await > 0
    })
    .await;
    let back = ctx.take_ids(&queue).await;
    assert_eq!(
        back,
        vec!["slow".to_owned()],
        "only the running message returns"
    );
    drop(fpm);
}

/// lapin connects on the runtime's blocking pool (vendor/lapin/PATCHES.md 7). An attempt the
/// agent gave up on at the URL's `connection_timeout` would wait there for the kernel's SYN
/// retries (about two minutes) when the node drops packets, and dropping the runtime joins that
/// pool. It does not wait that long: the drop shuts the I/O driver down first, which ends the
/// attempt (measured: 0.2 s; `Runtime::shutdown_timeout` joins the pool first and waits out its
/// whole timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abandoned_connection_attempt_does_not_hold_up_the_exit() {
    let ctx = TestCtx::new("abandoned").await;
    let port = common::free_port();
    let _wall = common::nft::Blackhole::port(port);
    let silent = format!("amqp://guest:guest@127.0.0.1:{port}/%2f?connection_timeout=200");
    let text = ctx.toml_with(|doc| {
        common::remove_key(doc, "amqp.url");
        common::set_key(doc, "amqp.urls", vec![silent]);
    });
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let mut agent = AgentProcess::start(&ctx.write_toml(&text), &log);
    common::eventually(LONG, "a connection attempt given up", || async {
        agent.log_text().contains("Cannot connect to this node")
    })
    .await;
    let t = Instant::now();
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(20));
    let stop = t.elapsed();
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log_text());
    println!("FAULT exit with a connection attempt abandoned: {stop:?}");
}
