//! The in-flight journal on disk, and the [`Tracker`] the workers call.
//!
//! One append-only text file per agent, `<agent.state_dir>/inflight-<id>.journal`, where `<id>`
//! is derived from the broker and the queues (so agents with other queues use other files). A
//! start record is written with one plain `write()` before FPM is called; done records wait in
//! memory and go out with the next start record, or as soon as nothing is in flight. No fsync:
//! data written before a `kill -9`, an OOM kill or an abort is in the page cache and survives;
//! a power loss can lose the tail, which for a heuristic is acceptable. Past [`COMPACT_AT`]
//! bytes the file is rewritten from memory (write a temporary file, rename it over).
//!
//! A second agent with the same state directory and queues finds the journal locked (`flock`
//! on `<name>.lock`, released by the kernel when a process dies) and takes the next free slot,
//! `<name>.1.journal`, and so on.
//!
//! Every file is opened with `O_NOFOLLOW`, and a state directory that others may write to, or
//! that belongs to another user than the agent's or root, is refused (as sshd's StrictModes):
//! someone else's symlink or file there could make the agent overwrite a file of its choice. A
//! full disk at start turns the protection off, logged as an error and shown as
//! `amqp_agent_crash_loop_protection 0`, instead of keeping the agent from starting.
//!
//! Invariant: the start record of a message is written (or its write failed and was logged)
//! before the worker calls FPM; a clean stop leaves only crash counts in the file.

use std::borrow::Cow;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Write};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tracing::{debug, error, info, warn};

use super::{Begin, Ledger, Record};
use crate::config::Config;

/// Journal size that triggers a compaction.
pub const COMPACT_AT: u64 = 1 << 20;
/// Held-back done records beyond this size are written at once.
const PENDING_MAX: usize = 4096;
/// Agents with the same state directory and queues that can run side by side.
const SLOTS: usize = 8;
/// Crashed keys logged one by one at start-up (then a count).
const LOGGED_KEYS: usize = 20;

/// A failure to set up the journal (start-up only; later write errors are logged).
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The state directory or a file in it cannot be created, read or written.
    #[error(
        "agent.state_dir: {path}: {source} (set agent.state_dir to a writable directory, or agent.poison_after = 0 to turn crash-loop protection off)"
    )]
    Io {
        /// The directory or file at fault.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state directory may be written by others, or belongs to another user.
    #[error(
        "agent.state_dir: {path}: {why} (a symlink planted there could redirect the agent's writes; use a directory only the agent's user can write)"
    )]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Every slot is held by another running agent.
    #[error(
        "agent.state_dir: {dir}: {SLOTS} other agents with the same queues already hold the in-flight journals {name}.*"
    )]
    Busy {
        /// The state directory.
        dir: PathBuf,
        /// The journal's base name.
        name: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Tracks the messages in flight and decides which are poison. Shared by every worker.
pub struct Tracker {
    /// `agent.poison_after`: crashes after which a redelivery is dead-lettered.
    threshold: u32,
    /// `None` when crash-loop protection is off.
    journal: Option<Mutex<Journal>>,
    /// Every handled message holds it shared; a suspect (in flight during an earlier crash)
    /// holds it alone, so a crash while it runs is counted against it only.
    gate: tokio::sync::RwLock<()>,
}

struct Journal {
    path: PathBuf,
    file: File,
    /// Holds the slot; the kernel releases the lock when the process dies.
    _lock: File,
    ledger: Ledger,
    /// Encoded records not written yet (done records wait for the next write).
    pending: Vec<u8>,
    /// Bytes in the file.
    size: u64,
    /// First line of the file: what it is and whose.
    header: String,
    /// After a clean stop nothing more is recorded.
    closed: bool,
    /// The last write failed (logged once until a write succeeds again).
    failing: bool,
}

/// A delivery the tracker knows about. Dropping it records the message as done.
pub struct Tracked<'a> {
    tracker: &'a Tracker,
    key: &'a str,
    poison: Option<u32>,
    recorded: bool,
    /// Released after the done record (fields drop after `Drop::drop`); a batch's entries
    /// share one, released after the last one's done record.
    _permit: Option<Arc<Permit<'a>>>,
}

enum Permit<'a> {
    Shared(#[allow(dead_code)] tokio::sync::RwLockReadGuard<'a, ()>),
    Alone(#[allow(dead_code)] tokio::sync::RwLockWriteGuard<'a, ()>),
}

impl Tracked<'_> {
    /// `Some(crashes)` when the delivery must be dead-lettered as poison instead of handled.
    #[must_use]
    pub(crate) fn poison(&self) -> Option<u32> {
        self.poison
    }

    /// True for a suspect: it holds the gate alone (no other message is in flight).
    #[must_use]
    pub(crate) fn alone(&self) -> bool {
        matches!(self._permit.as_deref(), Some(Permit::Alone(_)))
    }

    /// The delivery is settled: its done record is written, then its permit released.
    pub(crate) fn end(mut self) {
        if self.recorded {
            self.tracker.end(self.key);
            self.recorded = false;
        }
    }
}

/// A delivery whose future was dropped before it was settled (shutdown) is recorded done here:
/// it was not acked, and goes back to its queue as any unacked delivery does.
impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        if self.recorded {
            self.tracker.end(self.key);
        }
    }
}

impl Tracker {
    /// Crash-loop protection off: nothing is recorded, nothing is poison.
    #[must_use]
    pub(crate) fn disabled() -> Self {
        Self {
            threshold: 0,
            journal: None,
            gate: tokio::sync::RwLock::new(()),
        }
    }

    /// True while messages are journaled (configured on, and not degraded).
    #[must_use]
    pub(crate) fn enabled(&self) -> bool {
        self.journal.is_some()
    }

    /// Opens (creating it if needed) this agent's journal in `agent.state_dir`, counts a crash
    /// for every message the previous process died with, and compacts the file. Off when
    /// `agent.poison_after` is 0.
    ///
    /// # Errors
    /// The directory cannot be created or written, or every slot is held by a running agent.
    pub fn open(config: &Config) -> Result<Self, JournalError> {
        match Self::open_journal(config) {
            Err(JournalError::Io { path, source }) if disk_full(&source) => {
                error!(path = %path.display(), error = %source, "Crash-loop protection is OFF: the state directory's disk is full; messages that crash the agent will not be dead-lettered as poison until it restarts with room");
                Ok(Self::disabled())
            }
            other => other,
        }
    }

    fn open_journal(config: &Config) -> Result<Self, JournalError> {
        let threshold = config.agent.poison_after;
        if threshold == 0 {
            return Ok(Self::disabled());
        }
        let dir = &config.agent.state_dir;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        check_owner_and_mode(dir)?;
        let (name, header) = identity(config);
        for slot in 0..SLOTS {
            let base = if slot == 0 {
                name.clone()
            } else {
                format!("{name}.{slot}")
            };
            let lock_path = dir.join(format!("{base}.lock"));
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&lock_path)
                .map_err(io(&lock_path))?;
            match lock.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    info!(path = %lock_path.display(), "In-flight journal held by another agent; trying the next slot");
                    continue;
                }
                Err(TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
            }
            let path = dir.join(format!("{base}.journal"));
            let journal = Journal::recover(path, lock, header)?;
            return Ok(Self {
                threshold,
                journal: Some(Mutex::new(journal)),
                gate: tokio::sync::RwLock::new(()),
            });
        }
        Err(JournalError::Busy {
            dir: dir.clone(),
            name,
        })
    }

    /// Decides on a delivery about to be handled and, unless it is poison, writes its start
    /// record first. A suspect waits until it can run alone. `key` comes from [`super::key`].
    pub async fn begin<'a>(&'a self, key: &'a str, redelivered: bool) -> Tracked<'a> {
        let mut tracked = Tracked {
            tracker: self,
            key,
            poison: None,
            recorded: false,
            _permit: None,
        };
        let Some(journal) = &self.journal else {
            return tracked;
        };
        let decision =
            journal
                .lock()
                .expect("journal lock")
                .ledger
                .decide(key, redelivered, self.threshold);
        tracked._permit = Some(Arc::new(match decision {
            Begin::Poison(crashes) => {
                tracked.poison = Some(crashes);
                return tracked;
            }
            Begin::Alone(crashes) => {
                warn!(key = %key, crashes, "Message was in flight during an agent crash; handling it alone");
                Permit::Alone(self.gate.write().await)
            }
            Begin::Handle => Permit::Shared(self.gate.read().await),
        }));
        let mut journal = journal.lock().expect("journal lock");
        if journal.closed {
            return tracked;
        }
        let record = journal.ledger.start(key, redelivered);
        record.encode(&mut journal.pending);
        journal.flush();
        tracked.recorded = true;
        tracked
    }

    /// [`Tracker::begin`] for the deliveries of one batch (key and `redelivered` of each, in
    /// order): each is decided alone, and those that are not poison are recorded with one
    /// `write()` under **one** permit for the whole batch, held until the last of them is done.
    /// One permit, not one per entry: the gate is fair, so a suspect queueing for it between two
    /// of the batch's shared permits would wait for the batch while the batch waited for it,
    /// and every worker after them. A batch holds no redelivery (`batch::Batching::take`), so
    /// no entry is a suspect; if one were, the whole batch would take the exclusive permit.
    pub(crate) async fn begin_batch<'a>(&'a self, keys: &[(&'a str, bool)]) -> Vec<Tracked<'a>> {
        let mut tracked: Vec<Tracked<'a>> = keys
            .iter()
            .map(|&(key, _)| Tracked {
                tracker: self,
                key,
                poison: None,
                recorded: false,
                _permit: None,
            })
            .collect();
        let Some(journal) = &self.journal else {
            return tracked;
        };
        let mut suspects = 0;
        {
            let journal = journal.lock().expect("journal lock");
            for (t, (key, redelivered)) in tracked.iter_mut().zip(keys) {
                match journal.ledger.decide(key, *redelivered, self.threshold) {
                    Begin::Poison(crashes) => t.poison = Some(crashes),
                    Begin::Alone(crashes) => {
                        warn!(key = %key, crashes, "Message was in flight during an agent crash; its batch runs alone");
                        suspects += 1;
                    }
                    Begin::Handle => {}
                }
            }
        }
        if tracked.iter().all(|t| t.poison.is_some()) {
            return tracked;
        }
        let permit = Arc::new(if suspects > 0 {
            Permit::Alone(self.gate.write().await)
        } else {
            Permit::Shared(self.gate.read().await)
        });
        for t in tracked.iter_mut().filter(|t| t.poison.is_none()) {
            t._permit = Some(permit.clone());
        }
        drop(permit);
        let mut journal = journal.lock().expect("journal lock");
        if journal.closed {
            return tracked;
        }
        for (t, (key, redelivered)) in tracked.iter_mut().zip(keys) {
            if t.poison.is_none() {
                let record = journal.ledger.start(key, *redelivered);
                record.encode(&mut journal.pending);
                t.recorded = true;
            }
        }
        journal.flush();
        tracked
    }

    fn end(&self, key: &str) {
        let Some(journal) = &self.journal else {
            return;
        };
        let mut journal = journal.lock().expect("journal lock");
        if journal.closed {
            return;
        }
        let record = Record::Done(key);
        journal.ledger.apply(record);
        record.encode(&mut journal.pending);
        if journal.ledger.idle() || journal.pending.len() >= PENDING_MAX {
            journal.flush();
        }
    }

    /// A clean stop: what is in flight is not a crash. Leaves only the crash counts in the
    /// file; nothing is recorded afterwards.
    pub fn close(&self) {
        let Some(journal) = &self.journal else {
            return;
        };
        let mut journal = journal.lock().expect("journal lock");
        if journal.closed {
            return;
        }
        journal.ledger.forget_in_flight();
        if let Err(e) = journal.compact() {
            warn!(path = %journal.path.display(), error = %e, "Cannot rewrite the in-flight journal at stop; messages in flight may be counted as crashed");
        }
        journal.closed = true;
        debug!(path = %journal.path.display(), "In-flight journal closed");
    }

    /// The journal file, when crash-loop protection is on.
    #[must_use]
    pub fn path(&self) -> Option<PathBuf> {
        let journal = self.journal.as_ref()?;
        Some(journal.lock().expect("journal lock").path.clone())
    }
}

impl Journal {
    /// Replays the file a previous process left, counts its crash, and compacts.
    fn recover(path: PathBuf, lock: File, header: String) -> Result<Self, JournalError> {
        let text = match read_nofollow(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(&path)(e)),
        };
        let mut ledger = Ledger::replay(&text);
        let now = unix_now();
        let crashed = ledger.count_crash(now);
        ledger.prune(now);
        for (key, count) in crashed.iter().take(LOGGED_KEYS) {
            warn!(key = %key, crashes = count, "Message was in flight when the agent died; its crash count goes up");
        }
        if crashed.len() > LOGGED_KEYS {
            warn!(
                more = crashed.len() - LOGGED_KEYS,
                "More messages were in flight when the agent died"
            );
        }
        let tmp = path.with_extension("journal.tmp");
        let file = create_nofollow(&tmp).map_err(io(&tmp))?;
        let mut journal = Self {
            path,
            file,
            _lock: lock,
            ledger,
            pending: Vec::new(),
            size: 0,
            header,
            closed: false,
            failing: false,
        };
        journal.compact().map_err(io(&journal.path))?;
        info!(path = %journal.path.display(), crashed = crashed.len(), "Crash-loop protection: in-flight journal open");
        Ok(journal)
    }

    /// Writes the pending records with one `write()`; compacts past [`COMPACT_AT`].
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        match self.file.write_all(&self.pending) {
            Ok(()) => {
                self.size += self.pending.len() as u64;
                if self.failing {
                    info!(path = %self.path.display(), "In-flight journal writable again");
                }
                self.failing = false;
            }
            Err(e) => {
                if !self.failing {
                    warn!(path = %self.path.display(), error = %e, "Cannot write the in-flight journal; crash-loop protection is degraded until it can");
                }
                self.failing = true;
            }
        }
        self.pending.clear();
        if self.size > COMPACT_AT
            && let Err(e) = self.compact()
        {
            warn!(path = %self.path.display(), error = %e, "Cannot compact the in-flight journal");
        }
    }

    /// Rewrites the file from memory: a temporary file, renamed over the journal.
    fn compact(&mut self) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(self.header.as_bytes());
        self.ledger.snapshot(&mut buf);
        let tmp = self.path.with_extension("journal.tmp");
        let mut file = create_nofollow(&tmp)?;
        file.write_all(&buf)?;
        std::fs::rename(&tmp, &self.path)?;
        self.file = file;
        self.size = buf.len() as u64;
        self.pending.clear();
        Ok(())
    }
}

/// `File::create` that refuses a symlink in the last component (`ELOOP`).
fn create_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// `fs::read` that refuses a symlink in the last component.
fn read_nofollow(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// sshd's StrictModes for the state directory: owned by the agent's user or root, and not
/// writable by group or others.
fn check_owner_and_mode(dir: &Path) -> Result<(), JournalError> {
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    let unsafe_dir = |why| JournalError::Unsafe {
        path: dir.to_owned(),
        why,
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Err(unsafe_dir("owned by another user"));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir("writable by others (group or world)"));
    }
    Ok(())
}

/// No room to write: the disk or the quota is full, or the file size limit is reached.
fn disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
    )
}

/// The journal's base name and header line: derived from the broker (password left out) and
/// the queues, so agents consuming other queues never share a file.
fn identity(config: &Config) -> (String, String) {
    let queues: Vec<&str> = config.subjects.values().map(|s| s.queue.as_str()).collect();
    let broker = crate::config::redact_url(config.amqp_url());
    let mut hash = Sha256::new();
    hash.update(broker.as_bytes());
    for queue in &queues {
        hash.update([0]);
        hash.update(queue.as_bytes());
    }
    let digest = hash.finalize();
    let name = format!("inflight-{}", hex::encode(&digest[..6]));
    let header = format!(
        "# amqp-agent in-flight journal v1 (crash-loop protection) for {broker} queues {}\n",
        queues.join(",")
    );
    (name, header)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The key of a delivery (see [`super::key`]).
#[must_use]
pub(crate) fn key_of(delivery: &lapin::message::Delivery) -> Cow<'_, str> {
    let props = &delivery.properties;
    super::key(
        props.message_id().as_ref().map(|id| id.as_str()),
        delivery.routing_key.as_str(),
        props.headers().as_ref(),
        &delivery.data,
    )
}

#[cfg(test)]
mod tests;
