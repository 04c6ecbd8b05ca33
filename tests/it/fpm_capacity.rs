//! FPM capacity: the status page read from a real php-fpm pool with `pm.status_path`, its
//! errors as states, and requests running past `fpm.slow_after` (docs/fpm-capacity.md).

use crate::common;

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
    // FPM lists a child once it has started: right after FPM's own start, a loaded machine may
    // show fewer than 4 for a read or two.
    common::eventually(LONG, "status page read, 4 children listed", || async {
        let fpm = handle.status().fpm;
        fpm.state == "ok" && fpm.max_children == Some(4)
    })
    .await;
    let fpm_state = handle.status().fpm;
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

/// The `event` pool asked for, and the sum of every subject's pool (the larger of its
/// workers and its target, so a shrink in progress counts at its old size).
fn pools(handle: &amqp_agent::agent::AgentHandle) -> (u64, u64) {
    let s = handle.status();
    let sum = s
        .subjects
        .values()
        .map(|s| s.stats.pool_size.max(s.target_pool_size))
        .sum();
    (s.subjects["event"].target_pool_size, sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_pool_grows_from_min_within_max_children_and_shrinks_back() {
    // FPM has 8 children; `command` is fixed at 1, so `event` may use 7.
    let (mut ctx, _fpm) = with_pool("fpmauto", 8, true, 1).await;
    ctx.event_extra =
        "pool_mode = \"auto\"\nmin_pool_size = 1\nmax_pool_size = 32\ncooldown = \"1s\"\n"
            .to_owned();
    ctx.declare().await;
    // Started on an empty queue, the pool is at its minimum (not at its maximum, Horizon's
    // failure); with a backlog it grows within 50 ms of consuming, too fast to observe here.
    let agent = ctx.start_agent().await;
    let handle = agent.handle();
    assert_eq!(
        handle.status().subjects["event"].target_pool_size,
        1,
        "starts at min"
    );
    // Published all at once (each confirm awaited together), and the pools sampled from the
    // first publish on: one confirmed publish after another took about 20 ms each on a loaded
    // machine, so the pool at 1 drained them as fast as they came, and the growth (if any)
    // happened before a sample was taken (seen: "grew only to 0", drained 58 ms after the last
    // publish).
    let started = std::time::Instant::now();
    let publish = futures_util::future::join_all((0..600).map(|i| {
        let ctx = &ctx;
        async move {
            ctx.publish_json("event", &format!("a-{i}"), "sleep:20")
                .await
        }
    }));
    let sample = async {
        let (mut peak, mut worst_sum) = (0, 0);
        let deadline = started + Duration::from_secs(120);
        while ctx.records().len() < 600 {
            assert!(std::time::Instant::now() < deadline, "backlog not drained");
            let (event, sum) = pools(&handle);
            worst_sum = worst_sum.max(sum);
            peak = peak.max(event);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (peak, worst_sum)
    };
    let (_, (peak, worst_sum)) = tokio::join!(publish, sample);
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
    assert!(
        handle.status().subjects["event"].pinned,
        "/status shows the pin"
    );
    assert!(!handle.status().subjects["command"].pinned);
    // Ten status reads (2 s): without the pin the idle pool would shrink after its 1 s cooldown.
    let mut reads = handle.monitor().subscribe();
    for _ in 0..10 {
        reads.changed().await.unwrap();
    }
    assert_eq!(
        handle.status().subjects["event"].target_pool_size,
        3,
        "pinned"
    );
    handle.pool_auto("event").unwrap();
    assert!(!handle.status().subjects["event"].pinned, "released");
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

/// What a drain of [`BACKLOG`] messages saw.
struct Drain {
    took: Duration,
    /// Largest `event` pool, and the largest sum of all pools, sampled from `/status`.
    peak_pool: u64,
    worst_sum: u64,
    /// FPM's `max_children` and most busy children, read from its status page by the test.
    fpm_max_children: u64,
    fpm_peak_active: u64,
    fpm_reads: usize,
}

const BACKLOG: usize = 2000;

/// Lines the recorder has written for `ctx` (each handled message writes one).
fn handled(ctx: &TestCtx) -> usize {
    let path = common::fpm()
        .dir
        .join("records")
        .join(format!("{}.jsonl", ctx.id));
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

/// FPM's status page, read by the test on a connection of its own.
async fn fpm_status(port: u16) -> Option<amqp_agent::fpm_status::FpmStatus> {
    let address = amqp_agent::config::FpmAddress::Tcp(format!("127.0.0.1:{port}"));
    let mut client = amqp_agent::fastcgi::FpmClient::new(address, LONG, 1 << 20);
    let reply = client
        .status_page("/fpm-status", Duration::from_secs(2), 1 << 20)
        .await
        .ok()?;
    amqp_agent::fpm_status::parse_reply(&reply.stdout).ok()
}

/// Publishes [`BACKLOG`] messages of 20 ms to `ctx`'s event queue, starts an agent on them and
/// samples its pools (`/status`) and FPM's status page until every message is handled.
async fn drain_backlog(ctx: &TestCtx, fpm_port: u16) -> (amqp_agent::agent::Agent, Drain) {
    ctx.declare().await;
    for i in 0..BACKLOG {
        ctx.publish_json("event", &format!("d-{i}"), "sleep:20")
            .await;
    }
    let started = std::time::Instant::now();
    let agent = ctx.start_agent().await;
    let handle = agent.handle();
    let mut seen = Drain {
        took: Duration::ZERO,
        peak_pool: 0,
        worst_sum: 0,
        fpm_max_children: 0,
        fpm_peak_active: 0,
        fpm_reads: 0,
    };
    let deadline = started + Duration::from_secs(120);
    let mut next_fpm_read = started;
    while handled(ctx) < BACKLOG {
        assert!(std::time::Instant::now() < deadline, "backlog not drained");
        let (event, sum) = pools(&handle);
        seen.worst_sum = seen.worst_sum.max(sum);
        seen.peak_pool = seen.peak_pool.max(event);
        if std::time::Instant::now() >= next_fpm_read {
            next_fpm_read += Duration::from_millis(250);
            if let Some(status) = fpm_status(fpm_port).await {
                let max = status.max_children(None).unwrap_or(0);
                assert!(
                    sum <= max,
                    "pools summed to {sum} > FPM's max_children {max}"
                );
                seen.fpm_max_children = max;
                seen.fpm_peak_active = seen
                    .fpm_peak_active
                    .max(status.active_without_probe("/fpm-status"));
                seen.fpm_reads += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    seen.took = started.elapsed();
    (agent, seen)
}

/// Issue #15, tests 1 and 2: a backlog of 2,000 messages of 20 ms on FPM's 8 children. An auto
/// pool (min 1, max 32, the other keys at their defaults) grows from 1, the pools never sum to
/// more than FPM's `max_children` (read from FPM's status page by the test during the drain),
/// and it drains within 1.25× the time of a fixed pool of 8 on the same FPM (the faster of two
/// runs of each, alternated). Then the idle pool
/// shrinks back to its minimum, one `max_shift` step per cooldown. The status page is read at
/// its default interval (2 s): while a pool grows into a deep backlog, the agent reads it again
/// after each step instead of waiting that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_pool_drains_a_backlog_within_a_quarter_of_a_fixed_pool_of_max_children() {
    let fpm = PrivateFpm::start_with("fpmdrain", 8, Some("/fpm-status"));
    let context = |name: &str, auto: bool| {
        let name = name.to_owned();
        async move {
            let mut ctx = TestCtx::new(&name).await;
            ctx.fpm_port = fpm.port;
            // The status page at its default interval (2 s): a ramp does not wait for it.
            ctx.fpm_extra = "status_path = \"/fpm-status\"\n".to_owned();
            ctx.unset("subjects.command");
            if auto {
                ctx.set("subjects.event.pool_mode", "auto");
                ctx.set("subjects.event.min_pool_size", 1);
                ctx.set("subjects.event.max_pool_size", 32);
            } else {
                ctx.set("subjects.event.pool_size", 8);
            }
            ctx
        }
    };
    // Two pairs, alternated, and the faster run of each setup compared: the other tests share the
    // machine's two cores and may overlap one run more than the other.
    let (mut fixed, mut auto) = (Vec::new(), Vec::new());
    let mut last = None;
    for pair in 1..=2 {
        let ctx = context(&format!("fpmdrain-fixed{pair}"), false).await;
        let (agent, seen) = drain_backlog(&ctx, fpm.port).await;
        agent.drain().await;
        fixed.push(seen);
        let ctx = context(&format!("fpmdrain-auto{pair}"), true).await;
        let (agent, seen) = drain_backlog(&ctx, fpm.port).await;
        auto.push(seen);
        if let Some((previous, _)) = last.replace((agent, ctx)) {
            previous.drain().await;
        }
    }
    let (agent, ctx) = last.unwrap();
    let config = ctx.config();
    let event = &config.subjects["event"];
    let (cooldown, max_shift, interval) =
        (event.cooldown, event.max_shift, config.fpm.status_interval);
    let best = |runs: &[Drain]| runs.iter().map(|d| d.took).min().unwrap();
    let ratio = best(&auto).as_secs_f64() / best(&fixed).as_secs_f64();
    for (f, a) in fixed.iter().zip(&auto) {
        eprintln!(
            "{BACKLOG} × 20 ms on 8 FPM children: fixed pool of 8 {:?}, auto pool {:?} (peak {}, largest sum {}), {:.2}; \
             FPM's status read {} and {} times: max_children {} and {}, most busy children {} and {}",
            f.took,
            a.took,
            a.peak_pool,
            a.worst_sum,
            a.took.as_secs_f64() / f.took.as_secs_f64(),
            f.fpm_reads,
            a.fpm_reads,
            f.fpm_max_children,
            a.fpm_max_children,
            f.fpm_peak_active,
            a.fpm_peak_active,
        );
    }
    eprintln!(
        "best of each: fixed {:?}, auto {:?}, ratio {ratio:.2}",
        best(&fixed),
        best(&auto)
    );
    for a in &auto {
        assert_eq!(a.fpm_max_children, 8, "FPM's status page read");
        assert!(a.worst_sum <= 8, "pools summed to {}", a.worst_sum);
        assert!(
            a.peak_pool >= 7,
            "the auto pool grew only to {}",
            a.peak_pool
        );
    }
    assert!(
        ratio <= 1.25,
        "the auto pool took {ratio:.2}× the fixed pool's time"
    );
    // Test 2: idle, the pool shrinks to min_pool_size, by max_shift once per cooldown.
    let handle = agent.handle();
    let idle_since = std::time::Instant::now();
    let steps = u32::try_from(auto[1].peak_pool.saturating_sub(1))
        .unwrap()
        .div_ceil(max_shift);
    // The queue's depth, read every status interval, may show the last messages for one more
    // interval; then idle for a cooldown and a step per cooldown, each at the next status
    // read; a second of slack for this load.
    let bound = (cooldown + interval) * steps + interval + Duration::from_secs(1);
    common::eventually(
        bound,
        "the idle pool back at 1 within its cooldowns",
        || async { handle.status().subjects["event"].target_pool_size == 1 },
    )
    .await;
    eprintln!(
        "back at min_pool_size {:?} after the drain ({steps} steps of max_shift {max_shift}, cooldown {cooldown:?})",
        idle_since.elapsed()
    );
    agent.drain().await;
}
