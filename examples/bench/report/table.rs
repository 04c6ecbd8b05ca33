//! The results table: one function per row (rows 1 to 5 of the report).

use std::fmt::Write as _;

use super::{Summary, checks, fmt_check, med, ms};
use crate::args::Args;
use crate::records::Check;
use crate::results::{AgentResult, Round};

/// The whole table, header included; rows 3c/3d and 5 only when they ran.
pub fn results(args: &Args, s: &Summary) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| Scenario | msg/s | vs ceiling / bound | p50 | p99 | max | agent CPU µs/msg | agent peak RSS | lost/dup |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    ceiling(&mut t, args, s);
    ceiling_unbuffered(&mut t, s);
    drain(&mut t, args, s);
    steady(&mut t, args, s);
    steady_direct(&mut t, s);
    if !s.cap_runs.is_empty() {
        machine_load(&mut t, args, s);
        broker_alone(&mut t, s);
    }
    io_bound(&mut t, args, s);
    io_direct(&mut t, args, s);
    rss(&mut t, args, s);
    process_per_message(&mut t, args, s);
    auto_pools(&mut t, args, s);
    t
}

/// Row 1.
fn ceiling(t: &mut String, args: &Args, s: &Summary) {
    let (pool, ceiling) = (s.pool, s.ceiling);
    let conc = usize::from(pool) * 2;
    let _ = writeln!(
        t,
        "| 1. Ceiling: direct FastCGI, {conc} keep-alive conns, writes buffered like the agent's, {} req | {ceiling:.0} | 1.00 | | | | | | {} |",
        args.messages,
        fmt_check(checks(s.rounds, |r| r.ceiling.check))
    );
}

/// Row 1b.
fn ceiling_unbuffered(t: &mut String, s: &Summary) {
    let unbuffered = med(s.rounds, |r| r.ceiling_unbuffered.rate);
    let _ = writeln!(
        t,
        "| 1b. Ceiling without a write buffer: fastcgi-client on the bare socket, one send per FastCGI record | {unbuffered:.0} | {:.2} | | | | | | {} |",
        unbuffered / s.ceiling,
        fmt_check(checks(s.rounds, |r| r.ceiling_unbuffered.check))
    );
}

/// Rows 2, 2b and 2q.
fn drain(t: &mut String, args: &Args, s: &Summary) {
    let pool = s.pool;
    let label = format!(
        "2. Agent drain: {} msgs backlog, pool {pool}+{pool}",
        args.messages
    );
    drain_row(t, s, &label, |r| &r.drain);
    // Every round ran one drain per `--batches` value, in that order.
    for (i, batch_max) in args.batches.iter().enumerate() {
        let label = format!(
            "2b. The same drain, `batch_max = {batch_max}` (one FastCGI request per batch, each outcome streamed)"
        );
        drain_row(t, s, &label, |r| &r.drain_batches[i].1);
    }
    let label = "2q. The same drain on quorum queues (local node, one replica)";
    drain_row(t, s, label, |r| &r.drain_quorum);
}

/// One drain row: medians over the rounds of the run `run` picks from each round.
fn drain_row(t: &mut String, s: &Summary, label: &str, run: impl Fn(&Round) -> &AgentResult) {
    let rate = med(s.rounds, |r| run(r).rate);
    let _ = writeln!(
        t,
        "| {label} | {rate:.0} | {:.2} | | | | {:.1} | {:.1} MiB | {} |",
        rate / s.ceiling,
        med(s.rounds, |r| run(r).cpu_us_per_msg),
        med(s.rounds, |r| run(r).peak_rss_kib as f64) / 1024.0,
        fmt_check(checks(s.rounds, |r| run(r).check))
    );
}

/// Row 3.
fn steady(t: &mut String, args: &Args, s: &Summary) {
    let pool = s.pool;
    let steady_rate = med(s.rounds, |r| r.steady.offered_rate);
    let _ = writeln!(
        t,
        "| 3. Steady state: publish → handler start at {steady_rate:.0} msg/s ({:.0} % of ceiling), pool {pool}+{pool}, {:.0} samples | {steady_rate:.0} | {:.2} | {} | {} | {} | {:.1} | {:.1} MiB | {} |",
        args.steady_load * 100.0,
        s.lat(|l| l.samples as f64),
        steady_rate / s.ceiling,
        ms(s.lat(|l| l.p50_us)),
        ms(s.p99),
        ms(s.lat(|l| l.max_us)),
        med(s.rounds, |r| r.steady.cpu_us_per_msg),
        s.mib(|r| r.steady.peak_rss_kib),
        fmt_check(checks(s.rounds, |r| r.steady.check))
    );
}

/// Row 3b.
fn steady_direct(t: &mut String, s: &Summary) {
    let _ = writeln!(
        t,
        "| 3b. Baseline: direct FastCGI at the same rate, request → handler start | {:.0} | | {} | {} | {} | | | {} |",
        med(s.rounds, |r| r.steady_direct.rate),
        ms(s.dlat(|l| l.p50_us)),
        ms(s.d99),
        ms(s.dlat(|l| l.max_us)),
        fmt_check(checks(s.rounds, |r| r.steady_direct.check))
    );
}

/// Row 3c.
fn machine_load(t: &mut String, args: &Args, s: &Summary) {
    let (pool, cap_rate) = (s.pool, s.cap_rate);
    let _ = writeln!(
        t,
        "| 3c. Steady state at {cap_rate:.0} msg/s, aimed at {:.0} % machine load (measured: {:.0} % busy), pool {pool}+{pool} | {cap_rate:.0} | {:.2} | {} | {} | {} | {:.1} | {:.1} MiB | {} |",
        args.machine_load * 100.0,
        s.cap_busy * 100.0,
        cap_rate / s.ceiling,
        ms(s.cap_lat(|x| x.p50_us)),
        ms(s.cap_lat(|x| x.p99_us)),
        ms(s.cap_lat(|x| x.max_us)),
        med(&s.cap_runs, |a| a.cpu_us_per_msg),
        med(&s.cap_runs, |a| a.peak_rss_kib as f64) / 1024.0,
        fmt_check(checks(&s.cap_runs, |a| a.check))
    );
}

/// Row 3d.
fn broker_alone(t: &mut String, s: &Summary) {
    let cap_rate = s.cap_rate;
    let _ = writeln!(
        t,
        "| 3d. Baseline: RabbitMQ alone at the rate of 3c, publish → delivery to a bare consumer | {cap_rate:.0} | | {} | {} | {} | | | |",
        ms(s.cap_blat(|x| x.p50_us)),
        ms(s.cap_blat(|x| x.p99_us)),
        ms(s.cap_blat(|x| x.max_us)),
    );
}

/// Row 4.
fn io_bound(t: &mut String, args: &Args, s: &Summary) {
    let (io, io_bound) = (s.io, s.io_bound);
    let _ = writeln!(
        t,
        "| 4. I/O-bound: handler sleeps {} ms, {} msgs, pool {}+{} | {io:.0} | {:.3} of {io_bound:.0} | | | | {:.1} | {:.1} MiB | {} |",
        args.io_sleep_ms,
        args.io_messages,
        args.io_pool,
        args.io_pool,
        io / io_bound,
        med(s.rounds, |r| r.io.cpu_us_per_msg),
        s.mib(|r| r.io.peak_rss_kib),
        fmt_check(checks(s.rounds, |r| r.io.check))
    );
}

/// Row 4a.
fn io_direct(t: &mut String, args: &Args, s: &Summary) {
    let io_bound = s.io_bound;
    let io_direct = med(s.rounds, |r| r.io_direct.rate);
    let _ = writeln!(
        t,
        "| 4a. Direct FastCGI with the same handler sleep, {} keep-alive conns | {io_direct:.0} | {:.3} of {io_bound:.0} | | | | | | {} |",
        usize::from(args.io_pool) * 2,
        io_direct / io_bound,
        fmt_check(checks(s.rounds, |r| r.io_direct.check))
    );
}

/// Row 4b.
fn rss(t: &mut String, args: &Args, s: &Summary) {
    let (rss_mib, rss_in_flight) = (s.rss_mib, s.rss_in_flight);
    let _ = writeln!(
        t,
        "| 4b. RSS: as 4 with prefetch_per_worker {}, {} msgs, up to {rss_in_flight:.0} held by the agent | {:.0} | | | | | {:.1} | {rss_mib:.1} MiB | {} |",
        args.rss_in_flight.div_ceil(usize::from(args.io_pool) * 2),
        args.rss_messages,
        med(s.rounds, |r| r.rss.rate),
        med(s.rounds, |r| r.rss.cpu_us_per_msg),
        fmt_check(checks(s.rounds, |r| r.rss.check))
    );
}

/// Row 5, when it ran.
fn process_per_message(t: &mut String, args: &Args, s: &Summary) {
    let spawn_runs: Vec<(f64, Check)> = s.rounds.iter().filter_map(|r| r.spawn).collect();
    if spawn_runs.is_empty() {
        return;
    }
    let rate = med(&spawn_runs, |(r, _)| *r);
    let _ = writeln!(
        t,
        "| 5. Reference: one `php` process per message (rabbitmq-cli-consumer model), {} msgs, a consumer per subject, prefetch 1 | {rate:.0} | | | | | | | {} |",
        args.spawn_messages,
        fmt_check(checks(&spawn_runs, |(_, c)| *c))
    );
}

/// Row 6a, when the sweep ran: the sweep's drain by auto pools, against its best fixed pool.
fn auto_pools(t: &mut String, args: &Args, s: &Summary) {
    let Some(a) = &s.auto else {
        return;
    };
    let _ = writeln!(
        t,
        "| 6a. Auto pools: drain of {} msgs (as the sweep), `pool_mode = \"auto\"` 1..={} per subject, FPM status page read; vs the sweep's best fixed pool {}+{} ({:.0} msg/s) | {:.0} | {:.2} of best fixed | | | | {:.1} | {:.1} MiB | {} |",
        args.sweep_messages,
        a.max,
        a.best_pool,
        a.best_pool,
        a.best,
        a.agent,
        a.ratio(),
        a.cpu,
        a.rss_mib,
        fmt_check(a.check)
    );
}
