//! `--quick`: one measurement `--rounds` times, a line per round and the medians, nothing
//! written: ceiling and drain, or the I/O-bound runs (`--io`), or steady state at a rate
//! (`--steady-rate`), or auto pools against fixed ones (`--auto`), or streamed replies on
//! loopback TCP against a Unix socket (`--streamed`).

use std::fmt::Write as _;

use anyhow::ensure;

use crate::bench::{AgentPlan, Bench};
use crate::report::median;

impl Bench {
    /// `--quick`: ceiling and drain only, medians printed.
    pub async fn quick(&mut self) -> anyhow::Result<()> {
        if self.args.io {
            return self.quick_io().await;
        }
        if let Some(rate) = self.args.steady_rate {
            return self.quick_steady(rate).await;
        }
        if self.args.auto {
            return self.quick_auto().await;
        }
        if self.args.streamed {
            return self.quick_streamed().await;
        }
        let (pool, n) = (self.args.pool, self.args.messages);
        let concurrency = usize::from(pool) * 2;
        let (mut ceilings, mut drains, mut cpus) = (Vec::new(), Vec::new(), Vec::new());
        let (mut quorum_drains, mut quorum_cpus) = (Vec::new(), Vec::new());
        let mut dashboard_cpus = Vec::new();
        let plan = AgentPlan::drain_batched(
            pool,
            self.args.quick_batch.max(1),
            n,
            self.args.prefetch_per_worker,
        );
        for r in 1..=self.args.rounds {
            let ceiling = self.ceiling(concurrency, n, None, true, 0).await?;
            let drain = self.agent_run(&plan).await?;
            println!(
                "[quick {r}] ceiling {:.0} req/s ({:.1} µs client CPU/req), drain {:.0} msg/s ({:.2}), agent {:.1} µs CPU/msg, {:.2} context switches/msg, {:.1} MiB, lost/dup {}/{}",
                ceiling.rate,
                ceiling.client_us_per_req,
                drain.rate,
                drain.rate / ceiling.rate,
                drain.cpu_us_per_msg,
                drain.switches_per_msg,
                drain.peak_rss_kib as f64 / 1024.0,
                drain.check.lost,
                drain.check.duplicates,
            );
            ensure!(drain.check.clean(), "messages lost or duplicated");
            if self.args.dashboard {
                let every = std::time::Duration::from_millis(self.args.dashboard_every_ms);
                let open = AgentPlan {
                    label: format!("{} dashboard open", plan.label),
                    dashboard: Some(every),
                    ..plan.clone()
                };
                let with = self.agent_run(&open).await?;
                ensure!(with.check.clean(), "messages lost or duplicated");
                println!(
                    "[quick {r}] dashboard open (refresh every {} ms, {} fetches): drain {:.0} msg/s, agent {:.2} µs CPU/msg against {:.2} without ({:+.1} %)",
                    every.as_millis(),
                    with.dashboard_fetches,
                    with.rate,
                    with.cpu_us_per_msg,
                    drain.cpu_us_per_msg,
                    (with.cpu_us_per_msg / drain.cpu_us_per_msg - 1.0) * 100.0,
                );
                dashboard_cpus.push(with.cpu_us_per_msg);
            }
            if self.args.quorum {
                let plan = AgentPlan::drain_quorum(pool, n, self.args.prefetch_per_worker);
                let q = self.agent_run(&plan).await?;
                println!(
                    "[quick {r}] quorum queues: drain {:.0} msg/s ({:.2} of classic), agent {:.1} µs CPU/msg, RabbitMQ {:.1} µs CPU/msg (classic {:.1}), lost/dup {}/{}",
                    q.rate,
                    q.rate / drain.rate,
                    q.cpu_us_per_msg,
                    q.rabbitmq_us_per_msg,
                    drain.rabbitmq_us_per_msg,
                    q.check.lost,
                    q.check.duplicates,
                );
                ensure!(
                    q.check.clean(),
                    "messages lost or duplicated on quorum queues"
                );
                quorum_drains.push(q.rate);
                quorum_cpus.push(q.cpu_us_per_msg);
            }
            ceilings.push(ceiling.rate);
            drains.push(drain.rate);
            cpus.push(drain.cpu_us_per_msg);
        }
        let (c, d) = (median(ceilings), median(drains));
        let least = cpus.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "[quick] medians of {}: ceiling {c:.0} req/s, drain {d:.0} msg/s ({:.2}), agent {:.1} µs CPU/msg (least {least:.1})",
            self.args.rounds,
            d / c,
            median(cpus.clone())
        );
        if self.args.quorum {
            let q = median(quorum_drains);
            println!(
                "[quick] quorum queues, medians of {}: drain {q:.0} msg/s ({:.2} of classic), agent {:.1} µs CPU/msg",
                self.args.rounds,
                q / d,
                median(quorum_cpus)
            );
        }
        if self.args.dashboard {
            let (without, with) = (median(cpus.clone()), median(dashboard_cpus));
            println!(
                "[quick] dashboard, medians of {}: agent {with:.2} µs CPU/msg with a dashboard open against {without:.2} without ({:+.1} %)",
                self.args.rounds,
                (with / without - 1.0) * 100.0
            );
        }
        if let Some(perf) = self.args.perf.clone() {
            let plan = AgentPlan {
                label: "perf drain".into(),
                perf: Some(perf.clone()),
                ..plan
            };
            let r = self.agent_run(&plan).await?;
            println!(
                "[quick] drain under perf record -> {}: {:.0} msg/s",
                perf.display(),
                r.rate
            );
        }
        Ok(())
    }

    /// `--quick --auto`: drains by fixed pools of every `--sweep-pools` size, then by auto pools
    /// (1 to the largest size), medians printed with auto / best fixed.
    async fn quick_auto(&mut self) -> anyhow::Result<()> {
        let n = self.args.messages;
        let pools = self.args.sweep_pools.clone();
        let max = self.largest_sweep_pool();
        let (mut fixed, mut auto) = (vec![Vec::new(); pools.len()], Vec::new());
        for r in 1..=self.args.rounds {
            let mut line = String::new();
            // Pool, msg/s and agent CPU µs/msg of this round's fastest fixed pool.
            let mut best = (0, 0.0_f64, 0.0_f64);
            for (rates, &p) in fixed.iter_mut().zip(&pools) {
                let plan = AgentPlan::drain(p, n, self.args.prefetch_per_worker);
                let d = self.agent_run(&plan).await?;
                ensure!(
                    d.check.clean(),
                    "messages lost or duplicated (pool {p}+{p})"
                );
                let _ = write!(line, "pool {p}+{p} {:.0}, ", d.rate);
                if d.rate > best.1 {
                    best = (p, d.rate, d.cpu_us_per_msg);
                }
                rates.push(d.rate);
            }
            let a = self.auto_drain(n).await?;
            ensure!(a.check.clean(), "messages lost or duplicated (auto pools)");
            println!(
                "[quick-auto {r}] drain of {n}, msg/s: {line}auto 1..={max} {:.0} = {:.2} of the best (pool {}+{}); largest auto pools: {}; {:.1} µs CPU/msg (best fixed {:.1})",
                a.rate,
                a.rate / best.1,
                best.0,
                best.0,
                a.autoscaled,
                a.cpu_us_per_msg,
                best.2,
            );
            auto.push(a.rate);
        }
        let medians: Vec<(u16, f64)> = pools
            .iter()
            .zip(fixed)
            .map(|(&p, rates)| (p, median(rates)))
            .collect();
        let (best_pool, best) = medians
            .iter()
            .copied()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, f64::NAN));
        let a = median(auto);
        let all: Vec<String> = medians
            .iter()
            .map(|(p, rate)| format!("{p}+{p} {rate:.0}"))
            .collect();
        println!(
            "[quick-auto] medians of {}: fixed pools {}; best {best_pool}+{best_pool} {best:.0} msg/s; auto 1..={max} {a:.0} msg/s = {:.2} of the best (target ≥ 0.9)",
            self.args.rounds,
            all.join(", "),
            a / best
        );
        Ok(())
    }

    /// `--quick --io`: the I/O-bound runs only, medians printed.
    async fn quick_io(&mut self) -> anyhow::Result<()> {
        let io_pool = self.args.io_pool;
        let bound = 1000.0 / self.args.io_sleep_ms as f64 * f64::from(io_pool) * 2.0;
        let (mut agent, mut direct) = (Vec::new(), Vec::new());
        for r in 1..=self.args.rounds {
            let (a, d) = self.io_bound().await?;
            println!(
                "[quick-io {r}] agent {:.0} msg/s ({:.1} % of {bound:.0}, turnaround p50 {:.2} ms p99 {:.2} ms), direct {:.0} req/s ({:.1} %, p50 {:.2} ms p99 {:.2} ms), lost/dup {}/{}",
                a.rate,
                a.rate / bound * 100.0,
                a.cycle.p50_us / 1e3,
                a.cycle.p99_us / 1e3,
                d.rate,
                d.rate / bound * 100.0,
                d.cycle.p50_us / 1e3,
                d.cycle.p99_us / 1e3,
                a.check.lost,
                a.check.duplicates,
            );
            ensure!(a.check.clean(), "messages lost or duplicated");
            agent.push(a.rate);
            direct.push(d.rate);
        }
        let (a, d) = (median(agent), median(direct));
        println!(
            "[quick-io] medians of {}: agent {a:.0} msg/s ({:.1} %), direct {d:.0} req/s ({:.1} %), agent/direct {:.3}",
            self.args.rounds,
            a / bound * 100.0,
            d / bound * 100.0,
            a / d
        );
        Ok(())
    }

    /// `--quick --steady-rate R`: the agent's steady state and RabbitMQ alone at R msg/s.
    async fn quick_steady(&mut self, rate: f64) -> anyhow::Result<()> {
        let (pool, secs) = (self.args.pool, self.args.steady_secs);
        let (mut agent99, mut broker99) = (Vec::new(), Vec::new());
        for r in 1..=self.args.rounds {
            let plan = AgentPlan::drain(pool, 0, self.args.prefetch_per_worker);
            let a = self.steady_at(&plan, rate).await?;
            let window = pool * self.args.prefetch_per_worker.unwrap_or(8);
            let b = self.broker_alone(rate, secs, window).await?;
            let l = a.latency.unwrap_or_default();
            println!(
                "[quick-steady {r}] {:.0} msg/s, machine {:.0} % busy: agent p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({:.1} µs CPU/msg); RabbitMQ alone p50 {:.2} ms p99 {:.2} ms max {:.2} ms; lost/dup {}/{}",
                a.offered_rate,
                a.machine_busy * 100.0,
                l.p50_us / 1e3,
                l.p99_us / 1e3,
                l.max_us / 1e3,
                a.cpu_us_per_msg,
                b.p50_us / 1e3,
                b.p99_us / 1e3,
                b.max_us / 1e3,
                a.check.lost,
                a.check.duplicates,
            );
            ensure!(a.check.clean(), "messages lost or duplicated");
            agent99.push(l.p99_us);
            broker99.push(b.p99_us);
        }
        println!(
            "[quick-steady] medians of {}: p99 agent {:.2} ms, RabbitMQ alone {:.2} ms",
            self.args.rounds,
            median(agent99) / 1e3,
            median(broker99) / 1e3
        );
        Ok(())
    }
}

/// One drain of `--quick --streamed`: where php-fpm listens, how PHP flushes, the agent's
/// `TCP_QUICKACK` on or off.
struct Streamed {
    name: &'static str,
    tcp: bool,
    query: &'static str,
    quickack_off: bool,
    /// One request per message (`batch_max = 1`) instead of the largest `--batches` value.
    single: bool,
    /// A tenth of `--messages` (the reply in two flushes without the fix: ~40 ms a message).
    few: bool,
}

const fn streamed(name: &'static str, tcp: bool, query: &'static str) -> Streamed {
    Streamed {
        name,
        tcp,
        query,
        quickack_off: false,
        single: false,
        few: false,
    }
}

/// The rows of `--quick --streamed`; the ratios printed refer to them by index.
const STREAMED: [Streamed; 9] = [
    Streamed {
        quickack_off: true,
        ..streamed(
            "batch, TCP, flush per line, QUICKACK off (before)",
            true,
            "",
        )
    },
    streamed("batch, TCP, flush per line", true, ""),
    streamed("batch, TCP, flush once", true, "?flush=once"),
    streamed("batch, Unix socket, flush per line", false, ""),
    Streamed {
        quickack_off: true,
        single: true,
        few: true,
        ..streamed(
            "single, TCP, 2 flushes, QUICKACK off (before)",
            true,
            "?flushes=2",
        )
    },
    Streamed {
        single: true,
        few: true,
        ..streamed("single, TCP, 2 flushes", true, "?flushes=2")
    },
    Streamed {
        single: true,
        few: true,
        ..streamed("single, Unix socket, 2 flushes", false, "?flushes=2")
    },
    Streamed {
        quickack_off: true,
        single: true,
        ..streamed("single, TCP, 1 write, QUICKACK off (before)", true, "")
    },
    Streamed {
        single: true,
        ..streamed("single, TCP, 1 write", true, "")
    },
];

/// (label, numerator row, denominator row) of the ratios printed under the table.
const STREAMED_RATIOS: [(&str, usize, usize); 4] = [
    ("batch: TCP per line / Unix per line", 1, 3),
    ("batch: TCP per line / TCP once", 1, 2),
    ("single, 2 flushes: TCP / Unix", 5, 6),
    ("single, 1 write: TCP / TCP before", 8, 7),
];

impl Bench {
    /// `--quick --streamed`: at every `--sweep-pools` size, the [`STREAMED`] drains (batches of
    /// the largest `--batches` value, PHP flushing each line over TCP with the agent's
    /// `TCP_QUICKACK` off and on, once over TCP, each line over a Unix socket; single messages
    /// replied in two flushes or in one write). Medians printed as Markdown tables.
    async fn quick_streamed(&mut self) -> anyhow::Result<()> {
        let n = self.args.messages;
        let few = (n / 10).max(2);
        let batch = self.args.batches.iter().copied().max().unwrap_or(50).max(2);
        let pools = self.args.sweep_pools.clone();
        let alt = self
            .fpm_alt_address
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--streamed needs the second php-fpm pool"))?;
        let main = self.fpm_address.clone();
        let (tcp, unix) = if main.starts_with("unix:") {
            (alt, main)
        } else {
            (main, alt)
        };
        // (rate, agent CPU µs/msg) per round, [row][pool].
        let mut runs = vec![vec![(Vec::new(), Vec::new()); pools.len()]; STREAMED.len()];
        for r in 1..=self.args.rounds {
            for (p, &pool) in pools.iter().enumerate() {
                for (v, row) in STREAMED.iter().enumerate() {
                    if !self.args.streamed_rows.is_empty() && !self.args.streamed_rows.contains(&v)
                    {
                        continue;
                    }
                    let batch_max = if row.single { 1 } else { batch };
                    let messages = if row.few { few } else { n };
                    let plan = AgentPlan {
                        label: format!("streamed pool={pool}: {}", row.name),
                        fpm_address: Some(if row.tcp { tcp.clone() } else { unix.clone() }),
                        query: row.query,
                        env: if row.quickack_off {
                            vec![("AMQP_AGENT_TCP_QUICKACK", "0")]
                        } else {
                            Vec::new()
                        },
                        ..AgentPlan::drain_batched(
                            pool,
                            batch_max,
                            messages,
                            self.args.prefetch_per_worker,
                        )
                    };
                    let d = self.agent_run(&plan).await?;
                    ensure!(
                        d.check.clean(),
                        "messages lost or duplicated ({})",
                        plan.label
                    );
                    println!(
                        "[streamed {r}] pool {pool}+{pool}, {} ({messages} msgs): {:.0} msg/s, agent {:.1} µs CPU/msg \
                         and {:.2} context switches/msg (php-fpm {:.0}, RabbitMQ {:.0}; machine {:.0} % busy)",
                        row.name,
                        d.rate,
                        d.cpu_us_per_msg,
                        d.switches_per_msg,
                        d.fpm_us_per_msg,
                        d.rabbitmq_us_per_msg,
                        d.machine_busy * 100.0
                    );
                    runs[v][p].0.push(d.rate);
                    runs[v][p].1.push(d.cpu_us_per_msg);
                }
            }
        }
        // Each round's own ratios, [ratio][pool]: the two rows of a pair ran back to back, so
        // a drift of the machine between rounds cancels out of them.
        let paired: Vec<Vec<f64>> = STREAMED_RATIOS
            .iter()
            .map(|&(_, a, b)| {
                runs[a]
                    .iter()
                    .zip(&runs[b])
                    .map(|(x, y)| {
                        median(x.0.iter().zip(&y.0).map(|(x, y)| x / y).collect::<Vec<_>>())
                    })
                    .collect()
            })
            .collect();
        // Medians, [row][pool].
        let medians: Vec<Vec<(f64, f64)>> = runs
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|(rates, cpus)| (median(rates), median(cpus)))
                    .collect()
            })
            .collect();
        println!(
            "\n[streamed] medians of {} rounds; batches: batch_max {batch}, {n} messages; \
             single: batch_max 1, {n} messages ({few} with 2 flushes); msg/s (agent µs CPU/msg)\n",
            self.args.rounds
        );
        let mut head = String::from("| |");
        let mut rule = String::from("|---|");
        for pool in &pools {
            let _ = write!(head, " pool {pool}+{pool} |");
            rule.push_str("---:|");
        }
        println!("{head}\n{rule}");
        for (row, m) in STREAMED.iter().zip(&medians) {
            let mut line = format!("| {} |", row.name);
            for (rate, cpu) in m {
                let _ = write!(line, " {rate:.0} ({cpu:.1}) |");
            }
            println!("{line}");
        }
        for (label, a, b) in STREAMED_RATIOS {
            let mut line = format!("| {label} (of the medians) |");
            for (x, y) in medians[a].iter().zip(&medians[b]) {
                let _ = write!(line, " **{:.2}** |", x.0 / y.0);
            }
            println!("{line}");
        }
        for ((label, _, _), ratios) in STREAMED_RATIOS.iter().zip(&paired) {
            let mut line = format!("| {label} (median of each round's own) |");
            for r in ratios {
                let _ = write!(line, " **{r:.2}** |");
            }
            println!("{line}");
        }
        Ok(())
    }
}
