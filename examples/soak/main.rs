//! Soak of amqp-agent under mixed faults at a steady load, against the real RabbitMQ and a real
//! php-fpm pool of its own (issue #21, item 4). Run it through `scripts/soak DURATION` (it builds
//! the release agent and this example and makes sure RabbitMQ and php-fpm exist), or directly:
//! `cargo run --release --example soak -- --help`.
//!
//! Two agents share one php-fpm pool. Agent `a` consumes classic queues, agent `b` quorum
//! queues; on each, subject `event` takes one message per request and subject `command` batches
//! of up to 20: four lanes (single/classic, batch/classic, single/quorum, batch/quorum). The soak
//! publishes at a steady rate, round-robin over the lanes, a share of messages that fail once,
//! fail always, call `exit()` or take longer than `fpm.timeout`
//! (`examples/php/soak-handler.php`), and meanwhile injects faults in turn: kill -9 of an agent
//! (restarted at once), kill -9 of FPM children, FPM stopped for seconds, the agent's broker
//! connections closed, SIGHUP (a reload that restarts the batch subject), SIGTTIN, SIGTTOU,
//! admin requests (`/status`, `/metrics`).
//!
//! With `--cluster`, agent `b` and its quorum lanes run against a 3-node RabbitMQ cluster of the
//! soak's own (built as tests/it/cluster.rs builds one; `amqp.urls` lists the nodes), and the
//! rotation adds a cluster node killed (kill -9) and started again. The classic lanes stay on
//! `--amqp-url`.
//!
//! Every message's fate comes from the handler's records (one line per run) and from the
//! dead-letter queues, consumed over AMQP while the soak runs. After DURATION the load and the
//! faults stop, the backlog drains (bounded), and the report is printed. Exit 1 when a message
//! was lost or an innocent one (`ok`, `fail_once`) dead-lettered.
//!
//! # Layout
//! - `procs`: the php-fpm pool and the agents (start, kill, signals, RSS, admin requests).
//! - `load`: the publisher and the dead-letter consumers.
//! - `faults`: the fault schedule.
//! - `fates`: what the handler recorded; the report.
//! - `cluster`: `--cluster`'s nodes (tests/it/common/cluster.rs) and the node fault.

mod cluster;
mod fates;
mod faults;
#[path = "../../tests/it/common/fpm_pool.rs"]
mod fpm_pool;
mod load;
#[path = "../shared/os.rs"]
mod os;
mod procs;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, ensure};
use clap::Parser;

use crate::fates::Report;
use crate::faults::{FaultLog, Faults};
use crate::load::{DeadLetters, Publisher, Sent};
use crate::procs::{Agent, Fpm};

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(50);
/// The agents' `fpm.timeout`; `slow` messages sleep longer.
const FPM_TIMEOUT_MS: u64 = 2000;
const SLOW_MS: u64 = 2600;
/// The agents' `retry.max_attempts` and `retry.delays`.
const MAX_ATTEMPTS: u32 = 3;
const RETRY_DELAYS: &str = r#"["500ms", "1s"]"#;
/// `batch_max` of the batch subjects.
const BATCH_MAX: u16 = 20;
const HANDLER: &str = "examples/php/soak-handler.php";
const RECEIVER: &str = "php/receiver";

/// Soak of amqp-agent: a steady load with mixed faults; prints every message's fate.
#[derive(Debug, Parser)]
pub struct Args {
    /// How long load and faults run (e.g. 60s, 30m, 1h); the drain comes after.
    #[arg(value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Messages published per second, over the four lanes.
    #[arg(long, default_value_t = 40.0)]
    pub rate: f64,
    /// Time between two faults (default: DURATION / 24, within 3 s..=20 s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub fault_every: Option<Duration>,
    /// The agent binary under test.
    #[arg(long, default_value = "target/release/amqp-agent")]
    pub agent_bin: PathBuf,
    /// php-fpm binary (default: the newest /usr/sbin/php-fpm*).
    #[arg(long, env = "PHP_FPM_BIN")]
    pub php_fpm: Option<PathBuf>,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// `pm.max_children` of the soak's static FPM pool (each agent is capped at half).
    #[arg(long, default_value_t = 10)]
    pub fpm_children: usize,
    /// Longest wait, after DURATION, for every message to reach its fate.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    pub drain_timeout: Duration,
    /// Keep the work dir (logs, records) and the queues.
    #[arg(long)]
    pub keep: bool,
    /// Seed of the message kinds and fault targets (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run the quorum lanes (agent b) against a 3-node RabbitMQ cluster of the soak's own
    /// (needs root, as tests/it/cluster.rs), and add "cluster node killed and restarted" to the
    /// faults.
    #[arg(long)]
    pub cluster: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.duration >= Duration::from_secs(10),
        "DURATION must be at least 10s"
    );
    ensure!(
        args.rate > 0.0 && args.rate <= 2000.0,
        "--rate must be in (0, 2000]"
    );
    ensure!(args.fpm_children >= 4, "--fpm-children must be at least 4");
    ensure!(
        args.agent_bin.exists(),
        "{} not found: build it with `cargo build --release` (scripts/soak does)",
        args.agent_bin.display()
    );
    // One thread: the soak itself must stay light on a shared machine. Everything that forks
    // runs on it, so PR_SET_PDEATHSIG (tied to the forking thread) fires only when the soak exits.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let lost_or_innocent = runtime.block_on(run(args))?;
    if lost_or_innocent {
        std::process::exit(1);
    }
    Ok(())
}

/// One lane: a queue, the agent and subject that consume it.
#[derive(Debug, Clone)]
pub struct Lane {
    pub agent: usize,
    pub subject: &'static str,
    pub queue: String,
    pub label: &'static str,
    /// Index of its broker in [`Brokers`] (0: `--amqp-url`; 1: the soak's cluster).
    pub broker: usize,
}

/// Where the lanes' queues live: per broker, the URLs of its nodes.
pub type Brokers = Vec<Vec<String>>;

/// The four lanes; agent b's on broker 1 (the cluster) when `cluster`.
pub fn lanes(run: &str, cluster: bool) -> Vec<Lane> {
    let lane = |agent: usize, subject: &'static str, label: &'static str| Lane {
        agent,
        subject,
        queue: format!("soak.{run}.{}.{subject}", ["a", "b"][agent]),
        label,
        broker: usize::from(cluster && agent == 1),
    };
    vec![
        lane(0, "event", "single/classic"),
        lane(0, "command", "batch/classic"),
        lane(
            1,
            "event",
            if cluster {
                "single/quorum/cluster"
            } else {
                "single/quorum"
            },
        ),
        lane(
            1,
            "command",
            if cluster {
                "batch/quorum/cluster"
            } else {
                "batch/quorum"
            },
        ),
    ]
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let seed = args
        .seed
        .unwrap_or_else(|| now_us() ^ u64::from(std::process::id()));
    let run = format!("{:08x}", seed as u32);
    let dir = std::env::temp_dir().join(format!("amqp-agent-soak-{run}"));
    let records = prepare_work_dir(&dir)?;
    let php_fpm = match &args.php_fpm {
        Some(p) => p.clone(),
        None => procs::newest_php_fpm()?,
    };
    let lanes = lanes(&run, args.cluster);
    let secret = random_hex(24);
    let mut brokers: Brokers = vec![vec![args.amqp_url.clone()]];
    let cluster = if args.cluster {
        eprintln!("soak {run}: starting a 3-node RabbitMQ cluster of its own");
        let t = Instant::now();
        let cluster = cluster::start()?;
        eprintln!(
            "soak {run}: cluster up in {:.0} s: {}",
            t.elapsed().as_secs_f64(),
            cluster
                .nodes
                .iter()
                .map(|n| format!("{} on {}", n.name, n.amqp_port))
                .collect::<Vec<_>>()
                .join(", ")
        );
        brokers.push(cluster.urls());
        Some(cluster)
    } else {
        None
    };
    let mut fpm = Fpm::start(&php_fpm, &dir, &records, args.fpm_children, &secret)?;
    eprintln!(
        "soak {run}: {} of load at {} msg/s over {} lanes; php-fpm on {} ({} children); work dir {}",
        humantime::format_duration(args.duration),
        args.rate,
        lanes.len(),
        fpm.address,
        args.fpm_children,
        dir.display()
    );
    let mut agents = Vec::new();
    for i in 0..2 {
        // Every lane of an agent is on one broker.
        let broker = lanes.iter().find(|l| l.agent == i).map_or(0, |l| l.broker);
        let agent = Agent::new(
            i,
            &args,
            &dir,
            &fpm.address,
            &secret,
            &lanes,
            &brokers[broker],
        )?;
        agents.push(agent);
    }
    for agent in &mut agents {
        agent.start()?;
    }
    for agent in &mut agents {
        agent.wait_ready(Duration::from_secs(60)).await?;
    }
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let dead = DeadLetters::start(&brokers, &lanes);
    let publisher = Publisher::connect(&brokers, &run).await?;
    let faults_log = FaultLog::default();
    let started = Instant::now();
    let started_us = now_us();
    for agent in &mut agents {
        agent.sample_rss();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reconnects = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(publisher.run(
        brokers.clone(),
        args.rate,
        args.duration,
        lanes.clone(),
        seed,
        sent.clone(),
        stop.clone(),
        reconnects.clone(),
    ));
    let interval = args.fault_every.unwrap_or_else(|| {
        (args.duration / 24).clamp(Duration::from_secs(3), Duration::from_secs(20))
    });
    let window = (args.duration / 12).min(Duration::from_secs(300));
    let mut faults = Faults::new(seed, interval, faults_log.clone(), cluster.clone());
    let soak = faults
        .run(&mut agents, &mut fpm, started + args.duration, window)
        .await;
    stop.store(true, Ordering::Relaxed);
    let load_result = load.await.context("publisher task")?;
    if let Err(e) = &soak {
        eprintln!("fault loop failed: {e:#}");
    }
    if let Err(e) = &load_result {
        eprintln!("publisher failed: {e:#}");
    }
    eprintln!(
        "load and faults done after {:.0} s; draining (at most {} s)",
        started.elapsed().as_secs_f64(),
        args.drain_timeout.as_secs()
    );
    // Everything up for the drain: FPM running, every cluster node, both agents alive.
    fpm.ensure_running()?;
    if let Some(cluster) = &cluster {
        cluster::ensure_running(cluster).await?;
    }
    for agent in &mut agents {
        agent.ensure_running().await?;
    }
    let mut records_reader = fates::Records::new(&records);
    let drained = fates::wait_all_fates(
        &mut records_reader,
        &sent,
        &dead,
        &publisher,
        &lanes,
        args.drain_timeout,
    )
    .await;
    for agent in &mut agents {
        agent.sample_rss();
    }
    let mut exits = Vec::new();
    for agent in &mut agents {
        exits.push(agent.stop().await);
    }
    records_reader.poll()?;
    // What the consumers received last.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = sent.lock().unwrap().clone();
    let dead = dead.snapshot();
    let report = Report::build(
        &sent,
        &records_reader,
        &dead,
        &faults_log.events(),
        &agents,
        &lanes,
        started_us,
        args.duration,
        window,
    );
    println!();
    println!(
        "=== soak {run}: {} of load and faults ({} s of drain{}), {} msg/s, faults every {} s ===",
        humantime::format_duration(args.duration),
        drained.as_secs(),
        if drained >= args.drain_timeout {
            ", timed out"
        } else {
            ""
        },
        args.rate,
        interval.as_secs_f64()
    );
    print!("{}", report.render(&faults_log.events(), &exits));
    let reconnects = reconnects.load(Ordering::Relaxed);
    if reconnects > 0 {
        println!(
            "the soak's publisher lost its broker connection {reconnects} times ({})",
            if args.cluster {
                "a cluster node it was connected to killed, or RabbitMQ restarted by another process"
            } else {
                "RabbitMQ restarted by another process?"
            }
        );
    }
    if let Err(e) = soak.and(load_result) {
        println!("soak incomplete: {e:#}");
    }
    if !args.keep {
        publisher.delete_queues(&lanes).await;
        drop(fpm);
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!(
            "kept: {} and the queues soak.{run}.*{}",
            dir.display(),
            if args.cluster {
                " (the cluster's queues go with the cluster)"
            } else {
                ""
            }
        );
    }
    // The last holders of the cluster (the fault loop's copy, the AMQP clients) go first.
    drop(faults);
    drop(dead);
    drop(publisher);
    if let Some(cluster) = cluster {
        drop(cluster);
        println!("the soak's cluster is stopped and its data removed");
    }
    Ok(report.lost() > 0 || report.innocents() > 0)
}

/// Creates the work dir: the handler, the receiver package, the records dir (writable by FPM's
/// user); returns the records dir.
fn prepare_work_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let records = dir.join("records");
    std::fs::create_dir_all(&records)?;
    for p in [dir, records.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777))?;
    }
    let script = dir.join("soak-handler.php");
    std::fs::copy(HANDLER, &script).with_context(|| format!("cannot copy {HANDLER}"))?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644))?;
    let receiver = dir.join("receiver");
    std::fs::create_dir_all(receiver.join("src"))?;
    for d in [receiver.clone(), receiver.join("src")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
    }
    let mut files = vec![(
        PathBuf::from(RECEIVER).join("autoload.php"),
        receiver.join("autoload.php"),
    )];
    for entry in std::fs::read_dir(Path::new(RECEIVER).join("src"))? {
        let path = entry?.path();
        let to = receiver
            .join("src")
            .join(path.file_name().unwrap_or_default());
        files.push((path, to));
    }
    for (from, to) in files {
        std::fs::copy(&from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(records)
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read as _;
        let _ = f.read_exact(&mut buf);
    }
    hex::encode(buf)
}

/// xorshift64*: the kinds and fault targets, reproducible from `--seed`.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}
