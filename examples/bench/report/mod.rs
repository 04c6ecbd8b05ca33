//! The report: medians over the rounds, rendered as the terminal table, RESULTS.md and
//! throughput.svg. `Summary` holds the medians that more than one section reads; each table
//! row and each section is its own function (`table`, `sections`, `text`, `svg`).

mod machine;
mod sections;
mod svg;
mod table;
mod text;

use std::path::Path;
use std::time::Duration;

use crate::args::Args;
use crate::records::{Check, Latency};
use crate::results::{AgentResult, Report, Round};

/// What the bench prints and writes.
pub struct Rendered {
    pub terminal: String,
    pub markdown: String,
    pub svg: String,
}

pub fn render(args: &Args, report: &Report, total: Duration, php_fpm: &Path) -> Rendered {
    let m = machine::machine(args, php_fpm);
    let s = Summary::new(args, report);
    let parts = text::Parts {
        table: table::results(args, &s),
        sweep_table: sections::sweep_table(&s.sweep, s.auto.as_ref()),
        budget: sections::cpu_budget(args, &s),
        targets: sections::targets(args, &s),
        cycle_note: sections::cycle_note(args, s.rounds),
        background_note: sections::background_note(s.rounds),
    };
    Rendered {
        terminal: text::terminal(args, &s, &m, &parts, total),
        markdown: text::markdown(args, &s, &m, &parts, total),
        svg: svg::chart(&s.sweep, args, &m),
    }
}

/// Medians of one sweep point over the rounds.
pub struct SweepPoint {
    /// Pool size per subject.
    pub pool: u16,
    /// Ceiling, req/s.
    pub ceiling: f64,
    /// Agent drain, msg/s.
    pub agent: f64,
    /// Agent CPU µs/msg.
    pub cpu: f64,
    /// Lost/duplicate ids of the ceiling and the drain, over all rounds.
    pub check: Check,
}

/// The drain by auto pools (row 6a) against the best fixed pool of the sweep, medians.
pub struct AutoPoint {
    /// `max_pool_size` per subject (`min_pool_size` is 1).
    pub max: u16,
    /// Drain, msg/s.
    pub agent: f64,
    /// Agent CPU µs/msg.
    pub cpu: f64,
    /// Agent peak RSS, MiB.
    pub rss_mib: f64,
    /// Lost/duplicate ids over all rounds.
    pub check: Check,
    /// The sweep point with the fastest drain: pool per subject and msg/s.
    pub best_pool: u16,
    pub best: f64,
}

impl AutoPoint {
    fn new(rounds: &[Round], sweep: &[SweepPoint]) -> Option<Self> {
        let runs: Vec<&AgentResult> = rounds.iter().filter_map(|r| r.auto.as_ref()).collect();
        let best = sweep.iter().max_by(|a, b| a.agent.total_cmp(&b.agent))?;
        (!runs.is_empty()).then(|| Self {
            max: sweep.iter().map(|p| p.pool).max().unwrap_or(1),
            agent: med(&runs, |a| a.rate),
            cpu: med(&runs, |a| a.cpu_us_per_msg),
            rss_mib: med(&runs, |a| a.peak_rss_kib as f64) / 1024.0,
            check: checks(&runs, |a| a.check),
            best_pool: best.pool,
            best: best.agent,
        })
    }

    /// Auto pools' drain over the best fixed pool's.
    pub fn ratio(&self) -> f64 {
        self.agent / self.best
    }
}

/// The medians over the rounds that more than one section of the report reads.
struct Summary<'a> {
    rounds: &'a [Round],
    /// Pool size per subject of the main runs.
    pool: u16,
    /// 1000 / handler sleep × I/O-bound concurrency: the I/O-bound run's bound, msg/s.
    io_bound: f64,
    ceiling: f64,
    drain: f64,
    drain_cpu: f64,
    /// Steady state (row 3): publish → handler start p99 and the direct FastCGI p99 (3b).
    p99: f64,
    d99: f64,
    io: f64,
    rss_mib: f64,
    rss_in_flight: f64,
    /// Row 3c's runs and row 3d's latencies (empty with `--machine-load 0`).
    cap_runs: Vec<&'a AgentResult>,
    cap_broker: Vec<Latency>,
    cap_rate: f64,
    cap_busy: f64,
    sweep: Vec<SweepPoint>,
    /// Row 6a, when the sweep ran.
    auto: Option<AutoPoint>,
}

impl<'a> Summary<'a> {
    fn new(args: &Args, report: &'a Report) -> Self {
        let rounds = report.rounds.as_slice();
        let cap_runs: Vec<&AgentResult> = rounds
            .iter()
            .filter_map(|r| r.steady_capacity.as_ref().map(|(a, _)| a))
            .collect();
        let sweep = sweep_points(rounds);
        Self {
            auto: AutoPoint::new(rounds, &sweep),
            sweep,
            rounds,
            pool: args.pool,
            io_bound: (usize::from(args.io_pool) * 2) as f64 * 1000.0 / args.io_sleep_ms as f64,
            ceiling: med(rounds, |r| r.ceiling.rate),
            drain: med(rounds, |r| r.drain.rate),
            drain_cpu: med(rounds, |r| r.drain.cpu_us_per_msg),
            p99: med(rounds, |r| r.steady.latency.unwrap_or_default().p99_us),
            d99: med(rounds, |r| {
                r.steady_direct.latency.unwrap_or_default().p99_us
            }),
            io: med(rounds, |r| r.io.rate),
            rss_mib: med(rounds, |r| r.rss.peak_rss_kib as f64) / 1024.0,
            rss_in_flight: med(rounds, |r| r.rss.max_in_flight as f64),
            cap_rate: med(&cap_runs, |a| a.offered_rate),
            cap_busy: med(&cap_runs, |a| a.machine_busy),
            cap_runs,
            cap_broker: rounds
                .iter()
                .filter_map(|r| r.steady_capacity.as_ref().map(|(_, l)| *l))
                .collect(),
        }
    }

    /// Median over the rounds of `f` of the steady-state (row 3) latency.
    fn lat(&self, f: fn(&Latency) -> f64) -> f64 {
        med(self.rounds, |r| f(&r.steady.latency.unwrap_or_default()))
    }

    /// The same of the direct FastCGI run at that rate (row 3b).
    fn dlat(&self, f: fn(&Latency) -> f64) -> f64 {
        med(self.rounds, |r| {
            f(&r.steady_direct.latency.unwrap_or_default())
        })
    }

    /// Median of `f` of the latency of the runs at machine load (row 3c).
    fn cap_lat(&self, f: fn(&Latency) -> f64) -> f64 {
        med(&self.cap_runs, |a| f(&a.latency.unwrap_or_default()))
    }

    /// The same of RabbitMQ alone at that rate (row 3d).
    fn cap_blat(&self, f: fn(&Latency) -> f64) -> f64 {
        med(&self.cap_broker, f)
    }

    /// Median over the rounds of `f(round)` KiB, in MiB.
    fn mib(&self, f: fn(&Round) -> u64) -> f64 {
        med(self.rounds, |r| f(r) as f64) / 1024.0
    }
}

/// Sweep medians, one point per pool size.
fn sweep_points(rounds: &[Round]) -> Vec<SweepPoint> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    (0..first.sweep.len())
        .map(|i| {
            let mut check = checks(rounds, |r| r.sweep[i].1.check);
            check.add(checks(rounds, |r| r.sweep[i].0.check));
            SweepPoint {
                pool: first.sweep[i].1.pool,
                ceiling: med(rounds, |r| r.sweep[i].0.rate),
                agent: med(rounds, |r| r.sweep[i].1.rate),
                cpu: med(rounds, |r| r.sweep[i].1.cpu_us_per_msg),
                check,
            }
        })
        .collect()
}

pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn med<T>(items: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(items.iter().map(f).collect())
}

fn checks<T>(items: &[T], f: impl Fn(&T) -> Check) -> Check {
    let mut total = Check::default();
    for item in items {
        total.add(f(item));
    }
    total
}

fn fmt_check(c: Check) -> String {
    if c.foreign > 0 {
        format!("{}/{} (+{} unknown)", c.lost, c.duplicates, c.foreign)
    } else {
        format!("{}/{}", c.lost, c.duplicates)
    }
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1e3)
}

fn met(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**not met**" }
}
