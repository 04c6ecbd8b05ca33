//! Pure decisions: what an attempt's result means for the message.
//!
//! Invariant: this module does no I/O. The worker hands it what happened (a FastCGI reply or an
//! error) and gets back exactly one [`Decision`]; only a [`Verdict::Success`] leads to a plain ack.

use std::time::Duration;

/// Response header of PHP's acknowledgement (`X-Agent-Ack: 1`), compared without case.
pub const ACK_HEADER: &str = "x-agent-ack";

/// Response header by which a receiver says it takes batch requests, with the batch protocol's
/// version (`X-Agent-Accepts-Batches: 2`), compared without case. The packages in `php/` send it
/// with every ack; the default `batch_max` sends batches only after it (docs/batches.md).
pub const ACCEPTS_BATCHES_HEADER: &str = "x-agent-accepts-batches";

/// Reason of a 401 reply: PHP refused the signature. The worker reports it, and the consumer
/// pauses the subject as it does for an unreachable FPM.
pub const SIGNATURE_REJECTED: &str = "signature_rejected";

/// Reason of a `503` whose body starts with `amqp-agent: `: the PHP package answers that it
/// cannot serve for its own configuration (no `AGENT_SIGNING_SECRET` in the pool, …), which
/// every message would meet. As for a refused signature, no attempt is used and the subject
/// pauses.
pub const RECEIVER_MISCONFIGURED: &str = "receiver_misconfigured";

/// The start of the packages' answers about their own configuration (`Response::PREFIX`).
pub const MISCONFIGURED_PREFIX: &[u8] = b"amqp-agent: ";

/// True for a verdict that is the configuration's fault, not the message's: the subject
/// pauses and the message keeps its attempt.
#[must_use]
pub(crate) fn pauses_subject(verdict: &Verdict) -> bool {
    matches!(
        verdict,
        Verdict::Transient { reason, .. }
            if *reason == SIGNATURE_REJECTED || *reason == RECEIVER_MISCONFIGURED
    )
}

/// Judges a reply whose head is `head` and whose stdout is `stdout`: as [`classify_reply`],
/// except that a `503` without `Retry-After` whose body starts with `amqp-agent: ` is the
/// package's configuration fault ([`RECEIVER_MISCONFIGURED`]).
#[must_use]
pub(crate) fn classify_full_reply(
    head: &ReplyHead,
    stdout: &[u8],
    require_ack: bool,
    excerpt: impl FnOnce() -> String,
) -> Verdict {
    let body = head_end(stdout).map_or(&[][..], |end| &stdout[end..]);
    if head.status == 503 && head.retry_after.is_none() && body.starts_with(MISCONFIGURED_PREFIX) {
        return Verdict::Transient {
            reason: RECEIVER_MISCONFIGURED,
            detail: format!("status 503: {}", excerpt()),
            status: Some(503),
            retry_after: None,
            counts: false,
        };
    }
    classify_reply(head, require_ack, excerpt)
}

/// The parsed head of a FastCGI (CGI) response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyHead {
    /// `Status:` header, 200 when PHP-FPM omitted it.
    pub status: u16,
    /// `X-Agent-Ack: 1` was present.
    pub acked: bool,
    /// `Retry-After` in seconds, when present and numeric.
    pub retry_after: Option<Duration>,
    /// The batch protocol version of `X-Agent-Accepts-Batches`, when present and numeric.
    pub accepts_batches: Option<u32>,
}

/// Parses the CGI header block at the start of FPM's stdout.
///
/// # Errors
/// When there is no header/body separator or the `Status` line is not a number.
pub fn parse_head(stdout: &[u8]) -> Result<ReplyHead, String> {
    let end = head_end(stdout).ok_or_else(|| "reply has no CGI header block".to_owned())?;
    let mut head = ReplyHead {
        status: 200,
        acked: false,
        retry_after: None,
        accepts_batches: None,
    };
    for line in stdout[..end].split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = String::from_utf8_lossy(&line[colon + 1..]);
        let value = value.trim();
        if name.eq_ignore_ascii_case(b"status") {
            let code = value.split_whitespace().next().unwrap_or_default();
            head.status = code
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=999).contains(c))
                .ok_or_else(|| format!("bad Status header `{value}`"))?;
        } else if name.eq_ignore_ascii_case(ACK_HEADER.as_bytes()) {
            head.acked = value == "1";
        } else if name.eq_ignore_ascii_case(b"retry-after") {
            head.retry_after = value.parse::<u64>().ok().map(Duration::from_secs);
        } else if name.eq_ignore_ascii_case(ACCEPTS_BATCHES_HEADER.as_bytes()) {
            head.accepts_batches = value.parse::<u32>().ok();
        }
    }
    Ok(head)
}

/// End of the CGI head (the index just after its blank line, `\r\n\r\n` or `\n\n`, whichever
/// comes first), if the head is complete. The one rule for single replies and batch replies.
#[must_use]
pub(crate) fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What one attempt amounted to, before the retry policy is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Handled: ack.
    Success,
    /// May succeed later.
    Transient {
        /// Short machine-readable reason.
        reason: &'static str,
        /// Human-readable detail (status line, error, PHP output excerpt).
        detail: String,
        /// HTTP status, when PHP answered.
        status: Option<u16>,
        /// PHP asked for at least this delay.
        retry_after: Option<Duration>,
        /// False when FPM could not be reached at all: the message was never tried, so the
        /// attempt does not count towards `max_attempts`.
        counts: bool,
    },
    /// Will never succeed: dead-letter now.
    Permanent {
        /// Short machine-readable reason.
        reason: &'static str,
        /// Human-readable detail.
        detail: String,
        /// HTTP status, when PHP answered.
        status: Option<u16>,
    },
}

/// Classifies a complete reply by the endpoint contract's outcome table.
#[must_use]
pub fn classify_reply(
    head: &ReplyHead,
    require_ack: bool,
    excerpt: impl FnOnce() -> String,
) -> Verdict {
    let status = head.status;
    match status {
        200..=299 if head.acked || !require_ack => Verdict::Success,
        200..=299 => Verdict::Transient {
            reason: "no_ack_header",
            detail: format!("status {status} without X-Agent-Ack: 1: {}", excerpt()),
            status: Some(status),
            retry_after: None,
            counts: true,
        },
        // The receiver refused the agent's signature: the secrets differ (a rotation done in
        // the wrong order). That is the configuration's fault, not the message's: it uses no
        // attempt, and the subject pauses (see `SIGNATURE_REJECTED`).
        401 => Verdict::Transient {
            reason: SIGNATURE_REJECTED,
            detail: format!(
                "status 401: PHP refused the agent's signature: {}",
                excerpt()
            ),
            status: Some(status),
            retry_after: None,
            counts: false,
        },
        408 | 425 | 429 | 500..=599 => Verdict::Transient {
            reason: "http_status",
            detail: format!("status {status}: {}", excerpt()),
            status: Some(status),
            retry_after: head.retry_after,
            counts: true,
        },
        400..=499 => Verdict::Permanent {
            reason: "rejected",
            detail: format!("status {status}: {}", excerpt()),
            status: Some(status),
        },
        _ => Verdict::Transient {
            reason: "http_status",
            detail: format!("unexpected status {status}: {}", excerpt()),
            status: Some(status),
            retry_after: None,
            counts: true,
        },
    }
}

/// The text of a reply body as the agent quotes it (log, `x-agent-last-error`, `dead-letters
/// list`): the body itself, except an HTML page (a framework's error page, whose cause is in
/// PHP's error log), which is reduced to `HTML page: <its title>`. The PHP packages answer their
/// own failures as one line of plain text (`amqp-agent: …`), which passes unchanged.
#[must_use]
pub(crate) fn reply_text(body: &str) -> std::borrow::Cow<'_, str> {
    let trimmed = body.trim_start();
    let head = trimmed.get(..trimmed.len().min(64)).unwrap_or(trimmed);
    let lower = head.to_ascii_lowercase();
    if !(lower.starts_with("<!doctype html") || lower.starts_with("<html")) {
        return std::borrow::Cow::Borrowed(body);
    }
    let title = html_title(body).unwrap_or_default();
    if title.is_empty() {
        "HTML page without a title".into()
    } else {
        format!("HTML page: {title}").into()
    }
}

/// The text of the first `<title>` of an HTML page: whitespace collapsed, the common entities
/// decoded. ASCII case-insensitive search, so byte offsets match the original.
fn html_title(page: &str) -> Option<String> {
    let lower = page.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = start + lower[start..].find("</title")?;
    let text = page[start..end]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    Some(
        text.replace("&quot;", "\"")
            .replace("&#039;", "'")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// What the worker does with the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Ack the delivery.
    Ack,
    /// Republish to the delay queue for `delay`, as attempt `next_attempt`, then ack.
    Retry {
        /// How long the message waits before its next attempt.
        delay: Duration,
        /// Attempt number of the republished message.
        next_attempt: u32,
    },
    /// Publish to `<queue>.dead`, then ack.
    DeadLetter {
        /// `x-agent-reason`.
        reason: &'static str,
    },
}

/// The retry policy: `delays[n-1]` after attempt n failed, dead-letter after `max_attempts`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Delay after each failed attempt; the last one repeats.
    pub delays: Vec<Duration>,
    /// Attempts before dead-lettering.
    pub max_attempts: u32,
    /// Cap on `Retry-After`.
    pub max_retry_after: Duration,
    /// Whether delay queues outside the schedule may be declared (`amqp.declare`). Without,
    /// `Retry-After` is rounded to a scheduled delay.
    pub extra_queues: bool,
}

impl RetryPolicy {
    /// The delay used for a `Retry-After` of `asked`, from a small fixed set so that the number
    /// of delay queues stays bounded: the scheduled delays, powers of two seconds, and the cap.
    /// Never shorter than `asked` unless the cap (or, without extra queues, the schedule) says so.
    #[must_use]
    pub(crate) fn retry_after_bucket(&self, asked: Duration) -> Duration {
        let asked = asked.min(self.max_retry_after);
        let scheduled = self.delays.iter().copied().filter(|d| *d >= asked).min();
        if !self.extra_queues {
            return scheduled.unwrap_or_else(|| self.delays.iter().copied().max().unwrap_or(asked));
        }
        let mut power = Duration::from_secs(1);
        while power < asked {
            power *= 2;
        }
        let power = power.min(self.max_retry_after);
        scheduled.map_or(power, |s| s.min(power))
    }

    /// Delay after attempt `attempt` (1-based) failed.
    #[must_use]
    pub(crate) fn delay_after(&self, attempt: u32) -> Duration {
        let index = usize::try_from(attempt.max(1) - 1).unwrap_or(usize::MAX);
        self.delays[index.min(self.delays.len() - 1)]
    }

    /// Decides what to do with a message whose attempt `attempt` ended in `verdict`.
    #[must_use]
    pub fn decide(&self, verdict: &Verdict, attempt: u32) -> Decision {
        match verdict {
            Verdict::Success => Decision::Ack,
            Verdict::Permanent { reason, .. } => Decision::DeadLetter { reason },
            Verdict::Transient {
                retry_after,
                counts,
                ..
            } => {
                if *counts && attempt >= self.max_attempts {
                    return Decision::DeadLetter {
                        reason: "max_attempts",
                    };
                }
                let base = self.delay_after(attempt);
                let delay = match retry_after {
                    Some(asked) if *asked > base => self.retry_after_bucket(*asked),
                    _ => base,
                };
                Decision::Retry {
                    delay,
                    next_attempt: if *counts { attempt + 1 } else { attempt },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
