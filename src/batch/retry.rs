//! The retry rule of a batch: when the request fails (timeout, broken connection, crashed FPM
//! child, `exit()` or a fatal error, a malformed or protocol-breaking reply, a reply that is not a
//! batch reply), the entries that already have an outcome keep it, and of the others **only the
//! entry PHP was running** (it said `start`, then nothing) gets the failure's verdict: a failed
//! attempt, exactly as a single message whose request failed that way. Every other entry without
//! an outcome never ran, or cannot be blamed: it is [`Fate::Alone`], returned to its queue
//! without using an attempt, and the broker's redelivery goes alone, one message per request
//! (`Batching::take`), where its own fate is decided as for any single message. So a message
//! that kills PHP costs its neighbours one more delivery, never an attempt, and is itself
//! retried and dead-lettered after `max_attempts` (or `poison`) as it would be alone.
//!
//! Invariant: pure. [`unsettled`] never returns an entry the reply answered; at most one entry
//! per failed request counts an attempt; an FPM that could not be reached at all counts none.

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
        /// True when FPM reset the connection: lines PHP wrote may have been dropped unread, so
        /// the last `start` read need not be the entry PHP was running; nobody is blamed.
        cut: bool,
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
    pub(crate) fn fpm(error: &FpmError) -> Self {
        Self::Fpm {
            reason: error.reason(),
            detail: error.to_string(),
            unreached: error.unreached(),
            cut: error.reply_may_be_cut(),
        }
    }

    /// The verdict of each entry without an outcome.
    #[must_use]
    pub(crate) fn verdict(&self) -> Verdict {
        match self {
            Self::Fpm {
                reason,
                detail,
                unreached,
                ..
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
    pub(crate) fn reason(&self) -> &'static str {
        match self.verdict() {
            Verdict::Success => "success",
            Verdict::Transient { reason, .. } | Verdict::Permanent { reason, .. } => reason,
        }
    }
}

/// What an entry without an outcome gets after a failed batch request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Settled with this verdict: the entry PHP was running (the failure's verdict, an attempt
    /// used), or every entry when FPM could not be reached (retried as the same attempt).
    Settle(Verdict),
    /// Back to its queue (nack with requeue), no attempt used: the redelivery goes alone.
    Alone,
}

/// The fate of each entry of `entries` that `answered` says has no outcome; `running` is the
/// entry PHP had started and not answered (`outcomes::Reader::running`).
#[must_use]
pub fn unsettled(
    entries: impl IntoIterator<Item = usize>,
    answered: impl Fn(usize) -> bool,
    running: Option<usize>,
    failure: &Failure,
) -> Vec<(usize, Fate)> {
    let unreached = matches!(
        failure,
        Failure::Fpm {
            unreached: true,
            ..
        }
    );
    // After a reset, the running entry read may be an innocent whose outcome line was dropped
    // with the connection: every entry goes alone, where its own fate is decided.
    let cut = matches!(failure, Failure::Fpm { cut: true, .. });
    let running = if cut { None } else { running };
    entries
        .into_iter()
        .filter(|i| !answered(*i))
        .map(|i| {
            if unreached || running == Some(i) {
                (i, Fate::Settle(failure.verdict()))
            } else {
                (i, Fate::Alone)
            }
        })
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

    fn settled(fates: &[(usize, Fate)]) -> Vec<(usize, &Verdict)> {
        fates
            .iter()
            .filter_map(|(i, f)| match f {
                Fate::Settle(v) => Some((*i, v)),
                Fate::Alone => None,
            })
            .collect()
    }

    fn alone(fates: &[(usize, Fate)]) -> Vec<usize> {
        fates
            .iter()
            .filter(|(_, f)| *f == Fate::Alone)
            .map(|(i, _)| *i)
            .collect()
    }

    #[test]
    fn only_the_running_entry_uses_an_attempt() {
        let answered = |i: usize| i < 20;
        let timeout = Failure::fpm(&FpmError::Timeout(Duration::from_secs(30)));
        let fates = unsettled(0..50, answered, Some(20), &timeout);
        assert_eq!(
            fates.iter().map(|f| f.0).collect::<Vec<_>>(),
            (20..50).collect::<Vec<_>>()
        );
        let counted = settled(&fates);
        assert_eq!(counted.len(), 1);
        assert_eq!(counted[0].0, 20);
        assert!(matches!(
            counted[0].1,
            Verdict::Transient {
                reason: "timeout",
                counts: true,
                ..
            }
        ));
        // A failed attempt: the next attempt is 2, or dead-letter after max_attempts.
        assert_eq!(
            policy().decide(counted[0].1, 1),
            Decision::Retry {
                delay: Duration::from_secs(1),
                next_attempt: 2
            }
        );
        assert_eq!(
            policy().decide(counted[0].1, 3),
            Decision::DeadLetter {
                reason: "max_attempts"
            }
        );
        // The 29 that never ran go back alone, whatever their attempt.
        assert_eq!(alone(&fates), (21..50).collect::<Vec<_>>());
        // Every entry answered: nothing to do, whatever happened after.
        assert!(unsettled(0..50, |_| true, None, &timeout).is_empty());
    }

    #[test]
    fn without_a_running_entry_nobody_is_blamed() {
        let lost = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let permanent = Verdict::Permanent {
            reason: "rejected",
            detail: "status 400: malformed batch".into(),
            status: Some(400),
        };
        let failures = [
            Failure::fpm(&FpmError::Io(lost)),
            Failure::fpm(&FpmError::Truncated(120)),
            Failure::fpm(&FpmError::Timeout(Duration::from_secs(1))),
            Failure::Protocol("a line without the request's nonce".into()),
            Failure::Incomplete("empty reply".into()),
            Failure::Whole(permanent),
        ];
        for failure in failures {
            let fates = unsettled([0, 2, 5], |i| i == 2, None, &failure);
            assert_eq!(alone(&fates), vec![0, 5], "{failure:?}");
        }
    }

    #[test]
    fn each_failure_counts_for_the_running_entry_as_it_would_for_one_message() {
        let lost = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "FPM closed");
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
            let fates = unsettled([0, 2, 5], |i| i == 2, Some(5), &failure);
            assert_eq!(alone(&fates), vec![0]);
            let counted = settled(&fates);
            assert_eq!(counted.len(), 1);
            match counted[0] {
                (
                    5,
                    Verdict::Transient {
                        reason: r,
                        counts: c,
                        ..
                    },
                ) => assert_eq!((*r, *c), (reason, counts), "{failure:?}"),
                other => panic!("{other:?}"),
            }
            assert!(matches!(
                policy().decide(counted[0].1, 1),
                Decision::Retry {
                    next_attempt: 2,
                    ..
                }
            ));
        }
    }

    /// A reset drops reply bytes the agent had not read yet: the last `start` it read may be an
    /// innocent whose outcome line was lost (an innocent used two attempts this way in a run of
    /// tests/batches a_message_that_kills_its_child_costs_no_neighbour). Nobody is blamed.
    #[test]
    fn after_a_reset_nobody_is_blamed() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let failure = Failure::fpm(&FpmError::Io(reset));
        let fates = unsettled(0..50, |i| i < 8, Some(8), &failure);
        assert!(settled(&fates).is_empty(), "{fates:?}");
        assert_eq!(alone(&fates), (8..50).collect::<Vec<_>>());
    }

    #[test]
    fn an_unreachable_fpm_retries_every_entry_as_the_same_attempt() {
        let unreachable = Failure::fpm(&FpmError::Connect {
            address: "127.0.0.1:9".into(),
            source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "no"),
        });
        let fates = unsettled(0..3, |_| false, None, &unreachable);
        let counted = settled(&fates);
        assert_eq!(counted.len(), 3);
        for (_, verdict) in counted {
            assert!(matches!(
                verdict,
                Verdict::Transient {
                    reason: "fpm_unavailable",
                    counts: false,
                    ..
                }
            ));
            assert!(matches!(
                policy().decide(verdict, 1),
                Decision::Retry {
                    next_attempt: 1,
                    ..
                }
            ));
        }
    }
}
