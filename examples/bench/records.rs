//! What the handlers recorded ("<index> <start µs>" per message, one file per FPM child): which
//! ids arrived, lost or twice, and when.

use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use crate::bench::WARMUP_SECS;

/// Incrementally reads `<records>/<run>.<pid>.log` files ("<index> <start µs>" lines).
pub struct Records {
    dir: PathBuf,
    prefix: String,
    offsets: HashMap<PathBuf, u64>,
    /// (message index, handler start in µs since the epoch)
    pub entries: Vec<(u32, u64)>,
    /// Handler starts per file, i.e. per FPM child.
    per_child: HashMap<PathBuf, Vec<u64>>,
    /// Lines that were not "<index> <µs>" (never expected).
    malformed: usize,
}

impl Records {
    pub fn new(dir: &Path, run: &str) -> Self {
        Self {
            dir: dir.to_owned(),
            prefix: format!("{run}."),
            offsets: HashMap::new(),
            entries: Vec::new(),
            per_child: HashMap::new(),
            malformed: 0,
        }
    }

    /// Reads what was appended since the last call; returns the number of records so far.
    pub fn poll(&mut self) -> anyhow::Result<usize> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !name.starts_with(&self.prefix) || !name.ends_with(".log") {
                continue;
            }
            let offset = self.offsets.entry(path.clone()).or_insert(0);
            let mut file = std::fs::File::open(&path)?;
            file.seek(SeekFrom::Start(*offset))?;
            let mut buf = Vec::new();
            file.read_to_end(&mut buf)?;
            // Only complete lines; a line being written is read next time.
            let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            *offset += u64::try_from(end + 1)?;
            for line in buf[..end].split(|b| *b == b'\n') {
                let parsed = std::str::from_utf8(line).ok().and_then(|l| {
                    let (id, t) = l.split_once(' ')?;
                    Some((id.parse::<u32>().ok()?, t.trim().parse::<u64>().ok()?))
                });
                match parsed {
                    Some(entry) => {
                        self.entries.push(entry);
                        self.per_child
                            .entry(path.clone())
                            .or_default()
                            .push(entry.1);
                    }
                    None => self.malformed += 1,
                }
            }
        }
        Ok(self.entries.len())
    }

    /// Lost, duplicate and unknown ids compared with the published indexes 0..n.
    pub fn check(&self, n: usize) -> Check {
        let mut seen = vec![0u32; n];
        let mut foreign = self.malformed;
        for (id, _) in &self.entries {
            match seen.get_mut(*id as usize) {
                Some(count) => *count += 1,
                None => foreign += 1,
            }
        }
        Check {
            lost: seen.iter().filter(|c| **c == 0).count(),
            duplicates: seen.iter().map(|c| c.saturating_sub(1) as usize).sum(),
            foreign,
        }
    }

    /// Time between consecutive handler starts on the same FPM child (µs), over the middle
    /// 80 % of the run (start and end are ramps): handler time + turnaround of the client.
    pub fn child_cycles(&self) -> Vec<i64> {
        let (first, last) = self.first_last();
        let span = last.saturating_sub(first);
        let (from, to) = (first + span / 10, last - span / 10);
        let mut out = Vec::new();
        for starts in self.per_child.values() {
            let mut starts = starts.clone();
            starts.sort_unstable();
            for w in starts.windows(2) {
                if w[0] >= from && w[1] <= to {
                    out.push(w[1] as i64 - w[0] as i64);
                }
            }
        }
        out
    }

    /// Handler start − send time (`sent_us[index]`) of every message sent after the warm-up.
    pub fn latency_after_warm_up(&self, sent_us: &[u64]) -> Latency {
        let warm_end = sent_us.first().copied().unwrap_or(0) + WARMUP_SECS * 1_000_000;
        latency_of(
            self.entries
                .iter()
                .filter_map(|(i, t)| {
                    let p = *sent_us.get(*i as usize)?;
                    (p >= warm_end).then(|| *t as i64 - p as i64)
                })
                .collect(),
        )
    }

    pub fn first_last(&self) -> (u64, u64) {
        let first = self.entries.iter().map(|e| e.1).min().unwrap_or(0);
        let last = self.entries.iter().map(|e| e.1).max().unwrap_or(0);
        (first, last)
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Check {
    pub lost: usize,
    pub duplicates: usize,
    pub foreign: usize,
}

impl Check {
    pub fn add(&mut self, other: Check) {
        self.lost += other.lost;
        self.duplicates += other.duplicates;
        self.foreign += other.foreign;
    }
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.foreign == 0
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub samples: usize,
}

pub fn latency_of(mut samples: Vec<i64>) -> Latency {
    if samples.is_empty() {
        return Latency::default();
    }
    samples.sort_unstable();
    let n = samples.len();
    let rank = |q: f64| samples[((q * n as f64).ceil() as usize).clamp(1, n) - 1] as f64;
    Latency {
        p50_us: rank(0.50),
        p99_us: rank(0.99),
        max_us: samples[n - 1] as f64,
        samples: n,
    }
}
