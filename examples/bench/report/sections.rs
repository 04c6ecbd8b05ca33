//! The report's sections after the results table: the pool-size sweep, the CPU budget per
//! process, the targets, and the notes on turnaround and on other load on the machine.

use std::fmt::Write as _;

use super::{AutoPoint, Summary, SweepPoint, fmt_check, med, met, ms};
use crate::args::Args;
use crate::records::{Check, Latency};
use crate::results::{AgentResult, Round};

/// The sweep table, and the auto pools' drain as its last row; empty when the sweep did not
/// run.
pub fn sweep_table(sweep: &[SweepPoint], auto: Option<&AutoPoint>) -> String {
    let mut t = String::new();
    if sweep.is_empty() {
        return t;
    }
    let _ = writeln!(
        t,
        "| pool per subject | total concurrency | ceiling req/s | agent msg/s | agent / ceiling | agent CPU µs/msg | lost/dup |"
    );
    let _ = writeln!(t, "|---:|---:|---:|---:|---:|---:|---:|");
    for p in sweep {
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {:.0} | {:.2} | {:.1} | {} |",
            p.pool,
            usize::from(p.pool) * 2,
            p.ceiling,
            p.agent,
            p.agent / p.ceiling,
            p.cpu,
            fmt_check(p.check)
        );
    }
    if let Some(a) = auto {
        let _ = writeln!(
            t,
            "| auto 1..={} | up to {} | | {:.0} | {:.2} of pool {}+{} | {:.1} | {} |",
            a.max,
            usize::from(a.max) * 2,
            a.agent,
            a.ratio(),
            a.best_pool,
            a.best_pool,
            a.cpu,
            fmt_check(a.check)
        );
    }
    t
}

/// Cores used by other processes during every measured run, named "round N <run>".
fn background_per_run(rounds: &[Round]) -> Vec<(String, f64)> {
    let mut background: Vec<(String, f64)> = Vec::new();
    for (i, r) in rounds.iter().enumerate() {
        let round = i + 1;
        for (name, c) in [
            ("ceiling", &r.ceiling),
            ("ceiling unbuffered", &r.ceiling_unbuffered),
            ("direct at steady rate", &r.steady_direct),
            ("direct I/O-bound", &r.io_direct),
        ] {
            background.push((format!("round {round} {name}"), c.background_cores));
        }
        for (name, a) in [
            ("drain", &r.drain),
            ("drain on quorum queues", &r.drain_quorum),
            ("steady", &r.steady),
            ("I/O-bound", &r.io),
            ("RSS", &r.rss),
        ] {
            background.push((format!("round {round} {name}"), a.background_cores));
        }
        if let Some((a, _)) = &r.steady_capacity {
            background.push((
                format!("round {round} steady at machine load"),
                a.background_cores,
            ));
        }
        for (c, a) in &r.sweep {
            background.push((
                format!("round {round} sweep {} ceiling", a.pool),
                c.background_cores,
            ));
            background.push((
                format!("round {round} sweep {} agent", a.pool),
                a.background_cores,
            ));
        }
        if let Some(a) = &r.auto {
            background.push((format!("round {round} sweep auto"), a.background_cores));
        }
    }
    background
}

/// Other load on the machine during the measurements: the worst run, or a warning naming the
/// disturbed runs.
pub fn background_note(rounds: &[Round]) -> String {
    let background = background_per_run(rounds);
    let (worst_name, worst) = background
        .iter()
        .cloned()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or_default();
    let mut disturbed: Vec<&(String, f64)> = background.iter().filter(|(_, c)| *c > 0.2).collect();
    disturbed.sort_by(|a, b| b.1.total_cmp(&a.1));
    if disturbed.is_empty() {
        return format!(
            "Other processes on the machine used at most {worst:.2} cores during any measured run ({worst_name}): the numbers are not disturbed by another workload."
        );
    }
    let shown: Vec<String> = disturbed
        .iter()
        .take(6)
        .map(|(n, c)| format!("{n} ({c:.2})"))
        .collect();
    format!(
        "**Warning:** other processes used more than 0.2 cores during {} of {} measured runs, so those numbers are disturbed; worst: {}{}.",
        disturbed.len(),
        background.len(),
        shown.join(", "),
        if disturbed.len() > shown.len() {
            ", …"
        } else {
            ""
        }
    )
}

/// I/O-bound turnaround on one FPM child, agent and direct FastCGI.
pub fn cycle_note(args: &Args, rounds: &[Round]) -> String {
    let io_cycle = |f: fn(&Latency) -> f64| med(rounds, |r| f(&r.io.cycle));
    let io_direct_cycle = |f: fn(&Latency) -> f64| med(rounds, |r| f(&r.io_direct.cycle));
    format!(
        "I/O-bound turnaround: time from one handler start to the next on the same FPM child \
         (handler {} ms + reply + client turnaround), p50 / p99: agent {} / {}, direct FastCGI {} / {}.",
        args.io_sleep_ms,
        ms(io_cycle(|l| l.p50_us)),
        ms(io_cycle(|l| l.p99_us)),
        ms(io_direct_cycle(|l| l.p50_us)),
        ms(io_direct_cycle(|l| l.p99_us)),
    )
}

/// Where the CPU goes, per message and process, for the drain, steady-state and I/O-bound runs.
pub fn cpu_budget(args: &Args, s: &Summary) -> String {
    let (pool, rounds) = (s.pool, s.rounds);
    let mut budget = String::new();
    let _ = writeln!(
        budget,
        "| Run | agent user | agent sys | agent total | php-fpm | RabbitMQ | bench process |"
    );
    let _ = writeln!(budget, "|---|---:|---:|---:|---:|---:|---:|");
    let mut rows: Vec<(String, Vec<&AgentResult>)> = vec![
        (
            format!("drain, pool {pool}+{pool}"),
            rounds.iter().map(|r| &r.drain).collect(),
        ),
        (
            format!("steady state {:.0} %", args.steady_load * 100.0),
            rounds.iter().map(|r| &r.steady).collect(),
        ),
    ];
    if !s.cap_runs.is_empty() {
        rows.push((
            format!(
                "steady state {:.0} % machine load",
                args.machine_load * 100.0
            ),
            s.cap_runs.clone(),
        ));
    }
    rows.push((
        format!("I/O-bound, pool {}+{}", args.io_pool, args.io_pool),
        rounds.iter().map(|r| &r.io).collect(),
    ));
    for (name, runs) in &rows {
        let _ = writeln!(
            budget,
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            med(runs, |a| a.cpu_user_us_per_msg),
            med(runs, |a| a.cpu_sys_us_per_msg),
            med(runs, |a| a.cpu_us_per_msg),
            med(runs, |a| a.fpm_us_per_msg),
            med(runs, |a| a.rabbitmq_us_per_msg),
            med(runs, |a| a.bench_us_per_msg),
        );
    }
    budget
}

/// The targets table: one function per target row.
pub fn targets(args: &Args, s: &Summary) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "| Target | Measured | |");
    let _ = writeln!(t, "|---|---|---|");
    target_drain(&mut t, s);
    if let Some(a) = &s.auto {
        target_auto(&mut t, a);
    }
    target_io(&mut t, s);
    target_cpu(&mut t, s);
    target_rss(&mut t, args, s);
    target_latency(&mut t, args, s);
    if !s.cap_runs.is_empty() {
        target_latency_machine_load(&mut t, args, s);
    }
    target_no_loss(&mut t, s.rounds);
    t
}

/// Drain ≥ 0.85 × ceiling at the best pool size (the main runs or a sweep point).
fn target_drain(t: &mut String, s: &Summary) {
    let mut candidates: Vec<(u16, f64, f64)> = vec![(s.pool, s.ceiling, s.drain)];
    candidates.extend(s.sweep.iter().map(|p| (p.pool, p.ceiling, p.agent)));
    let best = candidates
        .iter()
        .copied()
        .max_by(|x, y| x.2.total_cmp(&y.2))
        .unwrap_or((s.pool, s.ceiling, s.drain));
    let best_ratio = best.2 / best.1;
    let _ = writeln!(
        t,
        "| Drain ≥ 0.85 × ceiling at the best pool size | pool {}+{}: agent {:.0} msg/s vs ceiling {:.0} req/s = {:.2} | {} |",
        best.0,
        best.0,
        best.2,
        best.1,
        best_ratio,
        met(best_ratio >= 0.85)
    );
}

/// Auto pools ≥ 0.9 × the best fixed pool of the sweep, which they are not told.
fn target_auto(t: &mut String, a: &AutoPoint) {
    let _ = writeln!(
        t,
        "| Auto pools' drain ≥ 0.9 × the best fixed pool of the sweep | auto 1..={}: {:.0} msg/s vs pool {}+{}: {:.0} msg/s = {:.2} | {} |",
        a.max,
        a.agent,
        a.best_pool,
        a.best_pool,
        a.best,
        a.ratio(),
        met(a.ratio() >= 0.9)
    );
}

fn target_io(t: &mut String, s: &Summary) {
    let (io, io_bound) = (s.io, s.io_bound);
    let io_active = med(s.rounds, |r| r.io.rate_active);
    let _ = writeln!(
        t,
        "| I/O-bound ≥ 95 % of {io_bound:.0} msg/s | {io:.0} msg/s = {:.1} % (first → last handler start: {io_active:.0} msg/s = {:.1} %) | {} |",
        io / io_bound * 100.0,
        io_active / io_bound * 100.0,
        met(io / io_bound >= 0.95)
    );
}

fn target_cpu(t: &mut String, s: &Summary) {
    let (pool, drain_cpu) = (s.pool, s.drain_cpu);
    let _ = writeln!(
        t,
        "| Agent CPU ≤ 40 µs/msg | {drain_cpu:.1} µs/msg (drain, pool {pool}+{pool}){} | {} |",
        s.sweep
            .iter()
            .min_by(|a, b| a.cpu.total_cmp(&b.cpu))
            .map(|p| format!(
                "; least in the sweep {:.1} at pool {}+{}",
                p.cpu, p.pool, p.pool
            ))
            .unwrap_or_default(),
        met(drain_cpu <= 40.0)
    );
}

fn target_rss(t: &mut String, args: &Args, s: &Summary) {
    let (rss_mib, rss_in_flight) = (s.rss_mib, s.rss_in_flight);
    let rss_ok = rss_mib <= 40.0 && rss_in_flight >= 0.9 * args.rss_in_flight as f64;
    let _ = writeln!(
        t,
        "| Peak RSS ≤ 40 MiB with {} in flight | {rss_mib:.1} MiB with up to {rss_in_flight:.0} held | {} |",
        args.rss_in_flight,
        met(rss_ok)
    );
}

fn target_latency(t: &mut String, args: &Args, s: &Summary) {
    let _ = writeln!(
        t,
        "| p99 added latency ≤ 5 ms at {:.0} % of the ceiling | publish → handler start p99 {} (direct FastCGI at the same rate: {}) | {} |",
        args.steady_load * 100.0,
        ms(s.p99),
        ms(s.d99),
        met(s.p99 <= 5000.0)
    );
}

fn target_latency_machine_load(t: &mut String, args: &Args, s: &Summary) {
    // Latency the agent adds to what RabbitMQ costs any consumer (median over rounds of the
    // difference of the p99s).
    let added99 = med(
        &s.rounds
            .iter()
            .filter_map(|r| r.steady_capacity.as_ref())
            .map(|(a, b)| a.latency.unwrap_or_default().p99_us - b.p99_us)
            .collect::<Vec<_>>(),
        |d| *d,
    );
    let _ = writeln!(
        t,
        "| p99 added latency ≤ 5 ms at {:.0} % machine load | {:.0} msg/s, machine {:.0} % busy: publish → handler start p99 {}; RabbitMQ alone p99 {}; added by the agent and FPM: {} | {} |",
        args.machine_load * 100.0,
        s.cap_rate,
        s.cap_busy * 100.0,
        ms(s.cap_lat(|l| l.p99_us)),
        ms(s.cap_blat(|l| l.p99_us)),
        ms(added99),
        met(added99 <= 5000.0)
    );
}

/// Lost/duplicate ids, leftover messages and failed direct requests over every run.
fn target_no_loss(t: &mut String, rounds: &[Round]) {
    let mut all_checks = Check::default();
    let mut left = 0u32;
    for r in rounds {
        for a in [&r.drain, &r.steady, &r.io, &r.rss]
            .into_iter()
            .chain(r.steady_capacity.as_ref().map(|(a, _)| a))
            .chain(r.auto.as_ref())
        {
            all_checks.add(a.check);
            left += a.left_in_queues;
        }
        for c in [
            &r.ceiling,
            &r.ceiling_unbuffered,
            &r.steady_direct,
            &r.io_direct,
        ] {
            all_checks.add(c.check);
        }
        for (c, a) in &r.sweep {
            all_checks.add(c.check);
            all_checks.add(a.check);
            left += a.left_in_queues;
        }
        if let Some((_, check)) = r.spawn {
            all_checks.add(check);
        }
    }
    let ceiling_failures: usize = rounds
        .iter()
        .map(|r| {
            r.ceiling.failures
                + r.ceiling_unbuffered.failures
                + r.io_direct.failures
                + r.steady_direct.failures
                + r.sweep.iter().map(|s| s.0.failures).sum::<usize>()
        })
        .sum();
    let _ = writeln!(
        t,
        "| No lost or duplicate message | {} lost, {} duplicate, {} unknown over all runs; {left} left in queues; {ceiling_failures} failed direct requests | {} |",
        all_checks.lost,
        all_checks.duplicates,
        all_checks.foreign,
        met(all_checks.clean() && left == 0 && ceiling_failures == 0)
    );
}
