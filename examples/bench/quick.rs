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
        for r in 1..=self.args.rounds {
            let ceiling = self.ceiling(concurrency, n, None, true, 0).await?;
            let plan = AgentPlan::drain(pool, n, self.args.prefetch_per_worker);
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
            median(cpus)
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
}

const STREAMED: [Streamed; 7] = [
    Streamed {
        name: "TCP, per line, QUICKACK off",
        tcp: true,
        query: "",
        quickack_off: true,
        single: false,
    },
    Streamed {
        name: "TCP, per line",
        tcp: true,
        query: "",
        quickack_off: false,
        single: false,
    },
    Streamed {
        name: "TCP, once",
        tcp: true,
        query: "?flush=once",
        quickack_off: false,
        single: false,
    },
    Streamed {
        name: "Unix, per line",
        tcp: false,
        query: "",
        quickack_off: false,
        single: false,
    },
    Streamed {
        name: "TCP, 2 flushes, QUICKACK off",
        tcp: true,
        query: "?flushes=2",
        quickack_off: true,
        single: true,
    },
    Streamed {
        name: "TCP, 2 flushes",
        tcp: true,
        query: "?flushes=2",
        quickack_off: false,
        single: true,
    },
    Streamed {
        name: "Unix, 2 flushes",
        tcp: false,
        query: "?flushes=2",
        quickack_off: false,
        single: true,
    },
];

impl Bench {
    /// `--quick --streamed`: at every `--sweep-pools` size, batch drains whose replies PHP
    /// flushes line by line over TCP (the agent's `TCP_QUICKACK` off, then on), once at the end
    /// over TCP, and line by line over a Unix socket; then one request per message with the
    /// reply in two flushes (a tenth of `--messages`). Medians printed as a Markdown table.
    async fn quick_streamed(&mut self) -> anyhow::Result<()> {
        let n = self.args.messages;
        let single_n = (n / 10).max(2);
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
        // rates[pool][variant]: one rate per round.
        let mut rates = vec![vec![Vec::new(); STREAMED.len()]; pools.len()];
        for r in 1..=self.args.rounds {
            for (p, &pool) in pools.iter().enumerate() {
                let mut line = String::new();
                for (v, variant) in STREAMED.iter().enumerate() {
                    let (batch_max, messages) = if variant.single {
                        (1, single_n)
                    } else {
                        (batch, n)
                    };
                    let plan = AgentPlan {
                        label: format!("streamed pool={pool} {}", variant.name),
                        fpm_address: Some(if variant.tcp {
                            tcp.clone()
                        } else {
                            unix.clone()
                        }),
                        query: variant.query,
                        env: if variant.quickack_off {
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
                    let _ = write!(line, "{} {:.0}; ", variant.name, d.rate);
                    rates[p][v].push(d.rate);
                }
                println!(
                    "[streamed {r}] pool {pool}+{pool}, batch_max {batch} ({n} msgs) / 1 ({single_n} msgs), msg/s: {line}"
                );
            }
        }
        println!(
            "\n[streamed] medians of {} rounds; batch rows: batch_max {batch}, {n} messages; \
             single rows: batch_max 1, {single_n} messages, the reply in 2 flushes\n",
            self.args.rounds
        );
        let mut head = String::from("| pool |");
        let mut rule = String::from("|---|");
        for variant in &STREAMED {
            let _ = write!(head, " {} |", variant.name);
            rule.push_str("---:|");
        }
        head.push_str(" TCP per line / Unix | TCP per line / TCP once | TCP 2 flushes / Unix |");
        rule.push_str("---:|---:|---:|");
        println!("{head}\n{rule}");
        for (p, &pool) in pools.iter().enumerate() {
            let m: Vec<f64> = rates[p].iter().cloned().map(median).collect();
            let mut row = format!("| {pool}+{pool} |");
            for rate in &m {
                let _ = write!(row, " {rate:.0} |");
            }
            let _ = write!(
                row,
                " {:.2} | {:.2} | {:.2} |",
                m[1] / m[3],
                m[1] / m[2],
                m[5] / m[6]
            );
            println!("{row}");
        }
        Ok(())
    }
}
