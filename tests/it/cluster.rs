//! A real 3-node RabbitMQ cluster of the test's own (tests/it/common/cluster.rs), quorum queues,
//! and several agent processes. One test runs the scenarios in turn on one cluster (starting
//! nodes is the slow part); the cluster is stopped and removed when it ends, failed or not.
//!
//! Every scenario checks by message id: none lost, duplicates only for messages in flight at a
//! fault, nothing dead-lettered, queues empty at the end.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::procs::{AgentProcess, http};
use common::{TestCtx, eventually, free_port};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);
/// Messages drained by two agents in scenario 1.
const DRAIN: usize = 10_000;

/// A publisher connected to one live node of the cluster.
struct Client {
    channel: lapin::Channel,
    _conn: Connection,
}

impl Client {
    async fn to(url: &str) -> Self {
        let (conn, channel) = common::confirm_channel(url).await;
        Self {
            channel,
            _conn: conn,
        }
    }

    async fn publish(&self, queue: &str, id: &str, behave: &str) {
        self.publish_many(&[(queue, id.to_owned(), behave)]).await;
    }

    /// Publishes every `(queue, id, behave)` before waiting for the confirms, so that a large
    /// backlog is not paced by one confirm round trip per message.
    async fn publish_many(&self, messages: &[(&str, String, &str)]) {
        let mut pending = Vec::with_capacity(messages.len());
        for (queue, id, behave) in messages {
            let body = serde_json::json!({"id": id, "behave": behave}).to_string();
            let props = BasicProperties::default()
                .with_message_id(id.as_str().into())
                .with_delivery_mode(2);
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    (*queue).into(),
                    Default::default(),
                    body.as_bytes(),
                    props,
                )
                .await
                .unwrap();
            pending.push((queue, confirm));
        }
        for (queue, confirm) in pending {
            let confirm = confirm.await.unwrap();
            assert!(confirm.is_ack(), "publish to {queue} not confirmed");
        }
    }

    async fn len(&self, queue: &str) -> u32 {
        let opts = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(queue.into(), opts, FieldTable::default())
            .await
            .map_or(u32::MAX, |q| q.message_count())
    }
}

/// An agent process with its own admin port.
struct Agent {
    proc: AgentProcess,
    admin: u16,
}

impl Agent {
    fn start(config: &Path, name: &str) -> Self {
        let admin = free_port();
        let log = config.with_extension(format!("{name}.log"));
        let env = [("AMQP_AGENT_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))];
        Self {
            proc: AgentProcess::start_with(config, &log, &env, &[]),
            admin,
        }
    }

    async fn status(&self) -> Option<Value> {
        let (code, body) = http(self.admin, "GET", "/status", None).await?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// The node port of `subject`, while it consumes.
    async fn node_port(&self, subject: &str) -> Option<u16> {
        let s = self.status().await?;
        let subject = &s["subjects"][subject];
        if subject["consuming"] != true {
            return None;
        }
        subject["node"].as_str()?.rsplit_once(':')?.1.parse().ok()
    }

    async fn received(&self, subject: &str) -> u64 {
        self.status()
            .await
            .and_then(|s| s["subjects"][subject]["received"].as_u64())
            .unwrap_or(0)
    }

    async fn wait_consuming(&self) {
        eventually(WAIT, "agent consuming both subjects", || async {
            self.node_port("event").await.is_some() && self.node_port("command").await.is_some()
        })
        .await;
    }
}

/// The config of `ctx` on `cluster`'s nodes, quorum queues, with `event` keys set to `event`.
fn cluster_toml(ctx: &TestCtx, cluster: &Cluster, event: &[(&str, toml::Value)]) -> String {
    ctx.toml_with(|doc| {
        common::remove_key(doc, "amqp.url");
        common::set_key(doc, "amqp.urls", cluster.urls());
        common::set_key(doc, "amqp.queue_type", "quorum");
        common::set_key(doc, "amqp.heartbeat", "3s");
        for (key, value) in event {
            common::set_key(doc, &format!("subjects.event.{key}"), value.clone());
        }
    })
}

fn write(ctx: &TestCtx, name: &str, text: &str) -> PathBuf {
    let path = common::fpm().dir.join(format!("{}-{name}.toml", ctx.id));
    std::fs::write(&path, text).unwrap();
    path
}

/// Ids handled (first occurrences) and how many were handled more than once.
fn handled(ctx: &TestCtx) -> (BTreeSet<String>, usize) {
    let by_id = ctx.records_by_id();
    let dupes = by_id.values().filter(|r| r.len() > 1).count();
    (by_id.into_keys().collect(), dupes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_node_cluster_with_two_agents_loses_nothing() {
    // Three nodes boot on two cores, and failover and exit times are bounded: no other test runs.
    let _alone = common::turn::alone().await;
    let cluster = Cluster::start(3, "i13c");
    let mut ctx = TestCtx::new("cluster").await;
    ctx.retry_toml = "[retry]\ndelays = [\"3s\"]\nmax_attempts = 3\n".to_owned();
    ctx.pool_size = 4;
    let config = write(&ctx, "main", &cluster_toml(&ctx, &cluster, &[]));

    // 1. Two agents drain quorum queues; both do a share.
    let a = Agent::start(&config, "a");
    let b = Agent::start(&config, "b");
    a.wait_consuming().await;
    b.wait_consuming().await;
    let client = Client::to(&cluster.nodes[0].url()).await;
    let started = Instant::now();
    let queues = [ctx.queue("event"), ctx.queue("command")];
    let backlog: Vec<(&str, String, &str)> = (0..DRAIN)
        .map(|i| (queues[i % 2].as_str(), format!("s1-{i}"), "ok"))
        .collect();
    client.publish_many(&backlog).await;
    let expected: BTreeSet<String> = backlog.into_iter().map(|(_, id, _)| id).collect();
    eventually(WAIT, "every message of scenario 1 handled", || async {
        handled(&ctx).0.is_superset(&expected)
    })
    .await;
    let (ids, dupes) = handled(&ctx);
    assert_eq!(ids, expected);
    assert_eq!(dupes, 0, "no fault, no duplicate");
    let shares = (
        a.received("event").await + a.received("command").await,
        b.received("event").await + b.received("command").await,
    );
    eprintln!(
        "scenario 1: {DRAIN} messages in {:?}, shares {shares:?}",
        started.elapsed()
    );
    assert!(shares.0 > 0 && shares.1 > 0, "both agents work: {shares:?}");

    // 5. The main queue exists as quorum, a config says classic: one fatal error, exit 1.
    let classic = write(
        &ctx,
        "classic",
        &cluster_toml(&ctx, &cluster, &[("queue_type", "classic".into())]),
    );
    let t = Instant::now();
    let mut wrong = Agent::start(&classic, "classic");
    let status = wrong.proc.wait_exit(Duration::from_secs(30));
    let took = t.elapsed();
    let text = wrong.proc.log_text();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("x-queue-type") && text.contains(&ctx.queue("event")),
        "{text}"
    );
    eprintln!("scenario 5: exit 1 after {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // 2. Under load, kill -9 the node agent A consumes `event` from: it consumes from another
    // node within 15 s, nothing is lost.
    let before = handled(&ctx).0.len();
    let mut expected2 = BTreeSet::new();
    for i in 0..600 {
        let id = format!("s2-{i}");
        client.publish(&ctx.queue("event"), &id, "sleep:20").await;
        expected2.insert(id);
    }
    eventually(WAIT, "load running", || async {
        handled(&ctx).0.len() > before + 50
    })
    .await;
    let port = a.node_port("event").await.expect("A consumes event");
    let victim = cluster.by_port(port).expect("a node of the cluster");
    let client = if victim == 0 {
        Client::to(&cluster.nodes[1].url()).await
    } else {
        client
    };
    let killed = Instant::now();
    cluster.kill(victim);
    eventually(
        Duration::from_secs(15),
        "agent A consumes from another node",
        || async { a.node_port("event").await.is_some_and(|p| p != port) },
    )
    .await;
    eprintln!(
        "scenario 2: A moved off node {victim} in {:?}",
        killed.elapsed()
    );
    eventually(WAIT, "every message of scenario 2 handled", || async {
        handled(&ctx).0.is_superset(&expected2)
    })
    .await;
    eventually(WAIT, "queues empty", || async {
        client.len(&ctx.queue("event")).await == 0 && client.len(&ctx.queue("command")).await == 0
    })
    .await;
    let (_, dupes) = handled(&ctx);
    eprintln!("scenario 2: {dupes} duplicates (in flight at the kill)");
    // At most the deliveries held by both agents at the fault: 2 agents × 2 subjects × 8.
    assert!(dupes <= 32, "{dupes} duplicates");
    cluster.restart(victim);

    // 3. Kill the leader of the delay queue while messages wait in it: they still come back.
    let mut expected3 = BTreeSet::new();
    for i in 0..50 {
        let id = format!("s3-{i}");
        client
            .publish(&ctx.queue("event"), &id, "fail-until:2")
            .await;
        expected3.insert(id);
    }
    let delay = ctx.delay_queue("event", Duration::from_secs(3));
    eventually(WAIT, "first attempts done, messages waiting", || async {
        let by_id = ctx.records_by_id();
        expected3.iter().all(|id| by_id.contains_key(id))
    })
    .await;
    let leader = cluster.leader_of(&delay).expect("delay queue leader");
    let client = if leader == 0 {
        Client::to(&cluster.nodes[1].url()).await
    } else {
        Client::to(&cluster.nodes[0].url()).await
    };
    cluster.kill(leader);
    let back = |ctx: &TestCtx| {
        let by_id = ctx.records_by_id();
        expected3
            .iter()
            .filter(|id| {
                by_id[*id]
                    .iter()
                    .any(|r| r["params"]["HTTP_X_AGENT_ATTEMPT"] == "2")
            })
            .count()
    };
    // On RabbitMQ before 3.12.5 they may not come back while the killed node is down: the delay
    // queue's new dead-letter worker forwards through the main queue's recorded leader, on the
    // dead node, and retries after dead_letter_worker_publisher_confirm_timeout (5 s on these
    // nodes, 180 s by default). They are not lost, and come back once the node is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while back(&ctx) < expected3.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let while_down = back(&ctx);
    eprintln!(
        "scenario 3: {while_down} of {} came back within 30 s with the delay queue's leader down",
        expected3.len()
    );
    cluster.restart(leader);
    let restarted = Instant::now();
    eventually(
        WAIT,
        "every waiting message came back and was handled",
        || async { back(&ctx) == expected3.len() },
    )
    .await;
    eprintln!(
        "scenario 3: all back {:?} after the node restarted",
        restarted.elapsed()
    );
    assert_eq!(client.len(&ctx.dead_queue("event")).await, 0);
    drop(a);
    drop(b);

    // 4. Single active consumer: kill -9 the active agent; the other takes over, in order.
    let mut sac = TestCtx::new("sac").await;
    sac.pool_size = 1;
    sac.retry_toml = "[retry]\ndelays = [\"1s\"]\nmax_attempts = 1\n".to_owned();
    let sac_config = write(
        &sac,
        "sac",
        &cluster_toml(&sac, &cluster, &[("single_active_consumer", true.into())]),
    );
    let x = Agent::start(&sac_config, "x");
    x.wait_consuming().await;
    let y = Agent::start(&sac_config, "y");
    y.wait_consuming().await;
    let ids: Vec<String> = (0..200).map(|i| format!("o-{i:04}")).collect();
    for id in &ids {
        client.publish(&sac.queue("event"), id, "sleep:10").await;
    }
    eventually(WAIT, "some handled", || async { sac.records().len() > 40 }).await;
    let (active, standby) = if x.received("event").await > 0 {
        (x, y)
    } else {
        (y, x)
    };
    assert_eq!(
        standby.received("event").await,
        0,
        "only one consumer is active"
    );
    active.proc.signal(libc::SIGKILL);
    eventually(WAIT, "the standby handles the rest", || async {
        sac.records_by_id().len() == ids.len()
    })
    .await;
    assert!(standby.received("event").await > 0);
    eprintln!(
        "scenario 4: the standby took over; {} handled in order",
        ids.len()
    );
    let order: Vec<String> = sac
        .records()
        .iter()
        .filter_map(|r| r["json_id"].as_str().map(str::to_owned))
        .collect();
    let mut firsts = Vec::new();
    let mut seen = BTreeSet::new();
    for id in &order {
        if seen.insert(id.clone()) {
            firsts.push(id.clone());
        }
    }
    assert_eq!(firsts, ids, "handled in publish order");
    drop(active);
    drop(standby);

    // 6. A silent partition: drop the agent's node port (no RST) — it notices within the
    // heartbeat and consumes from another node; nothing is lost.
    let c = Agent::start(&config, "c");
    c.wait_consuming().await;
    let port = c.node_port("event").await.unwrap();
    let client = Client::to(&cluster.nodes[(cluster.by_port(port).unwrap() + 1) % 3].url()).await;
    let mut expected6 = BTreeSet::new();
    for i in 0..300 {
        let id = format!("s6-{i}");
        client.publish(&ctx.queue("event"), &id, "sleep:20").await;
        expected6.insert(id);
    }
    let cut = Instant::now();
    let wall = common::nft::Blackhole::port(port);
    eventually(
        Duration::from_secs(30),
        "agent C consumes from another node",
        || async { c.node_port("event").await.is_some_and(|p| p != port) },
    )
    .await;
    eprintln!(
        "scenario 6: C moved off the silent node in {:?}",
        cut.elapsed()
    );
    eventually(WAIT, "every message of scenario 6 handled", || async {
        handled(&ctx).0.is_superset(&expected6)
    })
    .await;
    // The partition lasts 60 s, as a real one that heals would; the work went on meanwhile.
    tokio::time::sleep_until((cut + Duration::from_secs(60)).into()).await;
    drop(wall);
    eventually(WAIT, "queues empty", || async {
        client.len(&ctx.queue("event")).await == 0
    })
    .await;
    let (_, dupes) = handled(&ctx);
    eprintln!("scenario 6: {dupes} duplicates in all (in flight at the faults)");
    let counts: BTreeMap<&str, usize> =
        [("dead", client.len(&ctx.dead_queue("event")).await as usize)].into();
    assert_eq!(counts["dead"], 0);
    drop(c);
}
