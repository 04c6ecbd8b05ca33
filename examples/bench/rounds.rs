//! The full bench: `--rounds` rounds of every measurement (rows 1 to 5 and the sweep), then
//! an optional extra drain under `perf`.

use crate::args::OnOff;
use crate::bench::{AgentPlan, Bench, WARMUP_SECS};
use crate::results::{AgentResult, CeilingResult, Report, Round};
use crate::sampling::cores;

impl Bench {
    /// The I/O-bound pair: the agent with the sleeping handler, then direct FastCGI with the same
    /// handler and concurrency.
    pub async fn io_bound(&mut self) -> anyhow::Result<(AgentResult, CeilingResult)> {
        let io_pool = self.args.io_pool;
        let plan = AgentPlan {
            label: format!("io-bound pool={io_pool}"),
            sleep_ms: self.args.io_sleep_ms,
            ..AgentPlan::drain(
                io_pool,
                self.args.io_messages,
                self.args.prefetch_per_worker,
            )
        };
        let agent = self.agent_run(&plan).await?;
        let direct = self
            .ceiling(
                usize::from(io_pool) * 2,
                self.args.io_messages,
                None,
                true,
                self.args.io_sleep_ms,
            )
            .await?;
        Ok((agent, direct))
    }

    /// The agent's steady state at `rate` msg/s for `--steady-secs` (after the warm-up).
    pub async fn steady_at(&mut self, plan: &AgentPlan, rate: f64) -> anyhow::Result<AgentResult> {
        let secs = self.args.steady_secs;
        let plan = AgentPlan {
            label: format!("steady {rate:.0}/s"),
            messages: (rate * (secs + WARMUP_SECS) as f64).round() as usize,
            steady: Some((rate, secs)),
            ..plan.clone()
        };
        self.agent_run(&plan).await
    }

    pub async fn all(&mut self) -> anyhow::Result<Report> {
        let mut rounds = Vec::new();
        let total_rounds = self.args.rounds;
        for r in 0..total_rounds {
            let round = self.round(r + 1, total_rounds).await?;
            rounds.push(round);
        }
        if let Some(perf) = self.args.perf.clone() {
            eprintln!(
                "[perf] extra drain under perf record --call-graph dwarf -> {}",
                perf.display()
            );
            let plan = AgentPlan {
                label: "perf drain".into(),
                perf: Some(perf),
                ..AgentPlan::drain(
                    self.args.pool,
                    self.args.messages,
                    self.args.prefetch_per_worker,
                )
            };
            let r = self.agent_run(&plan).await?;
            eprintln!("[perf] drain under perf: {:.0} msg/s", r.rate);
        }
        Ok(Report { rounds })
    }

    /// One round: every measurement once, in the report's order.
    async fn round(&mut self, number: usize, of: usize) -> anyhow::Result<Round> {
        let tag = format!("[round {number}/{of}]");
        let mut round = Round::default();
        self.round_ceilings(&tag, &mut round).await?;
        let plan = self.round_drain_steady(&tag, &mut round).await?;
        if self.args.machine_load > 0.0 {
            self.round_machine_load(&tag, &mut round, &plan).await?;
        }
        self.round_io_rss(&tag, &mut round).await?;
        if self.args.spawn_messages > 0 {
            let (rate, check) = self.process_per_message(self.args.spawn_messages).await?;
            eprintln!("{tag} one php process per message: {rate:.0} msg/s");
            round.spawn = Some((rate, check));
        }
        if self.args.sweep == OnOff::On {
            self.round_sweep(&tag, &mut round).await?;
        }
        Ok(round)
    }

    /// Rows 1 and 1b: the ceiling with and without the write buffer.
    async fn round_ceilings(&mut self, tag: &str, round: &mut Round) -> anyhow::Result<()> {
        let (pool, n) = (self.args.pool, self.args.messages);
        let concurrency = usize::from(pool) * 2;
        round.ceiling = self.ceiling(concurrency, n, None, true, 0).await?;
        eprintln!(
            "{tag} ceiling c={concurrency}: {:.0} req/s",
            round.ceiling.rate
        );
        round.ceiling_unbuffered = self.ceiling(concurrency, n, None, false, 0).await?;
        eprintln!(
            "{tag} ceiling c={concurrency}, unbuffered writes: {:.0} req/s",
            round.ceiling_unbuffered.rate
        );
        Ok(())
    }

    /// Rows 2, 3 and 3b: the drain, steady state at a share of the ceiling, and the same rate
    /// straight to FastCGI. Returns the steady-state plan.
    async fn round_drain_steady(
        &mut self,
        tag: &str,
        round: &mut Round,
    ) -> anyhow::Result<AgentPlan> {
        let (pool, n) = (self.args.pool, self.args.messages);
        let concurrency = usize::from(pool) * 2;
        let plan = AgentPlan::drain(pool, n, self.args.prefetch_per_worker);
        round.drain = self.agent_run(&plan).await?;
        eprintln!(
            "{tag} drain {n} msgs pool={pool}+{pool}: {:.0} msg/s ({:.1} µs CPU/msg)",
            round.drain.rate, round.drain.cpu_us_per_msg
        );
        for batch_max in self.args.batches.clone() {
            let plan = AgentPlan::drain_batched(pool, batch_max, n, self.args.prefetch_per_worker);
            let r = self.agent_run(&plan).await?;
            eprintln!(
                "{tag} drain {n} msgs pool={pool}+{pool}, batch_max {batch_max}: {:.0} msg/s ({:.1} µs CPU/msg)",
                r.rate, r.cpu_us_per_msg
            );
            round.drain_batches.push((batch_max, r));
        }
        let quorum = AgentPlan::drain_quorum(pool, n, self.args.prefetch_per_worker);
        round.drain_quorum = self.agent_run(&quorum).await?;
        eprintln!(
            "{tag} drain {n} msgs pool={pool}+{pool}, quorum queues: {:.0} msg/s ({:.1} µs CPU/msg)",
            round.drain_quorum.rate, round.drain_quorum.cpu_us_per_msg
        );

        let rate = round.ceiling.rate * self.args.steady_load;
        let secs = self.args.steady_secs;
        let steady_n = (rate * (secs + WARMUP_SECS) as f64).round() as usize;
        let plan = AgentPlan {
            label: format!("steady {rate:.0}/s"),
            messages: steady_n,
            steady: Some((rate, secs)),
            ..plan
        };
        round.steady = self.agent_run(&plan).await?;
        let lat = round.steady.latency.unwrap_or_default();
        eprintln!(
            "{tag} steady {:.0} msg/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            round.steady.offered_rate,
            lat.p50_us / 1e3,
            lat.p99_us / 1e3,
            lat.max_us / 1e3
        );
        round.steady_direct = self
            .ceiling(concurrency, steady_n, Some((rate, secs)), true, 0)
            .await?;
        let lat = round.steady_direct.latency.unwrap_or_default();
        eprintln!(
            "{tag} direct FastCGI at {:.0}/s: p50 {:.2} ms, p99 {:.2} ms",
            round.steady_direct.rate,
            lat.p50_us / 1e3,
            lat.p99_us / 1e3
        );
        Ok(plan)
    }

    /// Rows 3c and 3d: steady state at `--machine-load` of the machine's capacity, and
    /// RabbitMQ alone at that rate.
    async fn round_machine_load(
        &mut self,
        tag: &str,
        round: &mut Round,
        plan: &AgentPlan,
    ) -> anyhow::Result<()> {
        let cores = cores();
        let load = self.args.machine_load;
        let rate_for = |a: &AgentResult| {
            let path_us =
                a.cpu_us_per_msg + a.fpm_us_per_msg + a.rabbitmq_us_per_msg + a.bench_us_per_msg;
            load * cores * 1e6 / path_us.max(1.0)
        };
        // First estimate from run 3; the CPU per message of the whole path grows at lower
        // rates (less batching everywhere), so correct once from the run itself.
        let mut rate = rate_for(&round.steady);
        let mut agent = self.steady_at(plan, rate).await?;
        let corrected = rate_for(&agent);
        if (corrected / rate - 1.0).abs() > 0.15 {
            eprintln!(
                "{tag} steady {rate:.0} msg/s kept the machine {:.0} % busy; again at {corrected:.0} msg/s",
                agent.machine_busy * 100.0
            );
            rate = corrected;
            agent = self.steady_at(plan, rate).await?;
        }
        let lat = agent.latency.unwrap_or_default();
        eprintln!(
            "{tag} steady {:.0} msg/s (machine {:.0} % busy): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            agent.offered_rate,
            agent.machine_busy * 100.0,
            lat.p50_us / 1e3,
            lat.p99_us / 1e3,
            lat.max_us / 1e3
        );
        let window = self.args.pool * self.args.prefetch_per_worker.unwrap_or(8);
        let broker = self
            .broker_alone(rate, self.args.steady_secs, window)
            .await?;
        eprintln!(
            "{tag} RabbitMQ alone at {rate:.0}/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            broker.p50_us / 1e3,
            broker.p99_us / 1e3,
            broker.max_us / 1e3
        );
        round.steady_capacity = Some((agent, broker));
        Ok(())
    }

    /// Rows 4, 4a and 4b: the I/O-bound pair, then the RSS run with ~`--rss-in-flight` held.
    async fn round_io_rss(&mut self, tag: &str, round: &mut Round) -> anyhow::Result<()> {
        let io_pool = self.args.io_pool;
        (round.io, round.io_direct) = self.io_bound().await?;
        eprintln!(
            "{tag} I/O-bound ({} ms) pool={io_pool}+{io_pool}: {:.0} msg/s",
            self.args.io_sleep_ms, round.io.rate
        );
        eprintln!(
            "{tag} I/O-bound ({} ms), direct FastCGI c={}: {:.0} req/s",
            self.args.io_sleep_ms,
            usize::from(io_pool) * 2,
            round.io_direct.rate
        );

        let per_worker = self
            .args
            .rss_in_flight
            .div_ceil(usize::from(io_pool) * 2)
            .max(1);
        // The I/O-bound setup (pool, handler sleep), with a window of about `rss_in_flight`.
        let plan = AgentPlan {
            label: "rss".into(),
            sleep_ms: self.args.io_sleep_ms,
            track_in_flight: true,
            ..AgentPlan::drain(
                io_pool,
                self.args.rss_messages,
                Some(u16::try_from(per_worker).unwrap_or(u16::MAX)),
            )
        };
        round.rss = self.agent_run(&plan).await?;
        eprintln!(
            "{tag} RSS run: up to {} in flight, peak RSS {:.1} MiB",
            round.rss.max_in_flight,
            round.rss.peak_rss_kib as f64 / 1024.0
        );
        Ok(())
    }

    /// The pool-size sweep: ceiling and drain at every `--sweep-pools` size, then the same
    /// drain by auto pools (row 6a).
    async fn round_sweep(&mut self, tag: &str, round: &mut Round) -> anyhow::Result<()> {
        for p in self.args.sweep_pools.clone() {
            let n = self.args.sweep_messages;
            let c = self.ceiling(usize::from(p) * 2, n, None, true, 0).await?;
            let plan = AgentPlan {
                label: format!("sweep pool={p}"),
                ..AgentPlan::drain(p, n, self.args.prefetch_per_worker)
            };
            let a = self.agent_run(&plan).await?;
            eprintln!(
                "{tag} sweep pool={p}+{p}: ceiling {:.0} req/s, agent {:.0} msg/s",
                c.rate, a.rate
            );
            round.sweep.push((c, a));
        }
        let a = self.auto_drain(self.args.sweep_messages).await?;
        eprintln!(
            "{tag} sweep, auto pools 1..={}: agent {:.0} msg/s (largest pools: {})",
            self.largest_sweep_pool(),
            a.rate,
            a.autoscaled
        );
        round.auto = Some(a);
        Ok(())
    }

    /// The largest `--sweep-pools` size: the auto pools' `max_pool_size`.
    pub fn largest_sweep_pool(&self) -> u16 {
        self.args.sweep_pools.iter().copied().max().unwrap_or(1)
    }

    /// A drain of `messages` by auto pools of 1 to the largest sweep pool per subject.
    pub async fn auto_drain(&mut self, messages: usize) -> anyhow::Result<AgentResult> {
        let plan = AgentPlan::drain_auto(
            self.largest_sweep_pool(),
            messages,
            self.args.prefetch_per_worker,
        );
        self.agent_run(&plan).await
    }
}
