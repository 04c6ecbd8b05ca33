//! The depth of a subject's queues: a task of the subject's consumer that reads, every
//! `fpm.status_interval` on the consumer's connection (`broker::depth`), the messages ready in
//! its queue (the autoscaler's backlog, and `/status`), in its delay queues and in its
//! dead-letter queue (the dashboard's overview).
//!
//! Invariant: it only reads; a failed read shows 0 and never stops the consumer; a queue found
//! missing is read again only every [`MISSING_RECHECK_TICKS`] ticks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::Connection;
use tokio::time::Instant;
use tracing::{debug, info};

use super::SubjectRuntime;
use crate::broker;

/// Longest a read may take, unless `fpm.status_interval` is longer.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Ticks a queue found missing is left alone before it is read again (30 s at the default
/// `fpm.status_interval` of 2 s). The broker answers a passive declaration of a missing queue
/// by closing the channel: lapin logs that at ERROR, and the next read opens a new channel. A
/// deleted dead-letter queue (declared again by the next dead letter) cost one ERROR line and
/// one channel number every tick.
const MISSING_RECHECK_TICKS: u32 = 15;

/// The queues found missing, each with the instant from which it is read again.
#[derive(Default)]
struct Missing(Vec<(String, Instant)>);

impl Missing {
    /// True while `queue` was found missing and is not due for another read at `now`.
    fn skip(&self, queue: &str, now: Instant) -> bool {
        self.0.iter().any(|(q, until)| q == queue && now < *until)
    }

    /// `queue` was not found at `now`: left alone for `recheck`. True the first time (to log).
    fn lost(&mut self, queue: &str, now: Instant, recheck: Duration) -> bool {
        if let Some(entry) = self.0.iter_mut().find(|(q, _)| q == queue) {
            entry.1 = now + recheck;
            return false;
        }
        self.0.push((queue.to_owned(), now + recheck));
        true
    }

    /// `queue` was read: read it every tick again.
    fn found(&mut self, queue: &str) {
        self.0.retain(|(q, _)| q != queue);
    }
}

/// Reads the depths every `fpm.status_interval` into the `queued`, `delayed` and `dead` gauges.
/// A failed read shows 0 (the autoscaler then sees the prefetched backlog only); a delay queue
/// not declared yet counts 0.
pub(crate) async fn watch(runtime: Arc<SubjectRuntime>, connection: Arc<Connection>) {
    let every = runtime.config.fpm.status_interval;
    let queue = runtime.subject().queue.clone();
    let dead_queue = broker::dead_queue_name(&queue);
    let mut delays: Vec<String> = runtime
        .config
        .retry
        .delays
        .iter()
        .map(|d| broker::delay_queue_name(&queue, *d))
        .collect();
    delays.sort();
    delays.dedup();
    let mut reader = Reader {
        depth: broker::depth::QueueDepth::new(connection),
        missing: Missing::default(),
        timeout: every.max(READ_TIMEOUT),
        recheck: every * MISSING_RECHECK_TICKS,
        subject: &runtime.name,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let queued = reader.read(&queue).await;
        runtime.stats.queued.store(queued, Ordering::Relaxed);
        let dead = reader.read(&dead_queue).await;
        runtime.stats.dead.store(dead, Ordering::Relaxed);
        let mut delayed = 0;
        for delay_queue in &delays {
            delayed += reader.read(delay_queue).await;
        }
        runtime.stats.delayed.store(delayed, Ordering::Relaxed);
    }
}

/// Reads the depths of one subject's queues.
struct Reader<'a> {
    depth: broker::depth::QueueDepth,
    missing: Missing,
    timeout: Duration,
    recheck: Duration,
    subject: &'a str,
}

impl Reader<'_> {
    /// One queue's depth, 0 when it cannot be read (missing, or the connection is gone).
    async fn read(&mut self, queue: &str) -> u64 {
        let now = Instant::now();
        if self.missing.skip(queue, now) {
            return 0;
        }
        match tokio::time::timeout(self.timeout, self.depth.read_queue(queue)).await {
            Ok(Ok(n)) => {
                self.missing.found(queue);
                u64::from(n)
            }
            Ok(Err(e)) if e.is_not_found() => {
                if self.missing.lost(queue, now, self.recheck) {
                    info!(
                        subject = %self.subject,
                        queue,
                        recheck = ?self.recheck,
                        "Queue not found: its depth counts 0, and it is read again after `recheck`"
                    );
                }
                0
            }
            Ok(Err(e)) => {
                debug!(subject = %self.subject, queue, error = %e, "Queue depth not read");
                0
            }
            Err(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_queue_is_left_alone_until_its_recheck() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut missing = Missing::default();
        assert!(!missing.skip("q.dead", t0), "nothing missing: read");
        assert!(missing.lost("q.dead", t0, s(30)), "first time: logged");
        assert!(missing.skip("q.dead", t0 + s(29)));
        assert!(!missing.skip("q", t0 + s(1)), "another queue is read");
        assert!(!missing.skip("q.dead", t0 + s(30)), "due again");
        assert!(
            !missing.lost("q.dead", t0 + s(30), s(30)),
            "still missing: not logged again"
        );
        assert!(missing.skip("q.dead", t0 + s(59)));
        missing.found("q.dead");
        assert!(
            !missing.skip("q.dead", t0 + s(31)),
            "found: read every tick"
        );
        assert!(
            missing.lost("q.dead", t0 + s(40), s(30)),
            "lost again: logged again"
        );
    }
}
