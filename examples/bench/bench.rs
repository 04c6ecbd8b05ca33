//! The bench's state: its RabbitMQ channels, the php-fpm pool it talks to, the queues of each
//! run, the agent config it generates, and the wait for a quiet machine.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use amqp_agent::config::Config;
use amqp_agent::contract::RequestTemplate;
use anyhow::Context as _;
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};

use crate::SUBJECTS;
use crate::args::Args;
use crate::messages::queue_name;
use crate::procs::{Fpm, agent_command, free_port};
use crate::sampling::cpu_snapshot;

pub struct Bench {
    pub args: Args,
    pub dir: PathBuf,
    /// Where the handlers record the ids they saw.
    pub records: PathBuf,
    /// The handler script (the agent's `fpm.script_filename`).
    pub script: PathBuf,
    pub fpm_address: String,
    /// The second pool's address, listening the other way (`--quick --streamed`).
    pub fpm_alt_address: Option<String>,
    pub fpm_pid: u32,
    pub conn: Connection,
    /// Publisher-confirms channel.
    pub publish: Channel,
    /// Declares, counts and deletes queues.
    pub admin: Channel,
    /// Queues to delete at the end.
    pub leftovers: Vec<String>,
    /// What is left of `--quiet-wait`.
    pub quiet_budget: Duration,
    /// The agent knows `[admin]` (newer versions): the config then sets its listen address.
    pub admin_section: bool,
    /// The agent's request template of each of [`SUBJECTS`] (in that order), from the config
    /// the agent runs with: the ceiling sends exactly what the agent sends.
    pub templates: Vec<RequestTemplate>,
}

impl Bench {
    /// Connects to RabbitMQ and probes the agent binary; `fpm` is the pool the bench runs.
    pub async fn connect(
        args: Args,
        dir: PathBuf,
        records: PathBuf,
        script: PathBuf,
        fpm: &Fpm,
    ) -> anyhow::Result<Self> {
        let conn = Connection::connect(&args.amqp_url, ConnectionProperties::default())
            .await
            .with_context(|| format!("cannot connect to RabbitMQ at {}", args.amqp_url))?;
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let admin = conn.create_channel().await?;
        let quiet_budget = Duration::from_secs(args.quiet_wait);
        let mut bench = Self {
            args,
            dir,
            records,
            script,
            fpm_address: fpm.address.clone(),
            fpm_alt_address: fpm.alt_address.clone(),
            fpm_pid: fpm.child.id(),
            conn,
            publish,
            admin,
            leftovers: Vec::new(),
            quiet_budget: Duration::ZERO,
            admin_section: false,
            templates: Vec::new(),
        };
        bench.admin_section = bench.agent_accepts_admin_section();
        bench.quiet_budget = quiet_budget;
        let text = bench.agent_toml("ceiling", &AgentPlan::drain(1, 0, None));
        let config = Config::from_toml(&text, Path::new("bench agent config"), |_| None)
            .context("the generated agent config is invalid")?;
        bench.templates = SUBJECTS
            .iter()
            .map(|subject| RequestTemplate::new(&config, subject))
            .collect();
        Ok(bench)
    }
}

/// What one agent run does.
#[derive(Clone)]
pub struct AgentPlan {
    pub label: String,
    pub pool: u16,
    pub prefetch_per_worker: Option<u16>,
    pub sleep_ms: u64,
    pub messages: usize,
    /// Steady state: publish at this rate (msg/s) after the agent consumes, for warm-up + secs.
    pub steady: Option<(f64, u64)>,
    /// Count the messages the agent holds (neither ready nor handled) while it runs.
    pub track_in_flight: bool,
    /// Record the agent with `perf record` into this file.
    pub perf: Option<PathBuf>,
    /// Quorum queues (`amqp.queue_type = "quorum"`) instead of classic ones.
    pub quorum: bool,
    /// Auto pools instead of `pool`: `pool_mode = "auto"`, `min_pool_size = 1` and this
    /// `max_pool_size` per subject, FPM's status page read (`fpm.status_path`).
    pub auto: Option<u16>,
    /// `batch_max` of both subjects (1: one request per message, as without batches).
    pub batch_max: u16,
    /// php-fpm's address for this run instead of the bench's main pool (`--quick --streamed`).
    pub fpm_address: Option<String>,
    /// Appended to the request URI, read by the handler: `?flush=once`, `?flushes=2`.
    pub query: &'static str,
    /// Environment of the agent process (`AMQP_AGENT_TCP_QUICKACK=0`).
    pub env: Vec<(&'static str, &'static str)>,
    /// A dashboard open during the run: the overview page loaded, then its data and the
    /// metrics page's history fetched every this often, as the page's auto-refresh does.
    pub dashboard: Option<Duration>,
}

impl AgentPlan {
    /// A backlog drain of `messages` with `pool` workers per subject.
    pub fn drain(pool: u16, messages: usize, prefetch_per_worker: Option<u16>) -> Self {
        Self {
            label: format!("drain pool={pool}"),
            pool,
            prefetch_per_worker,
            sleep_ms: 0,
            messages,
            steady: None,
            track_in_flight: false,
            perf: None,
            quorum: false,
            auto: None,
            dashboard: None,
            batch_max: 1,
            fpm_address: None,
            query: "",
            env: Vec::new(),
        }
    }

    /// A backlog drain of `messages` by auto pools of 1 to `max` workers per subject (row 6a).
    pub fn drain_auto(max: u16, messages: usize, prefetch_per_worker: Option<u16>) -> Self {
        Self {
            label: format!("drain auto pools 1..={max}"),
            auto: Some(max),
            ..Self::drain(1, messages, prefetch_per_worker)
        }
    }

    /// The same drain with `batch_max` deliveries per FastCGI request (rows 2b).
    pub fn drain_batched(
        pool: u16,
        batch_max: u16,
        messages: usize,
        prefetch_per_worker: Option<u16>,
    ) -> Self {
        Self {
            label: format!("drain pool={pool} batch_max={batch_max}"),
            batch_max,
            ..Self::drain(pool, messages, prefetch_per_worker)
        }
    }

    /// The same drain on quorum queues (row 2q).
    pub fn drain_quorum(pool: u16, messages: usize, prefetch_per_worker: Option<u16>) -> Self {
        Self {
            label: format!("drain quorum pool={pool}"),
            quorum: true,
            ..Self::drain(pool, messages, prefetch_per_worker)
        }
    }
}

/// Steady-state runs publish this long before latencies count.
pub const WARMUP_SECS: u64 = 1;

impl Bench {
    /// The config of one agent run (`run` names its queues).
    pub fn agent_toml(&self, run: &str, plan: &AgentPlan) -> String {
        let mut amqp = format!("url = \"{}\"\n", self.args.amqp_url);
        if let Some(p) = plan.prefetch_per_worker {
            let _ = writeln!(amqp, "prefetch_per_worker = {p}");
        }
        if plan.quorum {
            amqp.push_str("queue_type = \"quorum\"\n");
        }
        let mut subjects = String::new();
        for subject in SUBJECTS {
            let pool = match plan.auto {
                Some(max) => format!(
                    "pool_mode = \"auto\"\nmin_pool_size = 1\nmax_pool_size = {max}\npool_size = 1\n"
                ),
                None => format!("pool_size = {}\n", plan.pool),
            };
            // `batch_max` is always written: not set, it waits for the receiver's word (the
            // bench's handler gives it) and then batches.
            let _ = write!(
                subjects,
                "[subjects.{subject}]\nqueue = \"{}\"\n{pool}batch_max = {}\n\n",
                queue_name(run, subject),
                plan.batch_max,
            );
        }
        let status = if plan.auto.is_some() {
            format!("status_path = \"{}\"\n", crate::FPM_STATUS_PATH)
        } else {
            String::new()
        };
        format!(
            "# generated by examples/bench ({label})\n[amqp]\n{amqp}\n[fpm]\n\
             address = \"{address}\"\nscript_filename = \"{script}\"\n\
             request_uri = \"/bench/{{subject}}{query}\"\ntimeout = \"30s\"\nsigning_secrets = []\n\
             require_ack_header = true\n{status}\n[retry]\ndelays = [\"1s\"]\n\n{subjects}\
             [agent]\nshutdown_timeout = \"30s\"\n{threads}{admin}",
            threads = self
                .args
                .agent_worker_threads
                .map(|n| format!("worker_threads = {n}\n"))
                .unwrap_or_default(),
            admin = if self.admin_section {
                // Keep the admin listener (on by default) but off the default port, which
                // another agent on the machine may hold.
                format!(
                    "\n[admin]\nlisten = \"127.0.0.1:{}\"\n",
                    free_port().unwrap_or(0)
                )
            } else {
                String::new()
            },
            label = plan.label,
            address = plan.fpm_address.as_deref().unwrap_or(&self.fpm_address),
            query = plan.query,
            script = self.script.display(),
        )
    }

    /// The queues of a run: main, dead-letter and the one delay queue.
    fn run_queues(run: &str) -> Vec<String> {
        let mut out = Vec::new();
        for subject in SUBJECTS {
            let q = queue_name(run, subject);
            out.push(format!("{q}.retry.1000ms"));
            out.push(format!("{q}.dead"));
            out.push(q);
        }
        out
    }

    /// Declares the main queues of a run, as quorum queues with `quorum` (the agent then
    /// declares them again with the same arguments, and its delay and dead-letter queues).
    pub async fn declare(&mut self, run: &str, quorum: bool) -> anyhow::Result<()> {
        self.leftovers.extend(Self::run_queues(run));
        let mut arguments = FieldTable::default();
        if quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        for subject in SUBJECTS {
            self.admin
                .queue_declare(
                    queue_name(run, subject).as_str().into(),
                    QueueDeclareOptions::durable(),
                    arguments.clone(),
                )
                .await?;
        }
        Ok(())
    }

    /// (ready messages, consumers) of `queue`.
    pub async fn ready_count(&self, queue: &str) -> anyhow::Result<(u32, u32)> {
        let opts = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = self
            .admin
            .queue_declare(queue.into(), opts, FieldTable::default())
            .await
            .with_context(|| format!("passive declare of {queue}"))?;
        Ok((q.message_count(), q.consumer_count()))
    }

    pub async fn delete_run_queues(&mut self, run: &str) {
        let names = Self::run_queues(run);
        for name in &names {
            let _ = self
                .admin
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        self.leftovers.retain(|q| !names.contains(q));
    }

    /// Deletes every queue still left, on a fresh channel when the old one broke.
    pub async fn cleanup(&mut self) {
        if !self.admin.status().connected() {
            match self.conn.create_channel().await {
                Ok(ch) => self.admin = ch,
                Err(_) => return,
            }
        }
        for name in std::mem::take(&mut self.leftovers) {
            let _ = self
                .admin
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    /// Whether `amqp-agent check-config` accepts a config with an `[admin]` table.
    fn agent_accepts_admin_section(&mut self) -> bool {
        self.admin_section = true;
        let plan = AgentPlan {
            label: "probe".into(),
            ..AgentPlan::drain(1, 0, None)
        };
        let path = self.dir.join("probe.toml");
        if std::fs::write(&path, self.agent_toml("probe", &plan)).is_err() {
            return false;
        }
        agent_command(&self.args.agent_bin)
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits until unrelated processes use < 0.2 cores, within what is left of `--quiet-wait`.
    pub async fn wait_quiet(&mut self) {
        let started = Instant::now();
        let mut said = false;
        loop {
            let before = cpu_snapshot(self.fpm_pid);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let busy = cpu_snapshot(self.fpm_pid).background_cores(&before, 0);
            let waited = started.elapsed();
            if busy < 0.2 {
                break;
            }
            if waited >= self.quiet_budget {
                eprintln!(
                    "  other processes use {busy:.2} cores and the --quiet-wait budget is spent; measuring anyway"
                );
                break;
            }
            if !said {
                eprintln!(
                    "  other processes use {busy:.2} cores; waiting (up to {:.0} s) for quiet",
                    self.quiet_budget.as_secs_f64()
                );
                said = true;
            }
        }
        if said {
            self.quiet_budget = self.quiet_budget.saturating_sub(started.elapsed());
        }
    }
}
