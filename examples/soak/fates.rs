//! Every message's fate: what the handler recorded (one line per run, one file per FPM child)
//! and what the dead-letter queues held; the report.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Lane;
use crate::faults::{Event, Fault};
use crate::load::{Dead, DeadLetters, Kind, Publisher, Sent};
use crate::procs::Agent;

/// One run of the handler for a message (an `S` line).
#[derive(Debug, Clone)]
pub struct Run {
    pub attempt: u32,
    pub redelivered: bool,
    pub request: String,
    pub at_us: u64,
}

/// The handler's records, read incrementally.
pub struct Records {
    dir: PathBuf,
    offsets: HashMap<PathBuf, u64>,
    pub runs: HashMap<u64, Vec<Run>>,
    /// `A` lines: when the handler succeeded, per message.
    pub acks: HashMap<u64, Vec<u64>>,
    /// Messages of each request (a batch's entries share one).
    pub requests: HashMap<String, Vec<u64>>,
}

impl Records {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            offsets: HashMap::new(),
            runs: HashMap::new(),
            acks: HashMap::new(),
            requests: HashMap::new(),
        }
    }

    /// Reads the complete lines added since the last call.
    pub fn poll(&mut self) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let offset = self.offsets.get(&path).copied().unwrap_or(0);
            let mut file = std::fs::File::open(&path)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut text = String::new();
            file.read_to_string(&mut text)?;
            let Some(end) = text.rfind('\n') else {
                continue;
            };
            for line in text[..end].lines() {
                self.line(line);
            }
            self.offsets.insert(path, offset + end as u64 + 1);
        }
        Ok(())
    }

    fn line(&mut self, line: &str) {
        let f: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        match (f.first(), num(1)) {
            (Some(&"S"), Some(id)) if f.len() == 6 => {
                let run = Run {
                    attempt: num(2).unwrap_or(0) as u32,
                    redelivered: f[3] == "1",
                    request: f[4].to_owned(),
                    at_us: num(5).unwrap_or(0),
                };
                self.requests
                    .entry(run.request.clone())
                    .or_default()
                    .push(id);
                self.runs.entry(id).or_default().push(run);
            }
            (Some(&"A"), Some(id)) if f.len() == 3 => {
                self.acks.entry(id).or_default().push(num(2).unwrap_or(0));
            }
            _ => {}
        }
    }
}

/// Waits until every confirmed message was handled or dead-lettered, at most `timeout`;
/// returns how long it waited.
pub async fn wait_all_fates(
    records: &mut Records,
    sent: &Arc<Mutex<Vec<Sent>>>,
    dead: &DeadLetters,
    publisher: &Publisher,
    lanes: &[Lane],
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        if let Err(e) = records.poll() {
            eprintln!("  cannot read the records: {e:#}");
        }
        let reader_up = dead.connected();
        let dead: std::collections::HashSet<u64> = dead.snapshot().iter().map(|d| d.id).collect();
        let pending = sent
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                let i = *i as u64;
                s.confirmed == Some(true) && !records.acks.contains_key(&i) && !dead.contains(&i)
            })
            .count();
        if (pending == 0 && reader_up) || started.elapsed() >= timeout {
            return started.elapsed().min(timeout);
        }
        if said.elapsed() >= Duration::from_secs(10) {
            let mut queued = 0;
            for (broker, q) in Publisher::queues(lanes) {
                if !q.ends_with(".dead") {
                    queued += publisher
                        .ready_count(broker, &q)
                        .await
                        .map_or(0, |(n, _)| n);
                }
            }
            eprintln!(
                "  draining: {pending} messages without a fate yet, {queued} ready in the queues"
            );
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A message handled more than once, and why.
struct Twice {
    id: u64,
    lane: usize,
    kind: Kind,
    times: usize,
    cause: String,
}

/// One message with a bad fate (lost, or an innocent dead-lettered).
struct Bad {
    id: u64,
    lane: usize,
    kind: Kind,
    detail: String,
}

#[derive(Default, Clone)]
struct LaneCounts {
    sent: usize,
    handled: usize,
    twice: usize,
    lost: usize,
    dead_expected: usize,
    innocents: usize,
}

struct Window {
    count: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    rss_kib: Option<u64>,
}

pub struct Report {
    unconfirmed: usize,
    /// Of those: the broker nacked, or the publish or its confirm failed (connection lost).
    unconfirmed_failed: usize,
    /// Per lane, and the first and last publish time of an unconfirmed message (s from start).
    unconfirmed_lanes: Vec<usize>,
    unconfirmed_span: Option<(f64, f64)>,
    started_us: u64,
    lanes: Vec<(String, LaneCounts)>,
    total: LaneCounts,
    twice: Vec<Twice>,
    lost: Vec<Bad>,
    innocents: Vec<Bad>,
    dead_by_kind: BTreeMap<(Kind, String), usize>,
    dead_twice: usize,
    windows: Vec<Window>,
    window: Duration,
    agents: Vec<String>,
    sent_by_kind: BTreeMap<Kind, usize>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        sent: &[Sent],
        records: &Records,
        dead: &[Dead],
        events: &[Event],
        agents: &[Agent],
        lanes: &[Lane],
        started_us: u64,
        duration: Duration,
        window: Duration,
    ) -> Self {
        let mut dead_of: HashMap<u64, Vec<&Dead>> = HashMap::new();
        for d in dead {
            dead_of.entry(d.id).or_default().push(d);
        }
        let mut per_lane = vec![LaneCounts::default(); lanes.len()];
        let mut report = Self {
            unconfirmed: 0,
            unconfirmed_failed: 0,
            unconfirmed_lanes: vec![0; lanes.len()],
            unconfirmed_span: None,
            started_us,
            lanes: Vec::new(),
            total: LaneCounts::default(),
            twice: Vec::new(),
            lost: Vec::new(),
            innocents: Vec::new(),
            dead_by_kind: BTreeMap::new(),
            dead_twice: 0,
            windows: Vec::new(),
            window,
            agents: Vec::new(),
            sent_by_kind: BTreeMap::new(),
        };
        let window_us = window.as_micros().max(1) as u64;
        // The last publishes fall at the very end of DURATION: they count in the last window.
        let last_window = (duration.as_micros() as u64).div_ceil(window_us).max(1) - 1;
        let mut latencies: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (i, s) in sent.iter().enumerate() {
            let id = i as u64;
            if s.confirmed != Some(true) {
                report.unconfirmed += 1;
                report.unconfirmed_failed += usize::from(s.confirmed == Some(false));
                report.unconfirmed_lanes[s.lane] += 1;
                let at = s.published_us.saturating_sub(started_us) as f64 / 1e6;
                report.unconfirmed_span = Some(match report.unconfirmed_span {
                    None => (at, at),
                    Some((a, b)) => (a.min(at), b.max(at)),
                });
                continue;
            }
            *report.sent_by_kind.entry(s.kind).or_default() += 1;
            let lane = &mut per_lane[s.lane];
            lane.sent += 1;
            let runs = records.runs.get(&id).map_or(&[][..], Vec::as_slice);
            let acks = records.acks.get(&id).map_or(&[][..], Vec::as_slice);
            let deads = dead_of.get(&id).map_or(&[][..], Vec::as_slice);
            if !acks.is_empty() {
                lane.handled += 1;
                if s.kind == Kind::Ok {
                    let first = acks.iter().min().copied().unwrap_or(0);
                    latencies
                        .entry(
                            (s.published_us.saturating_sub(started_us) / window_us)
                                .min(last_window),
                        )
                        .or_default()
                        .push(first.saturating_sub(s.published_us));
                }
            }
            if acks.len() >= 2 {
                lane.twice += 1;
                report.twice.push(Twice {
                    id,
                    lane: s.lane,
                    kind: s.kind,
                    times: acks.len(),
                    cause: twice_cause(acks, runs, records, sent, events, &lanes[s.lane]),
                });
            }
            if deads.len() >= 2 {
                report.dead_twice += 1;
            }
            for d in deads {
                if s.kind.innocent() {
                    lane.innocents += 1;
                    report.innocents.push(Bad {
                        id,
                        lane: s.lane,
                        kind: s.kind,
                        detail: format!("reason {}; runs: {}", d.reason, runs_text(runs)),
                    });
                } else {
                    lane.dead_expected += 1;
                    *report
                        .dead_by_kind
                        .entry((s.kind, d.reason.clone()))
                        .or_default() += 1;
                }
            }
            if acks.is_empty() && deads.is_empty() {
                lane.lost += 1;
                report.lost.push(Bad {
                    id,
                    lane: s.lane,
                    kind: s.kind,
                    detail: format!("runs: {}", runs_text(runs)),
                });
            }
        }
        for (lane, counts) in lanes.iter().zip(&per_lane) {
            let t = &mut report.total;
            t.sent += counts.sent;
            t.handled += counts.handled;
            t.twice += counts.twice;
            t.lost += counts.lost;
            t.dead_expected += counts.dead_expected;
            t.innocents += counts.innocents;
            report
                .lanes
                .push((format!("{} ({})", lane.label, lane.queue), counts.clone()));
        }
        for (w, mut lat) in latencies {
            lat.sort_unstable();
            let pick = |q: f64| {
                lat[((lat.len() as f64 * q).ceil() as usize)
                    .saturating_sub(1)
                    .min(lat.len() - 1)] as f64
                    / 1e3
            };
            let (from, to) = (started_us + w * window_us, started_us + (w + 1) * window_us);
            let rss = agents
                .iter()
                .flat_map(|a| a.rss.iter())
                .filter(|(at, _)| *at >= from && *at < to)
                .map(|(_, kib)| *kib)
                .max();
            while report.windows.len() < w as usize {
                report.windows.push(Window {
                    count: 0,
                    p50_ms: 0.0,
                    p99_ms: 0.0,
                    max_ms: 0.0,
                    rss_kib: None,
                });
            }
            report.windows.push(Window {
                count: lat.len(),
                p50_ms: pick(0.5),
                p99_ms: pick(0.99),
                max_ms: pick(1.0),
                rss_kib: rss,
            });
        }
        for agent in agents {
            let first = agent.rss.first().map_or(0, |r| r.1);
            let last = agent.rss.last().map_or(0, |r| r.1);
            let max = agent.rss.iter().map(|r| r.1).max().unwrap_or(0);
            let mut line = format!(
                "agent {}: RSS {:.1} MiB at start, {:.1} MiB at end, {:.1} MiB at most; \
                 {} processes (1 + {} restarts after kill -9); poison dead-letters logged: {}",
                agent.name,
                first as f64 / 1024.0,
                last as f64 / 1024.0,
                max as f64 / 1024.0,
                agent.starts,
                agent.starts.saturating_sub(1),
                agent.log_count("reason=poison"),
            );
            for exit in &agent.unexpected_exits {
                let _ = write!(line, "; {exit}");
            }
            report.agents.push(line);
        }
        report
    }

    pub fn lost(&self) -> usize {
        self.total.lost
    }

    pub fn innocents(&self) -> usize {
        self.total.innocents
    }

    pub fn render(&self, events: &[Event], exits: &[String]) -> String {
        let mut o = String::new();
        let t = &self.total;
        let _ = writeln!(
            o,
            "sent {} (confirmed by the broker; {} unconfirmed, not counted)",
            t.sent, self.unconfirmed
        );
        if let Some((from, to)) = self.unconfirmed_span {
            let lanes: Vec<String> = self
                .unconfirmed_lanes
                .iter()
                .zip(&self.lanes)
                .filter(|(n, _)| **n > 0)
                .map(|(n, (name, _))| format!("{n} {}", name.split(' ').next().unwrap_or("")))
                .collect();
            let _ = writeln!(
                o,
                "  unconfirmed: {} nacked or failed (connection lost), {} without an answer; published {from:.1} s to {to:.1} s after the start; {}",
                self.unconfirmed_failed,
                self.unconfirmed - self.unconfirmed_failed,
                lanes.join(", ")
            );
        }
        let kinds: Vec<String> = self
            .sent_by_kind
            .iter()
            .map(|(k, n)| format!("{} {n}", k.name()))
            .collect();
        let _ = writeln!(o, "  by kind: {}", kinds.join(", "));
        let _ = writeln!(o, "handled {}", t.handled);
        let _ = writeln!(o, "lost {}   (must be 0)", t.lost);
        let _ = writeln!(o, "handled twice {}", t.twice);
        let mut causes: BTreeMap<&str, usize> = BTreeMap::new();
        for d in &self.twice {
            *causes
                .entry(d.cause.split(':').next().unwrap_or(""))
                .or_default() += 1;
        }
        for (cause, n) in &causes {
            let _ = writeln!(o, "  {n:>5}  {cause}");
        }
        let _ = writeln!(o, "dead-lettered innocents {}   (must be 0)", t.innocents);
        let _ = writeln!(o, "dead-lettered as expected {}", t.dead_expected);
        for ((kind, reason), n) in &self.dead_by_kind {
            let _ = writeln!(o, "  {n:>5}  {} ({reason})", kind.name());
        }
        if self.dead_twice > 0 {
            let _ = writeln!(o, "dead-lettered twice {}", self.dead_twice);
        }
        let _ = writeln!(o, "\nper lane:");
        let _ = writeln!(
            o,
            "  {:<48} {:>7} {:>7} {:>5} {:>5} {:>6} {:>9}",
            "lane (queue)", "sent", "handled", "lost", "twice", "dead", "innocents"
        );
        for (name, c) in &self.lanes {
            let _ = writeln!(
                o,
                "  {name:<48} {:>7} {:>7} {:>5} {:>5} {:>6} {:>9}",
                c.sent, c.handled, c.lost, c.twice, c.dead_expected, c.innocents
            );
        }
        let _ = writeln!(o);
        for a in &self.agents {
            let _ = writeln!(o, "{a}");
        }
        for e in exits {
            let _ = writeln!(o, "{e}");
        }
        let _ = writeln!(
            o,
            "\nlatency publish -> handled (kind ok, first success), per window of {} s by publish time:",
            self.window.as_secs()
        );
        let _ = writeln!(
            o,
            "  {:>7} {:>7} {:>9} {:>9} {:>9} {:>12}",
            "window", "msgs", "p50 ms", "p99 ms", "max ms", "agent RSS max"
        );
        for (i, w) in self.windows.iter().enumerate() {
            let _ = writeln!(
                o,
                "  {:>7} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>12}",
                i + 1,
                w.count,
                w.p50_ms,
                w.p99_ms,
                w.max_ms,
                w.rss_kib
                    .map_or_else(|| "-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
            );
        }
        let mut by_fault: BTreeMap<Fault, (usize, usize)> = BTreeMap::new();
        for e in events {
            let c = by_fault.entry(e.fault).or_default();
            c.0 += 1;
            c.1 += usize::from(!e.ok);
        }
        let _ = writeln!(o, "\nfaults injected: {}", events.len());
        for (fault, (n, failed)) in &by_fault {
            let _ = writeln!(
                o,
                "  {n:>4}  {}{}",
                fault.name(),
                if *failed > 0 {
                    format!(" ({failed} failed to inject)")
                } else {
                    String::new()
                }
            );
        }
        for e in events.iter().filter(|e| !e.ok) {
            let _ = writeln!(o, "    {} on {}: {}", e.fault.name(), e.target, e.note);
        }
        for e in events
            .iter()
            .filter(|e| e.ok && e.fault == Fault::ClusterNode)
        {
            let _ = writeln!(
                o,
                "    at {:.0} s: {}: {}",
                e.at_us.saturating_sub(self.started_us) as f64 / 1e6,
                e.target,
                e.note
            );
        }
        for (title, list) in [("lost", &self.lost), ("innocents", &self.innocents)] {
            if !list.is_empty() {
                let _ = writeln!(o, "\n{title} (first 20):");
                for b in list.iter().take(20) {
                    let _ = writeln!(
                        o,
                        "  id {} lane {} kind {}: {}",
                        b.id,
                        self.lanes[b.lane].0,
                        b.kind.name(),
                        b.detail
                    );
                }
            }
        }
        if !self.twice.is_empty() {
            let _ = writeln!(o, "\nhandled twice (first 20):");
            for d in self.twice.iter().take(20) {
                let _ = writeln!(
                    o,
                    "  id {} lane {} kind {} x{}: {}",
                    d.id,
                    self.lanes[d.lane].0,
                    d.kind.name(),
                    d.times,
                    d.cause
                );
            }
        }
        o
    }
}

fn runs_text(runs: &[Run]) -> String {
    if runs.is_empty() {
        return "never started".into();
    }
    runs.iter()
        .map(|r| {
            format!(
                "attempt {}{}",
                r.attempt,
                if r.redelivered { " redelivered" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a message succeeded twice: the fault that came between its first success and its next
/// run (the outcome line or the ack was lost with it), or a batch broken by a neighbour.
fn twice_cause(
    acks: &[u64],
    runs: &[Run],
    records: &Records,
    sent: &[Sent],
    events: &[Event],
    lane: &Lane,
) -> String {
    let mut acks = acks.to_vec();
    acks.sort_unstable();
    let first = acks[0];
    let mut runs = runs.to_vec();
    runs.sort_by_key(|r| r.at_us);
    let Some(first_run) = runs.iter().rev().find(|r| r.at_us <= first) else {
        return "unknown: no run recorded before the success".into();
    };
    let Some(next) = runs.iter().find(|r| r.at_us > first) else {
        return "unknown: no later run recorded".into();
    };
    let agent = format!("agent {}", ["a", "b"][lane.agent]);
    let fault = events.iter().find(|e| {
        e.fault.can_duplicate()
            && e.end_us >= first
            && e.at_us <= next.at_us
            && (e.target == agent
                || e.target == "php-fpm"
                || (e.fault == Fault::ClusterNode && lane.broker == 1))
    });
    let again = format!(
        "run again as attempt {}{}",
        next.attempt,
        if next.redelivered {
            " (redelivered)"
        } else {
            ""
        }
    );
    if let Some(e) = fault {
        let what = match e.fault {
            Fault::AgentKill => "agent crash (kill -9) before the ack",
            Fault::Connections => "broker connection closed before the ack",
            Fault::FpmChildren => "lost outcome: FPM child killed before its reply was read",
            Fault::FpmStop => "lost outcome: FPM stopped before its reply was read",
            Fault::ClusterNode => "cluster node killed (kill -9) before the ack",
            _ => "reload (SIGHUP) before the ack",
        };
        return format!("{what}: {again}");
    }
    let neighbours: Vec<&str> = records
        .requests
        .get(&first_run.request)
        .into_iter()
        .flatten()
        .filter_map(|id| sent.get(*id as usize))
        .filter(|s| !s.kind.innocent())
        .map(|s| s.kind.name())
        .collect();
    if !neighbours.is_empty() {
        return format!(
            "lost outcome in a batch broken by a neighbour ({}): {again}",
            neighbours.join(", ")
        );
    }
    format!("unknown (no fault between the two runs): {again}")
}
