//! Batches: several deliveries of one subject in one FastCGI request, each outcome streamed back
//! as PHP finishes the entry ([docs/batches.md](../../docs/batches.md)).
//!
//! - [`wire`]: the request body (versioned; raw bytes; every entry signed on its own).
//! - [`outcomes`]: the incremental parser of the reply (one outcome line per entry).
//! - [`retry`]: what the entries without an outcome get when the request failed: only the one
//!   PHP was running uses an attempt; the others go back to the queue and are retried alone.
//!
//! Invariant: pure, no I/O. An entry is settled at most once: by its own outcome line, or, when
//! the request ends without one, by [`retry::unsettled`]; an entry that has an outcome is never
//! counted as a failed attempt again, and no entry uses an attempt for another's failure.

pub mod auto;
pub mod outcomes;
pub mod retry;
pub mod wire;

use std::time::Duration;

use crate::config::{Config, SubjectConfig};

/// How a consumer forms batches (from the subject's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most deliveries in one request (1: every message is its own request, as without batches).
    pub max: usize,
    /// How long an idle worker may wait for the backlog to fill a batch.
    pub wait: Duration,
    /// Most bytes of one batch body, every byte of every entry counted (head, fields with the
    /// headers JSON, body); an entry larger than this alone goes as a single request.
    pub max_bytes: usize,
}

impl Batching {
    /// From the subject's `batch_max` and `batch_wait` and `limits.max_batch_bytes`.
    #[must_use]
    pub(crate) fn of(config: &Config, subject: &SubjectConfig) -> Self {
        Self {
            max: usize::from(subject.batch_ceiling().max(1)),
            wait: subject.batch_wait,
            max_bytes: config.limits.max_batch_bytes,
        }
    }

    /// How many of the backlog's deliveries (entry size from [`entry_bytes`], redelivered;
    /// oldest first) go into the next request: at least one, at most `max`, no more than
    /// `max_bytes` (an entry over it goes alone), and a redelivery only alone: it may have been
    /// in flight during a crash (crash-loop protection may make it run alone), or it was sent
    /// back from a broken batch (`retry::Fate::Alone`) to be tried on its own.
    #[must_use]
    pub(crate) fn take(&self, backlog: impl IntoIterator<Item = (usize, bool)>) -> usize {
        let mut n = 0;
        let mut bytes = 0usize;
        for (size, redelivered) in backlog.into_iter().take(self.max) {
            bytes = bytes.saturating_add(size);
            if n > 0 && (bytes > self.max_bytes || redelivered) {
                break;
            }
            n += 1;
            if bytes > self.max_bytes || redelivered {
                break;
            }
        }
        n.max(1)
    }

    /// True when the next `max` entries fit `max_bytes` even with the largest headers JSON each
    /// may carry (`headers_at_most`, `limits.max_headers_bytes`): [`Self::take`] then takes the
    /// same number whatever their headers are, so the consumer need not encode them to count
    /// their bytes (the worker encodes them anyway).
    #[must_use]
    pub(crate) fn fits_at_most(
        &self,
        bodies: impl IntoIterator<Item = usize>,
        headers_at_most: usize,
    ) -> bool {
        bodies
            .into_iter()
            .take(self.max)
            .try_fold(0usize, |sum, body| {
                sum.checked_add(entry_bytes(body, headers_at_most))
            })
            .is_some_and(|sum| sum <= self.max_bytes)
    }

    /// True when an idle worker should wait for more deliveries: batches are on, the backlog
    /// holds fewer than `max` and the oldest has waited less than `wait`.
    #[must_use]
    pub(crate) fn should_wait(&self, backlog: usize, oldest_waited: Duration) -> bool {
        self.max > 1 && backlog < self.max && oldest_waited < self.wait
    }
}

/// Bytes an entry's fields other than the headers JSON take at most in practice (names, ids,
/// route, signature, trace context, head line). An estimate: the worker checks the exact size
/// as it encodes (`wire::Encoder::entry_len`) and sends an entry that does not fit back alone.
pub const ENTRY_FIELDS_RESERVE: usize = 1024;

/// The size a delivery is expected to take in a batch body: its body, its headers as JSON and
/// [`ENTRY_FIELDS_RESERVE`].
#[must_use]
pub(crate) fn entry_bytes(body: usize, headers_json: usize) -> usize {
    body.saturating_add(headers_json)
        .saturating_add(ENTRY_FIELDS_RESERVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batching(max: usize, max_bytes: usize) -> Batching {
        Batching {
            max,
            wait: Duration::from_millis(50),
            max_bytes,
        }
    }

    #[test]
    fn takes_up_to_max_within_the_byte_bound() {
        let b = batching(3, 100);
        let fresh = |sizes: &[usize]| sizes.iter().map(|s| (*s, false)).collect::<Vec<_>>();
        assert_eq!(b.take(fresh(&[10, 10, 10, 10])), 3);
        assert_eq!(b.take(fresh(&[10])), 1);
        assert_eq!(b.take(fresh(&[60, 50, 10])), 1);
        assert_eq!(b.take(fresh(&[50, 50, 10])), 2);
        // A body over the bound on its own goes alone; one behind it waits for the next request.
        assert_eq!(b.take(fresh(&[500, 1])), 1);
        assert_eq!(b.take(fresh(&[1, 500])), 1);
        assert_eq!(batching(1, 100).take(fresh(&[1, 1, 1])), 1);
    }

    #[test]
    fn headers_count_toward_the_bound() {
        let b = batching(50, 64 * 1024);
        // Tiny bodies with 4 KiB of headers each: about 12 fit, not 50.
        let entries: Vec<_> = (0..50).map(|_| (entry_bytes(40, 4106), false)).collect();
        let n = b.take(entries);
        assert!((10..=13).contains(&n), "{n}");
        assert!(n * entry_bytes(40, 4106) <= 64 * 1024);
    }

    #[test]
    fn entries_that_fit_with_the_largest_headers_need_no_encoding() {
        let b = batching(3, 3 * entry_bytes(100, 1000));
        assert!(b.fits_at_most([100, 100, 100], 1000));
        assert!(
            b.fits_at_most([100, 100, 100, 5_000_000], 1000),
            "only max entries count"
        );
        assert!(!b.fits_at_most([100, 100, 101], 1000));
        assert!(!b.fits_at_most([100, 100, 100], 1001));
        assert!(!b.fits_at_most([usize::MAX, 1], 0), "no overflow");
        // Where it says yes, take() counts the same whatever the headers are (each ≤ the most).
        let bodies = [100, 100, 100, 100];
        assert!(b.fits_at_most(bodies, 1000));
        for headers in [0, 2, 999, 1000] {
            let exact = bodies.map(|body| (entry_bytes(body, headers), false));
            let upper = bodies.map(|body| (entry_bytes(body, 1000), false));
            assert_eq!(b.take(exact), b.take(upper));
        }
    }

    #[test]
    fn a_redelivery_goes_alone() {
        let b = batching(10, 100);
        assert_eq!(b.take([(1, true), (1, false)]), 1);
        assert_eq!(b.take([(1, false), (1, false), (1, true), (1, false)]), 2);
    }

    #[test]
    fn waits_only_with_batches_and_a_short_backlog_within_the_wait() {
        let b = batching(10, 1000);
        assert!(b.should_wait(3, Duration::from_millis(10)));
        assert!(!b.should_wait(10, Duration::from_millis(10)));
        assert!(!b.should_wait(3, Duration::from_millis(50)));
        assert!(!batching(1, 1000).should_wait(0, Duration::ZERO));
        let no_wait = Batching {
            wait: Duration::ZERO,
            ..b
        };
        assert!(!no_wait.should_wait(1, Duration::ZERO));
    }
}
