//! Which message bodies the agent receives into memory.
//!
//! Invariant: at most one body over `limits.max_body_bytes` is held by the whole agent at a
//! time. Such a body is only ever dead-lettered (`body_too_large`), but the AMQP client would
//! otherwise receive every prefetched one whole, so memory would be bounded by the prefetch
//! window × the broker's `max_message_size` (128 MiB by default) instead of the agent's own
//! limit. The gate is asked when a content header announces a body's size, before any body byte
//! arrives (`vendor/lapin`, `BodyGate`): a body within the limit is received; the first oversized
//! one takes the permit and is received whole (so that its dead-letter copy keeps its bytes);
//! another oversized one meanwhile arrives without its body and goes back to its queue, unread,
//! once the permit is free again ([`OversizeGate::freed`]). Memory for bodies is therefore at most
//! the window × `max_body_bytes` + one broker-sized message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use lapin::{Admission, BodyPermit};
use tokio::sync::Notify;

/// How often a waiter looks at the permit without being woken.
pub(crate) const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// The agent's gate, shared by every subject's consumer channel.
#[derive(Debug)]
pub struct OversizeGate {
    /// `limits.max_body_bytes`; updated on reload.
    limit: AtomicU64,
    held: Arc<Held>,
}

#[derive(Debug, Default)]
struct Held {
    busy: AtomicBool,
    freed: Notify,
}

/// Kept with the oversized delivery that holds the permit; frees it when that delivery is
/// dropped (settled or abandoned).
struct Release(Arc<Held>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
        // One waiter per release: its body comes back and takes the permit; waking them all
        // would have the broker send every waiting body again for one to be kept.
        self.0.freed.notify_one();
    }
}

impl OversizeGate {
    /// A gate for bodies over `limit` bytes.
    #[must_use]
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: AtomicU64::new(limit as u64),
            held: Arc::default(),
        })
    }

    /// Follows a reloaded `limits.max_body_bytes`.
    pub(crate) fn set_limit(&self, limit: usize) {
        self.limit.store(limit as u64, Ordering::Relaxed);
    }

    /// Whether an oversized body is held now.
    #[must_use]
    pub(crate) fn busy(&self) -> bool {
        self.held.busy.load(Ordering::Acquire)
    }

    /// Resolves once no oversized body is held (at once when none is). A release wakes one
    /// waiter; the others look again every [`RECHECK`], so that none waits for good when the
    /// body the woken one sent back went to another consumer and the permit stayed free.
    pub(crate) async fn freed(&self) {
        while self.busy() {
            // A release between the check and this wait is not lost: `notify_one` keeps a
            // permit for the next waiter.
            let _ = tokio::time::timeout(RECHECK, self.held.freed.notified()).await;
        }
    }

    fn admission(&self, size: u64) -> Admission {
        if size <= self.limit.load(Ordering::Relaxed) {
            return Admission::Hold;
        }
        if self
            .held
            .busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            Admission::HoldWith(BodyPermit::new(Release(self.held.clone())))
        } else {
            Admission::Discard
        }
    }
}

/// The gate as the AMQP client sees it (set on each consumer channel).
#[derive(Debug, Clone)]
pub(crate) struct ChannelGate(pub Arc<OversizeGate>);

impl lapin::BodyGate for ChannelGate {
    fn admit(&self, size: u64) -> Admission {
        self.0.admission(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_within_the_limit_are_always_held() {
        let gate = OversizeGate::new(100);
        for size in [0, 1, 100] {
            assert!(matches!(gate.admission(size), Admission::Hold));
        }
        assert!(!gate.busy());
    }

    #[test]
    fn one_oversized_body_at_a_time() {
        let gate = OversizeGate::new(100);
        let Admission::HoldWith(permit) = gate.admission(101) else {
            panic!("the first oversized body takes the permit");
        };
        assert!(gate.busy());
        assert!(matches!(gate.admission(1 << 30), Admission::Discard));
        assert!(matches!(gate.admission(100), Admission::Hold));
        let clone = permit.clone();
        drop(permit);
        assert!(
            gate.busy(),
            "held while any clone of the delivery's permit lives"
        );
        drop(clone);
        assert!(!gate.busy());
        assert!(matches!(gate.admission(101), Admission::HoldWith(_)));
    }

    #[test]
    fn a_reload_moves_the_limit() {
        let gate = OversizeGate::new(100);
        gate.set_limit(1000);
        assert!(matches!(gate.admission(1000), Admission::Hold));
        assert!(matches!(gate.admission(1001), Admission::HoldWith(_)));
    }

    #[tokio::test]
    async fn freed_wakes_a_waiter_when_the_permit_is_dropped() {
        let gate = OversizeGate::new(1);
        gate.freed().await; // nothing held: at once
        let Admission::HoldWith(permit) = gate.admission(2) else {
            panic!("permit");
        };
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.freed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(permit);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("freed resolves once the permit is dropped")
            .unwrap();
    }
}
