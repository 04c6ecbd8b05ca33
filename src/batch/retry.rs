//! The retry rule of a batch: when the request fails (timeout, broken connection, crashed FPM
//! child, malformed or protocol-breaking reply), the entries that already have an outcome keep
//! it, and only the entries without one get the failure's verdict: a failed attempt, exactly as
//! a single message whose request failed that way.
//!
//! Invariant: pure. [`unsettled`] never returns an entry the reply answered, and an entry's
//! attempt counts exactly when the same failure would count for a single message (an FPM that
//! could not be reached at all does not count).

use crate::fastcgi::FpmError;
use crate::outcome::Verdict;

/// Why a batch request ended without an outcome for every entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The FastCGI request failed (`FpmError::reason()`, its text, and whether it certainly
    /// never reached PHP).
    Fpm {
        /// Short reason (`timeout`, `fpm_connection_lost`, `fpm_truncated_reply`, …).
        reason: &'static str,
        /// The error's text.
        detail: String,
        /// True when FPM could not be reached: no entry was tried.
        unreached: bool,
    },
    /// The reply broke the batch protocol (unknown or repeated index, a line that is not an
    /// outcome, output after the end).
    Protocol(String),
    /// The reply ended cleanly but without an outcome for some entries (PHP died after the
    /// head, or wrote fewer lines than entries).
    Incomplete(String),
    /// Not a batch reply: every entry gets this verdict, as a single message with that reply.
    Whole(Verdict),
}

impl Failure {
    /// From the FastCGI error of the request.
    #[must_use]
    pub fn fpm(error: &FpmError) -> Self {
        Self::Fpm {
            reason: error.reason(),
            detail: error.to_string(),
            unreached: error.unreached(),
        }
    }

    /// The verdict of each entry without an outcome.
    #[must_use]
    pub fn verdict(&self) -> Verdict {
        match self {
            Self::Fpm {
                reason,
                detail,
                unreached,
            } => Verdict::Transient {
                reason,
                detail: detail.clone(),
                status: None,
                retry_after: None,
                counts: !unreached,
            },
            Self::Protocol(detail) => Verdict::Transient {
                reason: "batch_protocol_error",
                detail: detail.clone(),
                status: None,
                retry_after: None,
                counts: true,
            },
            Self::Incomplete(detail) => Verdict::Transient {
                reason: "fpm_malformed_reply",
                detail: detail.clone(),
                status: None,
                retry_after: None,
                counts: true,
            },
            Self::Whole(verdict) => verdict.clone(),
        }
    }

    /// Short reason for logs and metrics.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self.verdict() {
            Verdict::Success => "success",
            Verdict::Transient { reason, .. } | Verdict::Permanent { reason, .. } => reason,
        }
    }
}

/// The verdict of each entry of `entries` that `answered` says has no outcome.
#[must_use]
pub fn unsettled(
    entries: impl IntoIterator<Item = usize>,
    answered: impl Fn(usize) -> bool,
    failure: &Failure,
) -> Vec<(usize, Verdict)> {
    entries
        .into_iter()
        .filter(|i| !answered(*i))
        .map(|i| (i, failure.verdict()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Decision, RetryPolicy};
    use std::time::Duration;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            delays: vec![Duration::from_secs(1), Duration::from_secs(5)],
            max_attempts: 3,
            max_retry_after: Duration::from_secs(60),
            extra_queues: true,
        }
    }

    #[test]
    fn only_entries_without_an_outcome_fail() {
        let answered = |i: usize| i < 20;
        let timeout = Failure::fpm(&FpmError::Timeout(Duration::from_secs(30)));
        let failed = unsettled(0..50, answered, &timeout);
        assert_eq!(
            failed.iter().map(|f| f.0).collect::<Vec<_>>(),
            (20..50).collect::<Vec<_>>()
        );
        for (_, verdict) in &failed {
            assert!(matches!(
                verdict,
                Verdict::Transient {
                    reason: "timeout",
                    counts: true,
                    ..
                }
            ));
            // A failed attempt: the next attempt is 2, or dead-letter after max_attempts.
            assert_eq!(
                policy().decide(verdict, 1),
                Decision::Retry {
                    delay: Duration::from_secs(1),
                    next_attempt: 2
                }
            );
            assert_eq!(
                policy().decide(verdict, 3),
                Decision::DeadLetter {
                    reason: "max_attempts"
                }
            );
        }
        // Every entry answered: nothing to do, whatever happened after.
        assert!(unsettled(0..50, |_| true, &timeout).is_empty());
    }

    #[test]
    fn each_failure_counts_as_it_would_for_one_message() {
        let lost = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let cases = [
            (
                Failure::fpm(&FpmError::Io(lost)),
                "fpm_connection_lost",
                true,
            ),
            (
                Failure::fpm(&FpmError::Truncated(120)),
                "fpm_truncated_reply",
                true,
            ),
            (
                Failure::fpm(&FpmError::Connect {
                    address: "127.0.0.1:9".into(),
                    source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "no"),
                }),
                "fpm_unavailable",
                false,
            ),
            (
                Failure::Protocol("duplicate outcome for entry 3".into()),
                "batch_protocol_error",
                true,
            ),
            (
                Failure::Incomplete("ended early".into()),
                "fpm_malformed_reply",
                true,
            ),
        ];
        for (failure, reason, counts) in cases {
            let failed = unsettled([0, 2, 5], |i| i == 2, &failure);
            assert_eq!(failed.iter().map(|f| f.0).collect::<Vec<_>>(), vec![0, 5]);
            match &failed[0].1 {
                Verdict::Transient {
                    reason: r,
                    counts: c,
                    ..
                } => assert_eq!((*r, *c), (reason, counts), "{failure:?}"),
                other => panic!("{other:?}"),
            }
            // Unreached: retried as the same attempt.
            let next = if counts { 2 } else { 1 };
            assert!(matches!(
                policy().decide(&failed[0].1, 1),
                Decision::Retry { next_attempt, .. } if next_attempt == next
            ));
        }
    }

    #[test]
    fn a_whole_reply_judges_every_remaining_entry_like_one_message() {
        let permanent = Verdict::Permanent {
            reason: "rejected",
            detail: "status 401: invalid signature".into(),
            status: Some(401),
        };
        let failed = unsettled(0..3, |_| false, &Failure::Whole(permanent.clone()));
        assert_eq!(failed.len(), 3);
        assert!(failed.iter().all(|(_, v)| *v == permanent));
        assert_eq!(
            policy().decide(&failed[0].1, 1),
            Decision::DeadLetter { reason: "rejected" }
        );
    }
}
