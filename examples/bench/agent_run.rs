//! One measured run of the agent: publish a backlog (or publish at a steady rate once the agent
//! consumes), wait until the handlers recorded every id, then read the agent's CPU, RSS and
//! exit code and compare the ids.

use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};

use crate::bench::{AgentPlan, Bench};
use crate::messages::{queue_name, run_id};
use crate::procs::{AgentProc, signal, wait_exit};
use crate::records::{Latency, Records, latency_of};
use crate::results::AgentResult;
use crate::sampling::{
    CpuSnapshot, clock_ticks_per_sec, context_switches, cores, cpu_snapshot, cpu_ticks,
    peak_rss_kib,
};
use crate::{POLL, SUBJECTS, now_us};

impl Bench {
    /// One agent run: backlog drain (publish first, then start the agent) or steady state.
    pub async fn agent_run(&mut self, plan: &AgentPlan) -> anyhow::Result<AgentResult> {
        let run = run_id();
        self.declare(&run, plan.quorum).await?;
        let result = self.agent_run_inner(&run, plan).await;
        self.delete_run_queues(&run).await;
        result.with_context(|| format!("agent run `{}` ({run})", plan.label))
    }

    async fn agent_run_inner(
        &mut self,
        run: &str,
        plan: &AgentPlan,
    ) -> anyhow::Result<AgentResult> {
        let n = plan.messages;
        let config = self.dir.join(format!("agent-{run}.toml"));
        std::fs::write(&config, self.agent_toml(run, plan))?;
        let log = self.dir.join(format!("agent-{run}.log"));
        let mut result = AgentResult {
            pool: plan.pool,
            ..AgentResult::default()
        };
        if plan.steady.is_none() {
            result.publish_rate = self.publish_backlog(run, n, plan.sleep_ms).await?;
        }
        self.wait_quiet().await;
        let before = cpu_snapshot(self.fpm_pid);
        let spawned_us = now_us();
        // Auto pools: the sizer's resize lines too (its module path before and after #12).
        let rust_log = if plan.auto.is_some() {
            "warn,amqp_agent::sizer=info,amqp_agent::agent::sizer=info"
        } else {
            "warn"
        };
        let mut agent = AgentProc::spawn(&self.args.agent_bin, &config, &log, rust_log, &plan.env)?;
        let mut perf = start_perf(plan, agent.pid)?;
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let dashboard = plan.dashboard.map(|every| {
            let port = admin_port(&std::fs::read_to_string(&config).unwrap_or_default());
            tokio::spawn(crate::dashboard::open(port, every, fetches.clone()))
        });
        let mut records = Records::new(&self.records, run);
        let mut published_at = Vec::new();
        if let Some((rate, _)) = plan.steady {
            self.wait_consuming(run, &mut agent).await?;
            let (at, achieved) = self.publish_paced(run, n, rate, plan.sleep_ms).await?;
            published_at = at;
            result.offered_rate = achieved;
        }
        self.wait_handled(run, plan, &mut agent, &mut records, &mut result)
            .await?;
        if let Some(task) = dashboard {
            task.abort();
            result.dashboard_fetches = fetches.load(std::sync::atomic::Ordering::Relaxed);
        }
        let (user, sys) = cpu_ticks(agent.pid)?;
        result.switches_per_msg = context_switches(agent.pid) as f64 / n as f64;
        let after = cpu_snapshot(self.fpm_pid);
        result.peak_rss_kib = peak_rss_kib(agent.pid)?;
        if let Some(perf) = perf.take() {
            stop_perf(perf).await;
        }
        result.exit_code = agent.stop().await?;
        if plan.auto.is_some() {
            result.autoscaled = agent.autoscaled_peaks();
        }
        records.poll()?;
        let (first, last) = records.first_last();
        result.rate = n as f64 / ((last.saturating_sub(spawned_us)) as f64 / 1e6);
        result.rate_active = n as f64 / ((last.saturating_sub(first)).max(1) as f64 / 1e6);
        result.startup_ms = first.saturating_sub(spawned_us) as f64 / 1e3;
        cpu_usage(&mut result, n, (user, sys), &before, &after);
        result.check = records.check(n);
        result.background_cores = after.background_cores(&before, user + sys);
        result.machine_busy = after.busy.saturating_sub(before.busy) as f64
            / clock_ticks_per_sec()
            / (after.at - before.at).as_secs_f64().max(1e-3)
            / cores();
        result.cycle = latency_of(records.child_cycles());
        result.left_in_queues = self.left_in_queues(run).await?;
        if plan.steady.is_some() {
            result.latency = Some(steady_latency(&records, &published_at)?);
        }
        ensure!(
            result.exit_code == 0,
            "the agent exited with {} after SIGTERM:\n{}",
            result.exit_code,
            agent.log_tail()
        );
        Ok(result)
    }

    /// Waits until the agent consumes both queues (steady state publishes only then).
    async fn wait_consuming(&self, run: &str, agent: &mut AgentProc) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            agent.check_alive()?;
            let mut consuming = true;
            for subject in SUBJECTS {
                consuming &= self.ready_count(&queue_name(run, subject)).await?.1 > 0;
            }
            if consuming {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the agent did not consume within 30 s:\n{}",
                agent.log_tail()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for every id (generous deadline: 100 msg/s would be a failure anyway); with
    /// `plan.track_in_flight`, records the most messages the agent held at once.
    async fn wait_handled(
        &self,
        run: &str,
        plan: &AgentPlan,
        agent: &mut AgentProc,
        records: &mut Records,
        result: &mut AgentResult,
    ) -> anyhow::Result<()> {
        let n = plan.messages;
        let deadline = Instant::now() + Duration::from_secs(60 + n as u64 / 100);
        while records.poll()? < n {
            agent.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "only {} of {n} messages handled before the deadline:\n{}",
                records.entries.len(),
                agent.log_tail()
            );
            if plan.track_in_flight {
                let mut ready = 0u64;
                for subject in SUBJECTS {
                    ready += u64::from(self.ready_count(&queue_name(run, subject)).await?.0);
                }
                let held = (n as u64).saturating_sub(ready + records.entries.len() as u64);
                result.max_in_flight = result.max_in_flight.max(held as usize);
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// Messages left in the run's queues and dead-letter queues.
    async fn left_in_queues(&self, run: &str) -> anyhow::Result<u32> {
        let mut left = 0;
        for subject in SUBJECTS {
            let q = queue_name(run, subject);
            left += self.ready_count(&q).await?.0;
            left += self.ready_count(&format!("{q}.dead")).await?.0;
        }
        Ok(left)
    }
}

/// `perf record` attached to the agent, when the plan asks for it.
fn start_perf(plan: &AgentPlan, pid: u32) -> anyhow::Result<Option<Child>> {
    let Some(path) = &plan.perf else {
        return Ok(None);
    };
    let child = Command::new("perf")
        .args(["record", "-F", "999", "--call-graph", "dwarf,16384", "-o"])
        .arg(path)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start perf")?;
    Ok(Some(child))
}

/// SIGINT (perf writes its file), killed after 60 s.
async fn stop_perf(mut perf: Child) {
    signal(perf.id(), libc::SIGINT);
    if wait_exit(&mut perf, Duration::from_secs(60))
        .await
        .is_none()
    {
        let _ = perf.kill();
        let _ = perf.wait();
    }
}

/// CPU µs per message of the agent (`ticks` = its utime, stime) and of the other processes.
fn cpu_usage(
    result: &mut AgentResult,
    n: usize,
    (user, sys): (u64, u64),
    before: &CpuSnapshot,
    after: &CpuSnapshot,
) {
    let per_msg = |ticks: u64| ticks as f64 / clock_ticks_per_sec() * 1e6 / n as f64;
    result.cpu_us_per_msg = per_msg(user + sys);
    result.cpu_user_us_per_msg = per_msg(user);
    result.cpu_sys_us_per_msg = per_msg(sys);
    result.fpm_us_per_msg = per_msg(after.fpm.saturating_sub(before.fpm));
    result.rabbitmq_us_per_msg = per_msg(after.rabbitmq.saturating_sub(before.rabbitmq));
    result.bench_us_per_msg = per_msg(after.bench.saturating_sub(before.bench));
}

/// Publish → handler start of every message published after the warm-up; with
/// `BENCH_DUMP_LATENCY=<file>`, every message's "<index> <published µs> <latency µs>" too.
fn steady_latency(records: &Records, published_at: &[u64]) -> anyhow::Result<Latency> {
    if let Some(path) = std::env::var_os("BENCH_DUMP_LATENCY") {
        let mut out = String::new();
        for (i, t) in &records.entries {
            if let Some(p) = published_at.get(*i as usize) {
                let _ = writeln!(out, "{i} {p} {}", *t as i64 - *p as i64);
            }
        }
        std::fs::write(path, out)?;
    }
    Ok(records.latency_after_warm_up(published_at))
}

/// The admin listener's port in a generated config (`listen = "127.0.0.1:PORT"`).
fn admin_port(config: &str) -> u16 {
    config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("listen = \"127.0.0.1:"))
        .filter_map(|rest| rest.trim_end_matches('"').parse().ok())
        .next()
        .unwrap_or(9466)
}
