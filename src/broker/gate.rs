//! Which message bodies the agent receives into memory.
//!
//! Invariants:
//! - **One oversized body.** At most one body over `limits.max_body_bytes` is held by the whole
//!   agent at a time. Such a body is only ever dead-lettered (`body_too_large`), but the AMQP
//!   client would otherwise receive every prefetched one whole, so memory would be bounded by the
//!   prefetch window × the broker's `max_message_size` (128 MiB by default) instead of the
//!   agent's own limit. The first oversized one takes the permit and is received whole (so that
//!   its dead-letter copy keeps its bytes); another oversized one meanwhile arrives without its
//!   body and goes back to its queue, unread, once the permit is free again
//!   ([`OversizeGate::freed`]).
//! - **The budget, in bytes.** The bodies within the limit that a subject's prefetched deliveries
//!   hold add up to at most its share of `limits.memory_budget` (the budget over the number of
//!   subjects), counted from each content header's announced size until the delivery is
//!   dropped; a body that would go over it arrives without its bytes and goes back to its queue,
//!   unread, once the subject's held bytes leave it room ([`SubjectBytes::room`]). A body is
//!   always let in when the subject holds none, so one larger than the share still gets through
//!   (`check-config` warns when `max_body_bytes` is over the share). A subject that cannot hand
//!   its deliveries on (FPM down, paused) fills only its own share.
//! - **One count per subject, for the agent's life.** The gate keeps each subject's count
//!   ([`OversizeGate::bytes_of`]): a consumer that reconnects, or a reload, counts on from what
//!   the deliveries of its earlier channel still hold (a worker may still be handling them), so
//!   the old and the new deliveries together stay within the share. `/status` and
//!   `amqp_agent_body_bytes_held` show the count.
//!
//! Both are asked when a content header announces a body's size, before any body byte arrives
//! (`vendor/lapin`, `BodyGate`). Memory for bodies is therefore at most `limits.memory_budget` +
//! one broker-sized message, whatever the prefetch window.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lapin::{Admission, BodyPermit};
use tokio::sync::Notify;

/// How often a waiter looks at the permit without being woken.
pub(crate) const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// The agent's gate, shared by every subject's consumer channel.
#[derive(Debug)]
pub struct OversizeGate {
    /// `limits.max_body_bytes`; updated on reload.
    limit: AtomicU64,
    /// Each subject's share of `limits.memory_budget`; updated on reload.
    share: AtomicU64,
    held: Arc<Held>,
    /// Each subject's count, created at its first consumer channel and kept from then on.
    subjects: Mutex<BTreeMap<String, Arc<SubjectBytes>>>,
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
            share: AtomicU64::new(u64::MAX),
            held: Arc::default(),
            subjects: Mutex::default(),
        })
    }

    /// The count of `subject`'s held body bytes: the same one at every call, so that each
    /// consumer channel of the subject (after a reconnect, a reload) counts against it.
    pub(crate) fn bytes_of(&self, subject: &str) -> Arc<SubjectBytes> {
        let mut subjects = self.subjects.lock().expect("body gate lock");
        subjects.entry(subject.to_owned()).or_default().clone()
    }

    /// The body bytes `subject`'s deliveries hold now (0 before its first channel).
    #[must_use]
    pub fn held_by(&self, subject: &str) -> u64 {
        let subjects = self.subjects.lock().expect("body gate lock");
        subjects.get(subject).map_or(0, |bytes| bytes.held())
    }

    /// Each subject's share of `limits.memory_budget`, in bytes.
    #[must_use]
    pub fn share(&self) -> u64 {
        self.share.load(Ordering::Relaxed)
    }

    /// Follows a reloaded `limits.max_body_bytes`.
    pub(crate) fn set_limit(&self, limit: usize) {
        self.limit.store(limit as u64, Ordering::Relaxed);
    }

    /// Follows `config`'s `limits.max_body_bytes`, and its `limits.memory_budget` shared by its
    /// subjects.
    pub(crate) fn follow(&self, config: &crate::config::Config) {
        self.set_limit(config.limits.max_body_bytes);
        self.set_budget(config.limits.memory_budget, config.subjects.len());
    }

    /// Follows `limits.memory_budget` and the number of subjects it is shared by.
    pub(crate) fn set_budget(&self, budget: u64, subjects: usize) {
        let share = budget / (subjects.max(1) as u64);
        self.share.store(share, Ordering::Relaxed);
    }

    /// Whether a body of `size` bytes is over `limits.max_body_bytes`.
    #[must_use]
    pub(crate) fn oversized(&self, size: u64) -> bool {
        size > self.limit.load(Ordering::Relaxed)
    }

    /// Resolves once a body of `size` bytes would be let in: the oversized permit is free, or
    /// (within the limit) `bytes` leave it room in the subject's share.
    pub(crate) async fn wait_for(&self, bytes: &SubjectBytes, size: u64) {
        if self.oversized(size) {
            self.freed().await;
        } else {
            bytes.room(size, &self.share).await;
        }
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

    fn admission(&self, size: u64, bytes: &Arc<SubjectBytes>) -> Admission {
        if !self.oversized(size) {
            return bytes.reserve(size, self.share.load(Ordering::Relaxed));
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

/// The bytes of the bodies (within the limit) that one subject's deliveries hold.
#[derive(Debug, Default)]
pub(crate) struct SubjectBytes {
    held: AtomicU64,
    /// Deferred deliveries waiting for room: a release wakes them only when there are some.
    waiting: AtomicUsize,
    freed: Notify,
}

/// Kept with a delivery whose body was counted; gives its bytes back when it is dropped.
struct Counted {
    bytes: Arc<SubjectBytes>,
    size: u64,
}

impl Drop for Counted {
    fn drop(&mut self) {
        // SeqCst with `room`'s pair: a waiter that registered after this load sees the bytes
        // given back; one that registered before it is woken.
        self.bytes.held.fetch_sub(self.size, Ordering::SeqCst);
        if self.bytes.waiting.load(Ordering::SeqCst) > 0 {
            self.bytes.freed.notify_waiters();
        }
    }
}

impl SubjectBytes {
    /// Bytes held now.
    #[must_use]
    pub(crate) fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    fn fits(held: u64, size: u64, share: u64) -> bool {
        held == 0 || held.saturating_add(size) <= share
    }

    fn reserve(self: &Arc<Self>, size: u64, share: u64) -> Admission {
        if size == 0 {
            return Admission::Hold;
        }
        let taken = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Self::fits(held, size, share).then(|| held + size)
            });
        if taken.is_err() {
            return Admission::Discard;
        }
        Admission::HoldWith(BodyPermit::new(Counted {
            bytes: self.clone(),
            size,
        }))
    }

    /// Resolves once a body of `size` bytes fits `share` (read again at each look, so that a
    /// reload is followed). A release wakes every waiter; each also looks again every
    /// [`RECHECK`].
    async fn room(&self, size: u64, share: &AtomicU64) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        loop {
            // Created before the look: `notify_waiters` reaches it from here on.
            let notified = self.freed.notified();
            if Self::fits(
                self.held.load(Ordering::SeqCst),
                size,
                share.load(Ordering::Relaxed),
            ) {
                break;
            }
            let _ = tokio::time::timeout(RECHECK, notified).await;
        }
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The gate as the AMQP client sees it (set on each consumer channel): the agent's oversized
/// permit and limits, and the subject's own bytes.
#[derive(Debug, Clone)]
pub(crate) struct ChannelGate {
    pub(crate) gate: Arc<OversizeGate>,
    pub(crate) bytes: Arc<SubjectBytes>,
}

impl lapin::BodyGate for ChannelGate {
    fn admit(&self, size: u64) -> Admission {
        self.gate.admission(size, &self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(gate: &OversizeGate, size: u64) -> Admission {
        gate.admission(size, &Arc::default())
    }

    #[test]
    fn bodies_within_the_limit_are_held_with_the_default_budget() {
        let gate = OversizeGate::new(100);
        gate.set_budget(1 << 30, 2);
        assert!(matches!(admit(&gate, 0), Admission::Hold));
        for size in [1, 100] {
            assert!(matches!(admit(&gate, size), Admission::HoldWith(_)));
        }
        assert!(!gate.busy());
    }

    #[test]
    fn one_oversized_body_at_a_time() {
        let gate = OversizeGate::new(100);
        let Admission::HoldWith(permit) = admit(&gate, 101) else {
            panic!("the first oversized body takes the permit");
        };
        assert!(gate.busy());
        assert!(matches!(admit(&gate, 1 << 30), Admission::Discard));
        assert!(matches!(admit(&gate, 100), Admission::HoldWith(_)));
        let clone = permit.clone();
        drop(permit);
        assert!(
            gate.busy(),
            "held while any clone of the delivery's permit lives"
        );
        drop(clone);
        assert!(!gate.busy());
        assert!(matches!(admit(&gate, 101), Admission::HoldWith(_)));
    }

    #[test]
    fn a_reload_moves_the_limit() {
        let gate = OversizeGate::new(100);
        gate.set_limit(1000);
        assert!(!gate.oversized(1000));
        assert!(gate.oversized(1001));
        let permit = admit(&gate, 1001);
        assert!(matches!(permit, Admission::HoldWith(_)));
        assert!(gate.busy(), "1001 took the oversized permit");
    }

    #[test]
    fn a_subjects_bodies_stay_within_its_share_of_the_budget() {
        let gate = OversizeGate::new(1000);
        gate.set_budget(1000, 2); // 500 each
        let (event, command) = (Arc::<SubjectBytes>::default(), Arc::default());
        let mut held = Vec::new();
        for _ in 0..5 {
            let Admission::HoldWith(p) = gate.admission(100, &event) else {
                panic!("within the share");
            };
            held.push(p);
        }
        assert_eq!(event.held(), 500);
        assert!(matches!(gate.admission(1, &event), Admission::Discard));
        assert!(
            matches!(gate.admission(500, &command), Admission::HoldWith(_)),
            "the other subject's share is its own"
        );
        let clone = held[0].clone();
        drop(held.remove(0));
        assert_eq!(event.held(), 500, "counted while a clone lives");
        drop(clone);
        assert_eq!(event.held(), 400);
        let again = gate.admission(100, &event);
        assert!(matches!(again, Admission::HoldWith(_)));
        assert!(matches!(gate.admission(1, &event), Admission::Discard));
        drop((again, held));
        assert_eq!(event.held(), 0, "every byte given back");
        assert!(!gate.busy(), "within the limit: never the oversized permit");
    }

    /// A consumer's channel after a reconnect (or a reload) asks the gate for its subject's
    /// count again and gets the same one: what the earlier channel's deliveries still hold
    /// counts against the share, and `held_by` shows the sum.
    #[test]
    fn a_subjects_count_outlives_its_channel() {
        let gate = OversizeGate::new(1000);
        gate.set_budget(1000, 2); // 500 each
        assert_eq!((gate.held_by("event"), gate.share()), (0, 500));
        let first = ChannelGate {
            gate: gate.clone(),
            bytes: gate.bytes_of("event"),
        };
        let Admission::HoldWith(old) = lapin::BodyGate::admit(&first, 400) else {
            panic!("within the share");
        };
        drop(first);
        let second = ChannelGate {
            gate: gate.clone(),
            bytes: gate.bytes_of("event"),
        };
        assert!(
            matches!(lapin::BodyGate::admit(&second, 200), Admission::Discard),
            "the old channel's 400 bytes still count"
        );
        assert_eq!(gate.held_by("event"), 400);
        let other = ChannelGate {
            gate: gate.clone(),
            bytes: gate.bytes_of("command"),
        };
        assert!(matches!(
            lapin::BodyGate::admit(&other, 500),
            Admission::HoldWith(_)
        ));
        drop(old);
        assert_eq!(gate.held_by("event"), 0);
        let Admission::HoldWith(new) = lapin::BodyGate::admit(&second, 200) else {
            panic!("room once the old body is dropped");
        };
        assert_eq!(gate.held_by("event"), 200);
        drop(new);
        assert_eq!(gate.held_by("unknown"), 0);
    }

    #[test]
    fn a_body_larger_than_the_share_is_let_in_alone() {
        let gate = OversizeGate::new(1000);
        gate.set_budget(100, 1);
        let bytes = Arc::<SubjectBytes>::default();
        let Admission::HoldWith(big) = gate.admission(900, &bytes) else {
            panic!("nothing held: let in");
        };
        assert!(matches!(gate.admission(1, &bytes), Admission::Discard));
        drop(big);
        assert_eq!(bytes.held(), 0);
        assert!(matches!(
            gate.admission(900, &bytes),
            Admission::HoldWith(_)
        ));
    }

    #[tokio::test]
    async fn a_deferred_body_waits_for_room_in_its_share() {
        let gate = OversizeGate::new(1000);
        gate.set_budget(300, 1);
        let bytes = Arc::<SubjectBytes>::default();
        let Admission::HoldWith(first) = gate.admission(200, &bytes) else {
            panic!("room");
        };
        let Admission::HoldWith(second) = gate.admission(100, &bytes) else {
            panic!("room");
        };
        assert!(matches!(gate.admission(150, &bytes), Admission::Discard));
        let waiter = tokio::spawn({
            let (gate, bytes) = (gate.clone(), bytes.clone());
            async move { gate.wait_for(&bytes, 150).await }
        });
        tokio::task::yield_now().await;
        drop(second); // 200 held: 150 more would be 350
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "no room yet");
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("room once the first body is dropped")
            .unwrap();
        assert_eq!(bytes.waiting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn freed_wakes_a_waiter_when_the_permit_is_dropped() {
        let gate = OversizeGate::new(1);
        gate.freed().await; // nothing held: at once
        let Admission::HoldWith(permit) = admit(&gate, 2) else {
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
