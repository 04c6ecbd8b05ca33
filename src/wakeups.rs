//! Fewer wake-ups of the runtime thread while every FastCGI request in flight is in the middle
//! of a batch.
//!
//! Why: PHP writes and flushes each line of a batch reply as it happens (a `start` line before
//! an entry runs, its outcome line once it is done: docs/batches.md), so that the agent knows
//! which entry was running if the request breaks. Each flushed write wakes the agent's thread:
//! a batch of 50 cost up to 100 wake-ups (51 since the packages write an outcome line with the
//! next `start` line), and on a VM a wake-up (`epoll_wait`, the context
//! switch, the worker polled for one line, its ack handed on) costs ~20 µs, more than all the
//! rest of the agent's work for a message (docs/performance.md, "Wake-ups per batch line").
//!
//! Those lines need not be read the microsecond they arrive: PHP is not blocked by lines the
//! agent has not read, an entry's ack may wait a little, and a line in the socket's buffer is
//! still read after PHP exits (unless a reset drops it: a child killed while its own socket held
//! unread input; its entries are then handled again, alone, as docs/batches.md "What a crash can
//! cost" says, and a pause widens that window by at most its length). So while **every** request in
//! flight is a batch with at least two entries still unanswered, the runtime thread sleeps
//! [`PAUSE`] before it parks, and then finds the lines of all batches (and any deliveries)
//! ready at once. Nothing that should be seen at once waits:
//! - a single-message request in flight (its reply ends it) turns the pause off;
//! - so does a batch's last entry: the end of the request frees the FPM child for the next one;
//! - with no batch in flight (a trickle, an idle agent) nothing pauses.
//!
//! lapin's I/O loop runs on this thread as well (`vendor/lapin/PATCHES.md` 7): the broker's
//! frames wait out a pause as FPM's lines do, and acks queued before it are already written
//! (the thread parks only once every task, the loop's included, has nothing left to do).
//!
//! *Invariant:* a pause happens only before the thread parks (it has nothing ready to run),
//! lasts at most [`PAUSE`], and only while the requests marked [`Unhurried`] on that thread are
//! at least all those in flight there ([`InFlight`]). Only the current-thread runtime (the
//! default, `agent.worker_threads = 1`) installs the hook.
//!
//! `AMQP_AGENT_PARK_PAUSE_US` sets the pause in µs (`0` turns it off), read once, for
//! measurements.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How long the thread waits before it parks while every request in flight is mid-batch.
pub const PAUSE: Duration = Duration::from_millis(1);

/// The requests in flight and, of those, the batches mid-way, of one thread.
struct Marks {
    /// FastCGI requests in flight (each an [`InFlight`]).
    in_flight: AtomicUsize,
    /// Batches with two entries or more unanswered (each an [`Unhurried`] that is on).
    unhurried: AtomicUsize,
    /// Pauses taken by [`before_park`] on this thread.
    pauses: AtomicU64,
}

impl Marks {
    const fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            unhurried: AtomicUsize::new(0),
            pauses: AtomicU64::new(0),
        }
    }
}

thread_local! {
    /// This thread's marks. Per thread, because the pause is per runtime: a current-thread
    /// runtime (the agent's) runs every request on its one thread, and what other runtimes in
    /// the process have in flight (tests run many) is not its business. Leaked once per thread
    /// that marks a request, so that a mark can be undone from wherever it is dropped.
    static MARKS: &'static Marks = Box::leak(Box::new(Marks::new()));
}

/// The calling thread's marks.
fn marks() -> &'static Marks {
    MARKS.with(|m| *m)
}

/// The pause: [`PAUSE`], or `AMQP_AGENT_PARK_PAUSE_US` (read once).
fn pause() -> Duration {
    static PAUSE_SET: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *PAUSE_SET.get_or_init(|| {
        std::env::var("AMQP_AGENT_PARK_PAUSE_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(PAUSE, Duration::from_micros)
    })
}

/// Whether the thread may wait before parking: some batch is mid-way and nothing in flight is
/// anything else.
fn may_pause(marks: &Marks) -> bool {
    let unhurried = marks.unhurried.load(Ordering::Relaxed);
    unhurried > 0 && unhurried >= marks.in_flight.load(Ordering::Relaxed)
}

/// The runtime's `on_thread_park` hook: waits [`PAUSE`] when [`may_pause`] says so for the
/// requests of this thread.
pub fn before_park() {
    let pause = pause();
    let marks = marks();
    if !pause.is_zero() && may_pause(marks) {
        marks.pauses.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(pause);
    }
}

/// Pauses [`before_park`] took on the calling thread (a test on the agent's runtime reads it).
#[must_use]
pub fn pauses() -> u64 {
    marks().pauses.load(Ordering::Relaxed)
}

/// Marks one FastCGI request in flight for as long as it lives.
pub(crate) struct InFlight(&'static Marks);

impl InFlight {
    /// A request in flight on the calling thread.
    pub(crate) fn new() -> Self {
        Self::on(marks())
    }

    fn on(marks: &'static Marks) -> Self {
        marks.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(marks)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Marks a batch request as one whose next line need not be read at once (two entries or more
/// unanswered), while [`Unhurried::set`] says so and it lives.
pub(crate) struct Unhurried {
    marks: &'static Marks,
    on: bool,
}

impl Unhurried {
    /// A batch request on the calling thread, not marked until [`Unhurried::set`] says so.
    pub(crate) fn new() -> Self {
        Self::on(marks())
    }

    fn on(marks: &'static Marks) -> Self {
        Self { marks, on: false }
    }

    /// `unanswered`: the entries of the request without an outcome line yet.
    pub(crate) fn set(&mut self, unanswered: usize) {
        let on = unanswered >= 2;
        if on != self.on {
            if on {
                self.marks.unhurried.fetch_add(1, Ordering::Relaxed);
            } else {
                self.marks.unhurried.fetch_sub(1, Ordering::Relaxed);
            }
            self.on = on;
        }
    }
}

impl Drop for Unhurried {
    fn drop(&mut self) {
        self.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_only_while_every_request_in_flight_is_mid_batch() {
        static M: Marks = Marks::new();
        let state = || {
            (
                M.unhurried.load(Ordering::Relaxed),
                M.in_flight.load(Ordering::Relaxed),
            )
        };
        assert!(!may_pause(&M), "idle: a delivery is seen at once");
        let single = InFlight::on(&M);
        assert!(!may_pause(&M), "a single request");
        // A batch is marked, then its request counts as in flight, in the same poll.
        let mut batch = Unhurried::on(&M);
        batch.set(50);
        let batch_flight = InFlight::on(&M);
        assert_eq!(state(), (1, 2));
        assert!(!may_pause(&M), "a batch beside a single request");
        drop(single);
        assert!(may_pause(&M), "one batch mid-way");
        batch.set(2);
        assert!(may_pause(&M));
        batch.set(1);
        assert_eq!(state(), (0, 1));
        assert!(!may_pause(&M), "its last entry is awaited at once");
        batch.set(3);
        let mut other = Unhurried::on(&M);
        other.set(10);
        let other_flight = InFlight::on(&M);
        assert_eq!(state(), (2, 2));
        assert!(may_pause(&M), "two batches mid-way");
        other.set(0);
        assert!(!may_pause(&M), "one of them at its end");
        drop(other);
        drop(other_flight);
        assert!(may_pause(&M));
        drop(batch);
        drop(batch_flight);
        assert_eq!(state(), (0, 0), "every mark undone when dropped");
        assert!(!may_pause(&M));
    }
}
