//! Crash-loop protection (poison-pill detection, after Sidekiq Pro's): a message that was in
//! flight each time the agent process died `agent.poison_after` times is dead-lettered with
//! reason `poison` on its next delivery, before FPM sees it again.
//!
//! The agent keeps a journal of the messages it handles (see [`journal`] for the file): a
//! [`Record::Start`] (or [`Record::Restart`] for a redelivery) before FPM is called, a
//! [`Record::Done`] after the message is settled. At start-up, every key started but not done is
//! one the process died with: its crash count goes up by one. A clean stop (SIGTERM drain,
//! SIGQUIT, a fatal stop) forgets what was in flight, so only a death counts.
//!
//! A count matters only for a *redelivery* (`redelivered` set by the broker): a fresh delivery of
//! the same key (a retry copy, a replayed dead letter, a publisher reusing an id) starts over
//! from zero. This module is the pure part: the record format, the replay and the decision.
//!
//! Invariant: no I/O and no clock here; [`journal`] owns the file and the time.

pub mod journal;

use std::borrow::Cow;
use std::collections::HashMap;

use lapin::types::{AMQPValue, FieldTable};
use sha2::{Digest, Sha256};

use crate::outcome::Verdict;

/// Crash counts older than this (seconds since the last crash) are forgotten.
pub const EXPIRY_SECS: u64 = 7 * 24 * 3600;
/// Most crash counts kept; past it the oldest are forgotten.
pub const MAX_COUNTS: usize = 10_000;
/// Header nesting hashed into the key of a message without a `message_id`.
const KEY_DEPTH: usize = 32;

/// One line of the journal. A key never contains whitespace (see [`key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// `S <key>`: a fresh delivery is about to be handled; earlier crashes of the key are
    /// forgotten.
    Start(&'a str),
    /// `R <key>`: a redelivery is about to be handled; earlier crashes still count.
    Restart(&'a str),
    /// `D <key>`: the message was settled (or its worker stopped).
    Done(&'a str),
    /// `C <count> <unix secs of the last crash> <key>`: crashes carried over from earlier runs.
    Crashes {
        /// The message key.
        key: &'a str,
        /// How many crashes it was in flight for.
        count: u32,
        /// When the last one was detected (unix seconds).
        at: u64,
    },
}

impl<'a> Record<'a> {
    /// Appends the record as one line.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let (tag, key) = match self {
            Self::Start(key) => ("S ", key),
            Self::Restart(key) => ("R ", key),
            Self::Done(key) => ("D ", key),
            Self::Crashes { key, count, at } => {
                out.extend_from_slice(format!("C {count} {at} {key}\n").as_bytes());
                return;
            }
        };
        out.extend_from_slice(tag.as_bytes());
        out.extend_from_slice(key.as_bytes());
        out.push(b'\n');
    }

    /// Parses one line (without its newline). Comments (`#`), blank and damaged lines give `None`.
    #[must_use]
    pub(crate) fn parse(line: &'a str) -> Option<Self> {
        let (tag, rest) = line.split_once(' ')?;
        let key = || Some(rest).filter(|k| valid_key(k));
        match tag {
            "S" => key().map(Self::Start),
            "R" => key().map(Self::Restart),
            "D" => key().map(Self::Done),
            "C" => {
                let mut parts = rest.splitn(3, ' ');
                let count = parts.next()?.parse().ok()?;
                let at = parts.next()?.parse().ok()?;
                let key = parts.next().filter(|k| valid_key(k))?;
                Some(Self::Crashes { key, count, at })
            }
            _ => None,
        }
    }
}

/// Crashes a key was in flight for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crashes {
    /// How many.
    pub count: u32,
    /// Unix seconds when the last one was detected.
    pub at: u64,
}

/// What to do with a delivery that is about to be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// Handle it, beside others.
    Handle,
    /// A suspect: it was in flight during this many crashes (below the threshold). Handle it
    /// alone, with no other message in flight, so that if it kills the process again the next
    /// crash is counted against it only, not against its neighbours.
    Alone(u32),
    /// Dead-letter it as `poison`: it was in flight during this many crashes.
    Poison(u32),
}

/// The journal's meaning: crash counts and what is in flight now.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ledger {
    crashes: HashMap<Box<str>, Crashes>,
    /// Keys being handled, with how many deliveries of each (a publisher may reuse an id).
    in_flight: HashMap<Box<str>, u32>,
}

impl Ledger {
    /// Replays a journal's text.
    #[must_use]
    pub(crate) fn replay(text: &str) -> Self {
        let mut ledger = Self::default();
        for record in text.lines().filter_map(Record::parse) {
            ledger.apply(record);
        }
        ledger
    }

    /// Applies one record.
    pub(crate) fn apply(&mut self, record: Record<'_>) {
        match record {
            Record::Start(key) => {
                // Mostly empty: no key to hash then.
                if !self.crashes.is_empty() {
                    self.crashes.remove(key);
                }
                self.enter(key);
            }
            Record::Restart(key) => self.enter(key),
            Record::Done(key) => {
                // One lookup for the usual single delivery of a key; a reused id goes back in
                // with one less.
                if let Some(n) = self.in_flight.remove(key)
                    && n > 1
                {
                    self.in_flight.insert(key.into(), n - 1);
                }
            }
            Record::Crashes { key, count, at } => {
                if count > 0 {
                    self.crashes.insert(key.into(), Crashes { count, at });
                }
            }
        }
    }

    fn enter(&mut self, key: &str) {
        // One lookup: a key is mostly new here, and then it is copied into the map anyway.
        *self.in_flight.entry(key.into()).or_insert(0) += 1;
    }

    /// The process died with these keys in flight: each one's count goes up by one (however
    /// many deliveries of it were in flight). Returns the keys and their new counts, sorted.
    pub(crate) fn count_crash(&mut self, now: u64) -> Vec<(String, u32)> {
        let mut crashed: Vec<(String, u32)> = self
            .in_flight
            .drain()
            .map(|(key, _)| {
                let entry = self
                    .crashes
                    .entry(key.clone())
                    .or_insert(Crashes { count: 0, at: now });
                entry.count = entry.count.saturating_add(1);
                entry.at = now;
                (key.into_string(), entry.count)
            })
            .collect();
        crashed.sort();
        crashed
    }

    /// A clean stop: nothing in flight counts as a crash.
    pub(crate) fn forget_in_flight(&mut self) {
        self.in_flight.clear();
    }

    /// Forgets counts older than [`EXPIRY_SECS`], then the oldest beyond [`MAX_COUNTS`].
    pub(crate) fn prune(&mut self, now: u64) {
        self.crashes
            .retain(|_, c| c.at.saturating_add(EXPIRY_SECS) >= now);
        if self.crashes.len() > MAX_COUNTS {
            let mut oldest: Vec<(u64, Box<str>)> = self
                .crashes
                .iter()
                .map(|(key, c)| (c.at, key.clone()))
                .collect();
            oldest.sort_unstable();
            oldest.truncate(self.crashes.len() - MAX_COUNTS);
            for (_, key) in oldest {
                self.crashes.remove(&key);
            }
        }
    }

    /// Decides on a delivery: only a redelivery has crashes that count (a fresh delivery of
    /// the same key starts over). `threshold` 0 never decides `Poison`.
    #[must_use]
    pub(crate) fn decide(&self, key: &str, redelivered: bool, threshold: u32) -> Begin {
        if !redelivered || threshold == 0 {
            return Begin::Handle;
        }
        match self.crashes.get(key) {
            Some(c) if c.count >= threshold => Begin::Poison(c.count),
            Some(c) => Begin::Alone(c.count),
            None => Begin::Handle,
        }
    }

    /// Records a delivery as in flight; returns the record to write before handling it.
    pub(crate) fn start<'k>(&mut self, key: &'k str, redelivered: bool) -> Record<'k> {
        let record = if redelivered {
            Record::Restart(key)
        } else {
            Record::Start(key)
        };
        self.apply(record);
        record
    }

    /// True when no delivery is in flight.
    #[must_use]
    pub(crate) fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// The crash count of a key.
    #[cfg(test)]
    #[must_use]
    pub(crate) fn crashes(&self, key: &str) -> Option<Crashes> {
        self.crashes.get(key).copied()
    }

    /// The compacted journal: the crash counts, then what is in flight (as `R`, which keeps
    /// the counts).
    pub(crate) fn snapshot(&self, out: &mut Vec<u8>) {
        let mut counts: Vec<_> = self.crashes.iter().collect();
        counts.sort_by_key(|(key, _)| *key);
        for (key, c) in counts {
            Record::Crashes {
                key,
                count: c.count,
                at: c.at,
            }
            .encode(out);
        }
        let mut flying: Vec<_> = self.in_flight.iter().collect();
        flying.sort();
        for (key, n) in flying {
            for _ in 0..*n {
                Record::Restart(key).encode(out);
            }
        }
    }
}

/// A key is 1 to 255 bytes of printable ASCII without spaces: one token of a journal line.
#[must_use]
pub(crate) fn valid_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// The identity of a message in the journal: its `message_id` when that is a valid key,
/// `h:` and a digest of it when not (spaces, control characters), and for a message without
/// one `b:` and a digest of routing key, headers and body.
#[must_use]
pub fn key<'a>(
    message_id: Option<&'a str>,
    routing_key: &str,
    headers: Option<&FieldTable>,
    body: &[u8],
) -> Cow<'a, str> {
    match message_id.filter(|id| !id.is_empty()) {
        Some(id) if valid_key(id) => Cow::Borrowed(id),
        Some(id) => Cow::Owned(format!("h:{}", short_digest(Sha256::digest(id.as_bytes())))),
        None => {
            let mut hash = Sha256::new();
            hash.update(routing_key.as_bytes());
            hash.update([0]);
            if let Some(headers) = headers {
                hash_table(&mut hash, headers, 0);
            }
            hash.update([0]);
            hash.update(body);
            Cow::Owned(format!("b:{}", short_digest(hash.finalize())))
        }
    }
}

fn short_digest(digest: impl AsRef<[u8]>) -> String {
    hex::encode(&digest.as_ref()[..16])
}

/// Hashes a header table, sorted by name (lapin keeps it sorted), down to [`KEY_DEPTH`].
fn hash_table(hash: &mut Sha256, table: &FieldTable, depth: usize) {
    for (name, value) in table.inner() {
        hash.update(name.as_str().as_bytes());
        hash.update([b'=']);
        hash_value(hash, value, depth + 1);
        hash.update([b';']);
    }
}

fn hash_value(hash: &mut Sha256, value: &AMQPValue, depth: usize) {
    if depth > KEY_DEPTH {
        hash.update(b"...");
        return;
    }
    match value {
        AMQPValue::FieldTable(t) => {
            hash.update(b"{");
            hash_table(hash, t, depth);
            hash.update(b"}");
        }
        AMQPValue::FieldArray(a) => {
            hash.update(b"[");
            for v in a.as_slice() {
                hash_value(hash, v, depth + 1);
                hash.update(b",");
            }
            hash.update(b"]");
        }
        AMQPValue::LongString(s) => hash.update(s.as_bytes()),
        AMQPValue::ByteArray(b) => hash.update(b.as_slice()),
        leaf => hash.update(format!("{leaf:?}").as_bytes()),
    }
}

/// The verdict on a poison message: dead-letter it with reason `poison`; the detail ends up in
/// `x-agent-last-error` (`poison: in flight during 2 agent crashes`).
#[must_use]
pub(crate) fn verdict(crashes: u32) -> Verdict {
    let plural = if crashes == 1 { "crash" } else { "crashes" };
    Verdict::Permanent {
        reason: "poison",
        detail: format!("in flight during {crashes} agent {plural}"),
        status: None,
    }
}

#[cfg(test)]
mod tests;
