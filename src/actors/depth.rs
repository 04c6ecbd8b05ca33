//! The depth of a subject's queues: a task of the subject's consumer that reads, every
//! `fpm.status_interval` on the consumer's connection (`broker::depth`), the messages ready in
//! its queue (the autoscaler's backlog, and `/status`), in its delay queues and in its
//! dead-letter queue (the dashboard's overview).
//!
//! Invariant: it only reads; a failed read shows 0 and never stops the consumer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::Connection;
use tracing::debug;

use super::SubjectRuntime;
use crate::broker;

/// Longest a read may take, unless `fpm.status_interval` is longer.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

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
    let mut depth = broker::depth::QueueDepth::new(connection, &queue);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = every.max(READ_TIMEOUT);
    loop {
        tick.tick().await;
        let queued = match tokio::time::timeout(timeout, depth.read()).await {
            Ok(Ok(n)) => u64::from(n),
            Ok(Err(e)) => {
                debug!(subject = %runtime.name, error = %e, "Queue depth not read");
                0
            }
            Err(_) => 0,
        };
        runtime.stats.queued.store(queued, Ordering::Relaxed);
        let dead = read(&mut depth, &dead_queue, timeout).await;
        runtime.stats.dead.store(dead, Ordering::Relaxed);
        let mut delayed = 0;
        for delay_queue in &delays {
            delayed += read(&mut depth, delay_queue, timeout).await;
        }
        runtime.stats.delayed.store(delayed, Ordering::Relaxed);
    }
}

/// One queue's depth, 0 when it cannot be read (missing, or the connection is gone).
async fn read(depth: &mut broker::depth::QueueDepth, queue: &str, timeout: Duration) -> u64 {
    match tokio::time::timeout(timeout, depth.read_queue(queue)).await {
        Ok(Ok(n)) => u64::from(n),
        _ => 0,
    }
}
