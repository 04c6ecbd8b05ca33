//! What the bench reads from /proc: CPU ticks and RSS of a process, the php-fpm pool, RabbitMQ
//! and the whole machine.

use std::time::Instant;

use anyhow::Context as _;

struct ProcStat {
    ppid: u32,
    utime: u64,
    stime: u64,
}

/// Parent, utime and stime (clock ticks) from /proc/<pid>/stat.
fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name start at field 3 (state): ppid is 4, utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(ProcStat {
        ppid: fields.get(1)?.parse().ok()?,
        utime: fields.get(11)?.parse().ok()?,
        stime: fields.get(12)?.parse().ok()?,
    })
}

/// CPU ticks used so far by the php-fpm pool (master + children), RabbitMQ and the bench.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    pub fpm: u64,
    pub rabbitmq: u64,
    pub bench: u64,
    /// user + nice + system ticks of the whole machine (/proc/stat).
    pub busy: u64,
    pub at: Instant,
}

impl CpuSnapshot {
    /// CPU cores used on average since `before` by processes that are not part of the bench
    /// (not the agent, php-fpm, RabbitMQ or the bench itself): another workload on the machine.
    pub fn background_cores(&self, before: &CpuSnapshot, agent_ticks: u64) -> f64 {
        let ours = (self.fpm + self.rabbitmq + self.bench + agent_ticks)
            .saturating_sub(before.fpm + before.rabbitmq + before.bench);
        let other = self.busy.saturating_sub(before.busy).saturating_sub(ours);
        other as f64 / clock_ticks_per_sec() / (self.at - before.at).as_secs_f64().max(1e-3)
    }
}

fn system_busy_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_owned();
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            Some(f.first()? + f.get(1)? + f.get(2)?)
        })
        .unwrap_or(0)
}

pub fn cpu_snapshot(fpm_master: u32) -> CpuSnapshot {
    let mut snap = CpuSnapshot {
        fpm: 0,
        rabbitmq: 0,
        bench: 0,
        busy: system_busy_ticks(),
        at: Instant::now(),
    };
    let total = |s: &ProcStat| s.utime + s.stime;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return snap;
    };
    for entry in dir.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(stat) = proc_stat(pid) else {
            continue;
        };
        if pid == fpm_master || stat.ppid == fpm_master {
            snap.fpm += total(&stat);
        } else if std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "beam.smp")
        {
            snap.rabbitmq += total(&stat);
        } else if pid == std::process::id() {
            snap.bench += total(&stat);
        }
    }
    snap
}

/// CPUs this process may use (the machine's load is a share of them).
pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

pub fn clock_ticks_per_sec() -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// (utime, stime) of `pid` in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<(u64, u64)> {
    proc_stat(pid)
        .map(|s| (s.utime, s.stime))
        .context("cannot read /proc/<agent pid>/stat")
}

/// Context switches (voluntary + involuntary) of all the threads of `pid` so far.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Peak resident set size (VmHWM) of `pid`, KiB.
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    Ok(line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?)
}
