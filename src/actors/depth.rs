//! The depth of an auto subject's queue, for the autoscaler: a task of the subject's consumer
//! that reads it every `fpm.status_interval` on the consumer's connection (`broker::depth`).
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

/// Auto pools: reads the queue's depth every `fpm.status_interval` into the `queued` gauge, so
/// the autoscaler sees the messages waiting in the queue and not only the prefetched ones. A
/// failed read shows 0 (the autoscaler then sees the prefetched backlog only).
pub async fn watch(runtime: Arc<SubjectRuntime>, connection: Arc<Connection>) {
    let every = runtime.config.fpm.status_interval;
    let mut depth = broker::depth::QueueDepth::new(connection, &runtime.subject().queue);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let queued = match tokio::time::timeout(every.max(READ_TIMEOUT), depth.read()).await {
            Ok(Ok(n)) => u64::from(n),
            Ok(Err(e)) => {
                debug!(subject = %runtime.name, error = %e, "Queue depth not read");
                0
            }
            Err(_) => 0,
        };
        runtime.stats.queued.store(queued, Ordering::Relaxed);
    }
}
