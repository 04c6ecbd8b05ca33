//! Operating the agent: resize by signals and by command, reload, pause, systemd notify,
//! dead-letter replay — against the real binary, RabbitMQ and php-fpm.

use crate::common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::TestCtx;
use common::procs::{AgentProcess, agent_cli, http};

const LONG: Duration = Duration::from_secs(60);

async fn status(port: u16) -> serde_json::Value {
    let (code, body) = http(port, "GET", "/status", None)
        .await
        .expect("admin API answers");
    assert_eq!(code, 200);
    serde_json::from_str(&body).unwrap()
}

/// `/status`, or `Null` while the admin listener is not up yet.
async fn try_status(port: u16) -> serde_json::Value {
    match http(port, "GET", "/status", None).await {
        Some((200, body)) => serde_json::from_str(&body).unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}

/// Waits until `subject`'s pool size asked for is `size` (a signal or command took effect).
async fn wait_target(port: u16, subject: &str, size: u64) {
    common::wait_status(port, &format!("{subject} target {size}"), LONG, |s| {
        s["subjects"][subject]["target_pool_size"] == size
    })
    .await;
}

async fn wait_pool(port: u16, subject: &str, size: u64) {
    common::eventually(LONG, &format!("{subject} pool at {size}"), || async {
        let s = try_status(port).await;
        s["subjects"][subject]["target_pool_size"] == size
            && s["subjects"][subject]["pool_size"] == size
    })
    .await;
}

/// Most requests of `subject` that PHP ran at the same time, among those started after `since_us`,
/// each lasting `dur_us`.
fn max_concurrency(ctx: &TestCtx, subject: &str, since_us: i64, dur_us: i64) -> usize {
    let mut starts: Vec<i64> = ctx
        .records()
        .iter()
        .filter(|r| {
            r["params"]["REQUEST_URI"]
                .as_str()
                .is_some_and(|u| u.ends_with(subject))
        })
        .filter_map(|r| r["t_start_us"].as_i64())
        .filter(|t| *t >= since_us)
        .collect();
    starts.sort_unstable();
    starts
        .iter()
        .map(|t| {
            starts
                .iter()
                .filter(|u| **u >= *t && **u < t + dur_us)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Reads systemd notifications from `sock` until one contains `want`; returns it.
fn recv_until(sock: &UnixDatagram, want: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no `{want}` from the agent (saw {seen:?}): {e}"));
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.contains(want) {
            return msg;
        }
        seen.push(msg);
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signals_and_commands_resize_pools_and_the_fpm_side_follows() {
    let mut ctx = TestCtx::new("resize").await;
    ctx.pool_size = 2;
    ctx.declare().await;
    for i in 0..600 {
        ctx.publish_json("event", &format!("r-{i}"), "sleep:200")
            .await;
    }
    let config = ctx.write_config();
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    // systemd's notify socket: READY=1 after each reload says it was handled, taken or not.
    let sock_path = common::fpm().dir.join(format!("{}.notify", ctx.id));
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(LONG)).unwrap();
    let env = [("NOTIFY_SOCKET", sock_path.display().to_string())];
    let agent = AgentProcess::start_with(&config, &log, &env, &[]);
    let port = ctx.admin_port;
    wait_pool(port, "event", 2).await;

    // Three SIGTTIN, each once the last one took effect: three steps, even if deliveries of
    // the same signal would coalesce.
    for size in 3..=5 {
        agent.signal(libc::SIGTTIN);
        wait_target(port, "event", size).await;
    }
    wait_pool(port, "event", 5).await;
    wait_pool(port, "command", 5).await;
    let grown = now_us();
    common::eventually(LONG, "5 concurrent requests in PHP", || async {
        max_concurrency(&ctx, "event", grown, 180_000) >= 5
    })
    .await;

    for size in [4, 3] {
        agent.signal(libc::SIGTTOU);
        wait_target(port, "event", size).await;
    }
    wait_pool(port, "event", 3).await;
    // Prefetch followed the pool: in-flight stays within 3 × prefetch_per_worker (2).
    common::eventually(LONG, "in-flight follows the smaller pool", || async {
        status(port).await["subjects"]["event"]["in_flight"]
            .as_u64()
            .unwrap()
            <= 6
    })
    .await;
    let shrunk = now_us() + 300_000;
    common::eventually(LONG, "requests after the shrink", || async {
        ctx.records()
            .iter()
            .filter(|r| r["t_start_us"].as_i64().unwrap() > shrunk + 1_000_000)
            .count()
            > 10
    })
    .await;
    assert!(
        max_concurrency(&ctx, "event", shrunk, 180_000) <= 3,
        "PHP never saw more than 3 at once after the shrink"
    );

    // Absolute size by command.
    let cfg = config.to_str().unwrap();
    let (code, out) = agent_cli(&["--config", cfg, "pool", "set", "event", "6"]);
    assert_eq!(code, 0, "{out}");
    wait_pool(port, "event", 6).await;
    let (code, out) = agent_cli(&["--config", cfg, "pool", "set", "event", "65"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("outside"), "{out}");
    let (code, table) = agent_cli(&["--config", cfg, "status"]);
    assert_eq!(code, 0, "{table}");
    assert!(
        table.contains("event") && table.contains("consuming"),
        "{table}"
    );

    // Pause and resume.
    let (code, _) = agent_cli(&["--config", cfg, "pause", "command"]);
    assert_eq!(code, 0);
    common::eventually(LONG, "paused", || async {
        status(port).await["subjects"]["command"]["paused"] == true
    })
    .await;
    assert_eq!(http(port, "GET", "/readyz", None).await.unwrap().0, 503);
    let (code, _) = agent_cli(&["--config", cfg, "resume", "command"]);
    assert_eq!(code, 0);
    common::eventually(LONG, "resumed", || async {
        status(port).await["subjects"]["command"]["paused"] == false
    })
    .await;

    // SIGHUP: the file's command pool changes 2 → 4; event keeps its runtime size 6.
    ctx.set("subjects.command.pool_size", 4);
    let edited = ctx.toml();
    ctx.write_toml(&edited);
    agent.signal(libc::SIGHUP);
    recv_until(&sock, "RELOADING=1");
    recv_until(&sock, "READY=1");
    wait_pool(port, "command", 4).await;
    assert_eq!(
        status(port).await["subjects"]["event"]["target_pool_size"],
        6,
        "runtime size survives a reload"
    );
    // An invalid file is rejected; the running configuration stays.
    ctx.write_toml(&ctx.toml_with(|doc| {
        common::set_key(doc, "subjects.command.pool_size", "many");
    }));
    agent.signal(libc::SIGHUP);
    recv_until(&sock, "RELOADING=1");
    recv_until(&sock, "READY=1");
    let s = status(port).await;
    assert_eq!(
        (
            s["subjects"]["command"]["pool_size"].as_u64(),
            s["ready"].as_bool()
        ),
        (Some(4), Some(true))
    );

    // Nothing lost or duplicated through all of it.
    ctx.write_toml(&edited);
    common::eventually(Duration::from_secs(120), "all 600 handled", || async {
        ctx.records_by_id().len() == 600
    })
    .await;
    let dupes = ctx.records_by_id().values().filter(|r| r.len() > 1).count();
    assert_eq!(dupes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shrinking_while_every_worker_is_busy_loses_nothing() {
    let ctx = TestCtx::new("shrinkbusy").await;
    ctx.declare().await;
    for i in 0..40 {
        ctx.publish_json("event", &format!("s-{i}"), "sleep:400")
            .await;
    }
    let config = ctx.write_config();
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let _agent = AgentProcess::start(&config, &log);
    let port = ctx.admin_port;
    common::eventually(LONG, "all 4 busy", || async {
        try_status(port).await["subjects"]["event"]["busy"] == 4
    })
    .await;
    let (code, out) = agent_cli(&[
        "--config",
        config.to_str().unwrap(),
        "pool",
        "set",
        "event",
        "1",
    ]);
    assert_eq!(code, 0, "{out}");
    wait_pool(port, "event", 1).await;
    common::eventually(LONG, "all 40 handled", || async {
        ctx.records_by_id().len() == 40
    })
    .await;
    assert!(
        ctx.records_by_id().values().all(|r| r.len() == 1),
        "no duplicates"
    );
    common::eventually(LONG, "queue empty", || async {
        ctx.queue_len(&ctx.queue("event")).await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn systemd_notify_ready_reloading_watchdog_stopping() {
    let ctx = TestCtx::new("notify").await;
    let sock_path = common::fpm().dir.join(format!("{}.notify", ctx.id));
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let config = ctx.write_config();
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let env = [
        ("NOTIFY_SOCKET", sock_path.display().to_string()),
        ("WATCHDOG_USEC", "400000".to_owned()),
    ];
    let mut agent = AgentProcess::start_with(&config, &log, &env, &[]);
    assert!(recv_until(&sock, "READY=1").contains("STATUS="));
    recv_until(&sock, "WATCHDOG=1");
    recv_until(&sock, "WATCHDOG=1");
    agent.signal(libc::SIGHUP);
    assert!(recv_until(&sock, "RELOADING=1").contains("MONOTONIC_USEC="));
    recv_until(&sock, "READY=1");
    agent.signal(libc::SIGTERM);
    recv_until(&sock, "STOPPING=1");
    assert_eq!(agent.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

/// A SIGTERM with nothing wrong logs nothing at ERROR level: work that raced the connection's
/// close (a channel closed as it is dropped) used to log "Connection error: invalid connection
/// state: Closed" once per subject at every clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_stop_logs_no_error() {
    let ctx = TestCtx::new("clean-stop").await;
    ctx.declare().await;
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let mut agent = AgentProcess::start(&ctx.write_config(), &log);
    for i in 0..3 {
        ctx.publish_json("event", &format!("c-{i}"), "ok").await;
    }
    common::eventually(LONG, "3 handled", || async { ctx.records().len() == 3 }).await;
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(30)).code(), Some(0));
    let text = agent.log_text();
    assert!(text.contains("Shutdown requested"), "{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(
        errors.is_empty(),
        "ERROR lines at a clean stop:\n{}",
        errors.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_can_be_listed_and_replayed() {
    let ctx = TestCtx::new("replay").await;
    let agent = ctx.start_agent().await;
    for i in 0..3 {
        ctx.publish_json("event", &format!("d-{i}"), "status:404")
            .await;
    }
    common::eventually(LONG, "dead-lettered", || async {
        agent.stats()["event"].dead_lettered == 3
    })
    .await;
    agent.drain().await;
    let dead = ctx.dead_queue("event");
    let cfg = ctx.write_config();
    let cfg = cfg.to_str().unwrap();
    let (code, listing) = agent_cli(&["--config", cfg, "dead-letters", "list", "event"]);
    assert_eq!(code, 0, "{listing}");
    for i in 0..3 {
        assert!(listing.contains(&format!("d-{i}")), "{listing}");
    }
    assert!(
        listing.contains("rejected") && listing.contains("404"),
        "{listing}"
    );
    common::eventually(LONG, "listing leaves them in place", || async {
        ctx.queue_len(&dead).await == 3
    })
    .await;

    let (code, out) = agent_cli(&[
        "--config",
        cfg,
        "dead-letters",
        "replay",
        "event",
        "--limit",
        "2",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("replayed 2"), "{out}");
    common::eventually(LONG, "moved", || async {
        ctx.queue_len(&dead).await == 1 && ctx.queue_len(&ctx.queue("event")).await == 2
    })
    .await;
    // Back in the main queue: same body and id, attempt counter and failure headers gone.
    for _ in 0..2 {
        let msg = ctx
            .channel
            .basic_get(ctx.queue("event").as_str().into(), Default::default())
            .await
            .unwrap()
            .expect("replayed message");
        let props = &msg.delivery.properties;
        let id = props.message_id().as_ref().unwrap().to_string();
        assert!(id.starts_with("d-"));
        let body: serde_json::Value = serde_json::from_slice(&msg.delivery.data).unwrap();
        assert_eq!(body["id"], id.as_str());
        for h in [
            "x-agent-attempt",
            "x-agent-reason",
            "x-agent-status",
            "x-agent-last-error",
            "x-death",
        ] {
            assert!(
                common::header_str(props, h).is_none(),
                "{h} still set on {id}"
            );
        }
        msg.delivery.acker.ack(Default::default()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_with_a_new_retry_policy_restarts_the_consumers_gracefully() {
    let mut ctx = TestCtx::new("reloadpolicy").await;
    ctx.retry_toml = "[retry]\ndelays = [\"100ms\"]\nmax_attempts = 3\n".to_owned();
    let config = ctx.write_config();
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let agent = AgentProcess::start(&config, &log);
    ctx.wait_ready().await;
    ctx.set("retry.delays", vec!["1500ms"]);
    ctx.write_config();
    agent.signal(libc::SIGHUP);
    // Each consumer was drained and started again, and consumes.
    ctx.wait_status("both consumers restarted and consuming", |s| {
        s["ready"] == true
            && common::all_subjects(s, |s| {
                s["consumer_starts"] == 2 && s["connection"] == "connected"
            })
    })
    .await;
    ctx.publish_json("event", "after-reload", "fail-until:2")
        .await;
    common::eventually(LONG, "retried", || async {
        ctx.records_by_id()
            .get("after-reload")
            .is_some_and(|r| r.len() == 2)
    })
    .await;
    let r = &ctx.records_by_id()["after-reload"];
    let gap = r[1]["t_start_us"].as_i64().unwrap() - r[0]["t_start_us"].as_i64().unwrap();
    assert!(
        gap >= 1_500_000,
        "the reloaded 1.5 s delay applies, got {gap} µs"
    );
    assert!(
        !agent.log_text().contains("Consumer failed"),
        "a reload is not a crash"
    );
}
