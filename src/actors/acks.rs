//! Settlement of deliveries: one task per consumer channel that acks and nacks for the workers,
//! coalescing acks into `basic.ack(multiple=true)` frames.
//!
//! Invariant: a `multiple` ack for tag T is sent only when every tag up to T is settled — acked
//! in that frame because a worker reported it done, or already acked or nacked one by one — and
//! T itself is still unacked; no tag is ever acked twice. A tag reported done stays unacked only
//! while an older tag is still in flight, and then for at most [`HOLD_MAX`] or until
//! [`Acks::set_window`]'s limit of such tags is reached, when they are acked one by one: a slow
//! message never holds the prefetch window shut.
//!
//! Workers hand a finished delivery over and take the next one at once; the ack itself goes out
//! in the next batch (group commit: while one batch is being written, the next one collects).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::DeliveryTag;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::warn;

use super::SubjectRuntime;
use crate::telemetry::events::Event;

/// Longest time a finished delivery waits behind an older one still in flight before it is
/// acked on its own.
pub const HOLD_MAX: Duration = Duration::from_millis(20);

/// Longest time a finished delivery waits for others to share its ack frame.
pub const ACK_DELAY: Duration = Duration::from_millis(1);

/// A settlement that comes this long after the previous round's first one finds the channel
/// quiet: nothing is likely to join it within [`ACK_DELAY`], so it goes at once instead of
/// after a timer (at a trickle, one wake-up per message less, and the ack 1 ms sooner).
const QUIET: Duration = Duration::from_millis(10);

/// Handle to the settlement task of one channel. Cheap to clone; the task ends (after sending
/// what it holds) when every handle is dropped.
#[derive(Clone)]
pub struct Acks {
    tx: mpsc::UnboundedSender<Cmd>,
}

enum Cmd {
    /// The delivery is done: ack it. `handled` counts it in the `acked` statistics (a message
    /// whose retry or dead-letter copy was stored is acked without being counted as handled).
    Ack { tag: DeliveryTag, handled: bool },
    /// Return the delivery to its queue (counted as requeued once the nack is written).
    Nack(DeliveryTag),
    /// The prefetch window changed: at most half of it may wait behind a slow message.
    Window(u16),
    /// Send everything held now; reply when written.
    Flush(oneshot::Sender<()>),
}

/// Why a delivery is acked: only a handled one counts in the `acked` statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    /// PHP handled it.
    Handled,
    /// Its retry or dead-letter copy was stored.
    CopyStored,
}

impl Acks {
    /// Starts the settlement task of `channel` (a fresh channel: its first delivery tag is 1).
    #[must_use]
    pub fn spawn(channel: Channel, runtime: Arc<SubjectRuntime>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(AckWriter::new(channel, runtime).run(rx));
        Self { tx }
    }

    /// Acks `tag` once everything before it is settled (or after [`HOLD_MAX`]).
    pub fn ack(&self, tag: DeliveryTag, why: Acked) {
        let handled = why == Acked::Handled;
        let _ = self.tx.send(Cmd::Ack { tag, handled });
    }

    /// Nacks `tag` back to its queue, in order with the acks.
    pub fn nack(&self, tag: DeliveryTag) {
        let _ = self.tx.send(Cmd::Nack(tag));
    }

    /// Tells the task the prefetch window now in force.
    pub fn set_window(&self, prefetch: u16) {
        let _ = self.tx.send(Cmd::Window(prefetch));
    }

    /// Sends every ack held back and waits until they are written (or the channel is gone).
    pub async fn flush(&self) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Cmd::Flush(reply)).is_ok() {
            let _ = done.await;
        }
    }
}

/// What is known of the channel's delivery tags.
///
/// Tags are numbered 1, 2, 3… per channel. Every tag up to `through` is settled. Above it,
/// `done` holds tags finished but not yet acked, `sent` tags already acked or nacked one by one.
#[derive(Default)]
struct Ledger {
    through: DeliveryTag,
    done: BTreeMap<DeliveryTag, bool>,
    sent: Runs,
}

/// A set of delivery tags kept as runs of consecutive tags (start → end, inclusive). While one
/// message runs for minutes, every later one is acked singly and stays here until the floor
/// passes it: as runs, that is one entry instead of one per message.
#[derive(Default)]
struct Runs(BTreeMap<DeliveryTag, DeliveryTag>);

impl Runs {
    fn contains(&self, tag: DeliveryTag) -> bool {
        self.0
            .range(..=tag)
            .next_back()
            .is_some_and(|(_, end)| tag <= *end)
    }

    fn insert(&mut self, tag: DeliveryTag) {
        if self.contains(tag) {
            return;
        }
        let mut start = tag;
        if let Some((&s, &e)) = self.0.range(..tag).next_back()
            && e + 1 == tag
        {
            start = s;
        }
        let end = self.0.remove(&(tag + 1)).unwrap_or(tag);
        self.0.insert(start, end);
    }

    /// Removes the run that starts at `tag`; returns its end.
    fn take_run_at(&mut self, tag: DeliveryTag) -> Option<DeliveryTag> {
        self.0.remove(&tag)
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a batch has to send.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    /// `basic.ack(multiple=true)` up to this tag, and how many handled messages it settles.
    multiple: Option<(DeliveryTag, u64)>,
    /// Tags to ack one by one, each with whether it counts as handled.
    single: Vec<(DeliveryTag, bool)>,
}

impl Ledger {
    fn done(&mut self, tag: DeliveryTag, handled: bool) {
        if tag > self.through && !self.sent.contains(tag) {
            self.done.insert(tag, handled);
        }
    }

    /// A tag to nack: true when it is still unsettled, so the nack may be sent (it then only
    /// moves the floor). A tag already acked, or reported done (PHP handled it), is not nacked:
    /// the broker would close the channel on an unknown tag, and the ack is the truth.
    fn release(&mut self, tag: DeliveryTag) -> bool {
        if tag <= self.through || self.sent.contains(tag) || self.done.contains_key(&tag) {
            return false;
        }
        self.sent.insert(tag);
        true
    }

    /// Moves the floor over the settled prefix; acks the done tags above it one by one when
    /// more than `hold` of them wait (all of them when `hold` is 0).
    fn plan(&mut self, hold: usize) -> Plan {
        let mut multiple = None;
        let mut handled = 0;
        loop {
            let next = self.through + 1;
            if let Some(h) = self.done.remove(&next) {
                multiple = Some(next);
                handled += u64::from(h);
                self.through = next;
            } else if let Some(end) = self.sent.take_run_at(next) {
                // A run of tags settled one by one: the floor passes it in one step.
                self.through = end;
            } else {
                break;
            }
        }
        let single = if self.done.len() > hold {
            let single: Vec<_> = std::mem::take(&mut self.done).into_iter().collect();
            for (tag, _) in &single {
                self.sent.insert(*tag);
            }
            single
        } else {
            Vec::new()
        };
        Plan {
            multiple: multiple.map(|t| (t, handled)),
            single,
        }
    }
}

/// Commands of one round that cannot wait.
#[derive(Default)]
struct Urgent {
    nacks: Vec<DeliveryTag>,
    flushes: Vec<oneshot::Sender<()>>,
}

impl Urgent {
    fn any(&self) -> bool {
        !self.nacks.is_empty() || !self.flushes.is_empty()
    }
}

/// What wakes the ack writer.
enum Wake {
    /// A command.
    Cmd(Cmd),
    /// Tags have been held back for `HOLD_MAX`.
    Overdue,
    /// Every handle was dropped.
    Closed,
}

/// Applies the commands already queued, without waiting; true when every handle was dropped.
fn take_queued(rx: &mut mpsc::UnboundedReceiver<Cmd>, mut apply: impl FnMut(Cmd)) -> bool {
    loop {
        match rx.try_recv() {
            Ok(cmd) => apply(cmd),
            Err(mpsc::error::TryRecvError::Empty) => return false,
            Err(mpsc::error::TryRecvError::Disconnected) => return true,
        }
    }
}

/// Waits for work; while tags are held back, no longer than their `HOLD_MAX`.
async fn wait(rx: &mut mpsc::UnboundedReceiver<Cmd>, held_since: Option<Instant>) -> Wake {
    let cmd = match held_since {
        None => rx.recv().await,
        Some(since) => match tokio::time::timeout_at(since + HOLD_MAX, rx.recv()).await {
            Ok(cmd) => cmd,
            Err(_) => return Wake::Overdue,
        },
    };
    cmd.map_or(Wake::Closed, Wake::Cmd)
}

struct AckWriter {
    channel: Channel,
    runtime: Arc<SubjectRuntime>,
    ledger: Ledger,
    /// Most done tags allowed to wait behind an older one, and the batch size that is sent
    /// without waiting for [`ACK_DELAY`]: half the prefetch window. (A quarter sent about 30 %
    /// of the frames as single acks behind a briefly slower message; half cost the agent ~8 %
    /// less CPU per message in `scripts/bench`, and still leaves half the window to new work.)
    hold: usize,
    /// When the last round began (its first command).
    last_round: Option<Instant>,
}

impl AckWriter {
    fn new(channel: Channel, runtime: Arc<SubjectRuntime>) -> Self {
        Self {
            channel,
            runtime,
            ledger: Ledger::default(),
            hold: 1,
            last_round: None,
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut urgent = Urgent::default();
        // Since when finished tags have been waiting behind an older one (the age of the oldest
        // held tag, or older): they go out singly once it passes HOLD_MAX, however busy the
        // channel is.
        let mut held_since: Option<Instant> = None;
        loop {
            let first = match wait(&mut rx, held_since).await {
                Wake::Cmd(cmd) => cmd,
                Wake::Overdue => {
                    self.send(0).await;
                    held_since = None;
                    continue;
                }
                Wake::Closed => {
                    // Every handle dropped: send what is held and stop.
                    self.send(0).await;
                    return;
                }
            };
            self.apply(first, &mut urgent);
            let now = Instant::now();
            let quiet = self
                .last_round
                .is_none_or(|last| now.duration_since(last) >= QUIET);
            self.last_round = Some(now);
            let closed = if quiet {
                take_queued(&mut rx, |cmd| self.apply(cmd, &mut urgent))
            } else {
                self.gather(&mut rx, &mut urgent, held_since).await
            };
            // Nacks go first: a later multiple ack must not cover a tag meant to go back.
            self.nack(std::mem::take(&mut urgent.nacks)).await;
            let overdue = held_since.is_some_and(|since| since.elapsed() >= HOLD_MAX);
            let hold = if urgent.flushes.is_empty() && !closed && !overdue {
                self.hold
            } else {
                0
            };
            self.send(hold).await;
            held_since = if self.ledger.done.is_empty() {
                None
            } else {
                held_since.or_else(|| Some(Instant::now()))
            };
            for reply in urgent.flushes.drain(..) {
                let _ = reply.send(());
            }
            if closed {
                return;
            }
        }
    }

    /// Gathers more commands for up to `ACK_DELAY` (and not past the held tags' `HOLD_MAX`),
    /// unless something must go now or half the window is waiting: fewer, larger acks mean
    /// fewer frames and rounds of lapin's I/O loop. True when every handle was dropped.
    async fn gather(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Cmd>,
        urgent: &mut Urgent,
        held_since: Option<Instant>,
    ) -> bool {
        let mut deadline = Instant::now() + ACK_DELAY;
        if let Some(since) = held_since {
            deadline = deadline.min(since + HOLD_MAX);
        }
        loop {
            let closed = take_queued(rx, |cmd| self.apply(cmd, urgent));
            if urgent.any() || self.ledger.done.len() >= self.hold {
                return false;
            }
            if closed {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(cmd)) => self.apply(cmd, urgent),
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Returns these deliveries to their queue.
    async fn nack(&self, tags: Vec<DeliveryTag>) {
        let requeue = BasicNackOptions {
            requeue: true,
            multiple: false,
        };
        for result in join_all(tags.iter().map(|t| self.channel.basic_nack(*t, requeue))).await {
            match result {
                Ok(()) => self.runtime.events.emit(Event::Requeued),
                Err(e) => {
                    warn!(error = %e, "Could not return a delivery; the broker redelivers it when the channel closes");
                }
            }
        }
    }

    fn apply(&mut self, cmd: Cmd, urgent: &mut Urgent) {
        match cmd {
            Cmd::Ack { tag, handled } => self.ledger.done(tag, handled),
            Cmd::Nack(tag) => {
                if self.ledger.release(tag) {
                    urgent.nacks.push(tag);
                }
            }
            Cmd::Window(prefetch) => self.hold = usize::from(prefetch / 2).max(1),
            Cmd::Flush(reply) => urgent.flushes.push(reply),
        }
    }

    /// Writes the acks the ledger allows.
    async fn send(&mut self, hold: usize) {
        let plan = self.ledger.plan(hold);
        let mut handled = 0;
        let multiple = plan.multiple.map(|(tag, n)| {
            handled += n;
            self.channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
        });
        handled += plan.single.iter().filter(|(_, h)| *h).count() as u64;
        let single = plan
            .single
            .iter()
            .map(|(tag, _)| self.channel.basic_ack(*tag, BasicAckOptions::default()));
        let results = join_all(multiple.into_iter().chain(single)).await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            // The channel is gone: the broker redelivers everything unacked.
            warn!(error = %e, "Acks not sent: the channel is closed; the broker redelivers those messages");
            return;
        }
        if handled > 0 {
            self.runtime.events.emit(Event::Acked(handled));
        }
        self.runtime.events.emit(Event::AckFrames {
            multiple: plan.multiple.is_some(),
            single: plan.single.len() as u64,
        });
    }
}

#[cfg(test)]
mod tests;
