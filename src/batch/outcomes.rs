//! The reply of a batch, read as it arrives (docs/batches.md, "The reply").
//!
//! ```text
//! Status: 200\r\n X-Agent-Batch: 2\r\n … \r\n      the CGI head, once, before the first line
//! <nonce> <index> start\n                          PHP starts handling the entry
//! <nonce> <index> ack\n                            handled
//! <nonce> <index> retry <status> <seconds|-> <reason>\n   408/425/429/5xx: retry
//! <nonce> <index> reject <status> <reason>\n       other 4xx: dead-letter
//! <nonce> done <count>\n                           optional trailer: every entry answered
//! ```
//!
//! Every line carries the request's nonce (`wire::Encoder::new`): a random token the agent
//! chose for this request, so output that a handler leaks into the reply (PHP flushes its output
//! buffers on `exit()` and on a fatal error) cannot pass for an outcome. An outcome is accepted
//! only for the entry PHP said it started and has not answered yet, one entry at a time, so the
//! reader also knows which entry PHP was running when a request breaks ([`Reader::running`]).
//!
//! An outcome line means for its entry exactly what a reply with that status (and
//! `X-Agent-Ack: 1` for `ack`, `Retry-After` for `retry`) means for a single message
//! (`outcome::classify_reply`). A reason's bytes that are not UTF-8 are replaced (U+FFFD), never
//! an error. A reply that is not a batch reply (no `X-Agent-Batch: 2`: a PHP error page, a
//! refusal, a receiver that does not know this version) judges no entry: see `retry`.
//!
//! Invariant: each expected entry gets at most one verdict from the reply, and only after its
//! `start` line; a line without the nonce, an unknown, repeated or unstarted index, a line that
//! is not an outcome, an outcome that contradicts its status or anything after the trailer or
//! the request's end is a [`ProtocolError`], after which nothing more is read.

use std::time::Duration;

use crate::outcome::{self, ReplyHead, Verdict};

use super::retry::Failure;

/// Longest outcome line (a reason is at most about 1 KiB).
pub const MAX_LINE: usize = 4096;
/// Longest CGI head.
const MAX_HEAD: usize = 16 * 1024;
/// Body bytes kept of a reply that is not a batch reply, for the last-error excerpt.
const KEEP_EXCERPT: usize = 512;

/// The reply broke the batch protocol: the request is given up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("batch reply: {0}")]
pub struct ProtocolError(pub String);

#[derive(Debug)]
enum State {
    /// Reading the CGI head.
    Head,
    /// A batch reply: reading outcome lines.
    Lines,
    /// Not a batch reply: its head judges every entry; the body is kept for the excerpt.
    Whole(ReplyHead),
    /// The `done` trailer was read.
    Done,
    /// The request ended ([`Reader::finish`]).
    Ended,
    /// A protocol error was found.
    Failed(ProtocolError),
}

/// Parses a batch reply incrementally: feed it stdout as it arrives, act on each verdict.
#[derive(Debug)]
pub struct Reader {
    /// The request's entry indices, sorted, without repeats.
    expected: Vec<usize>,
    /// Whether the entry at the same position in `expected` got its verdict (a vector beside a
    /// sorted one instead of two `BTreeSet`s: two lookups per line, 50 lines a batch).
    answered: Vec<bool>,
    answered_count: usize,
    /// The entry PHP started and has not answered yet.
    running: Option<usize>,
    /// The request's nonce and a space: the prefix of every line.
    prefix: String,
    require_ack: bool,
    buf: Vec<u8>,
    state: State,
    /// The `Status` of the CGI head, once read.
    status: Option<u16>,
}

impl Reader {
    /// A reader for a request whose entries have these indices and whose body carried `nonce`.
    /// `require_ack` is `fpm.require_ack_header` (a whole reply with 2xx needs `X-Agent-Ack: 1`).
    #[must_use]
    pub fn new(indices: impl IntoIterator<Item = usize>, require_ack: bool, nonce: &str) -> Self {
        let mut expected: Vec<usize> = indices.into_iter().collect();
        expected.sort_unstable();
        expected.dedup();
        Self {
            answered: vec![false; expected.len()],
            expected,
            answered_count: 0,
            running: None,
            prefix: format!("{nonce} "),
            require_ack,
            buf: Vec::new(),
            state: State::Head,
            status: None,
        }
    }

    /// Entries that have no verdict from the reply yet, in order.
    pub(crate) fn pending(&self) -> impl Iterator<Item = usize> + '_ {
        self.expected
            .iter()
            .zip(&self.answered)
            .filter(|(_, answered)| !**answered)
            .map(|(index, _)| *index)
    }

    /// How many entries have no verdict from the reply yet.
    #[must_use]
    pub(crate) fn unanswered(&self) -> usize {
        self.expected.len() - self.answered_count
    }

    /// True when entry `index` got its verdict from the reply.
    #[must_use]
    pub fn answered(&self, index: usize) -> bool {
        self.expected
            .binary_search(&index)
            .is_ok_and(|at| self.answered[at])
    }

    /// The entry PHP said it started and did not answer: the one it was running when the reply
    /// ended or broke, if any.
    #[must_use]
    pub fn running(&self) -> Option<usize> {
        self.running
    }

    /// The reply's HTTP status, once its head was read.
    #[must_use]
    pub(crate) fn status(&self) -> Option<u16> {
        self.status
    }

    /// The protocol error found, if any.
    #[must_use]
    pub(crate) fn error(&self) -> Option<&ProtocolError> {
        match &self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Reads the next stdout bytes; `emit` gets each complete outcome as (index, verdict).
    ///
    /// # Errors
    /// The first [`ProtocolError`]; it is kept and returned again by every later call.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        emit: &mut impl FnMut(usize, Verdict),
    ) -> Result<(), ProtocolError> {
        loop {
            match &self.state {
                State::Failed(e) => return Err(e.clone()),
                State::Ended => {
                    if data.is_empty() {
                        return Ok(());
                    }
                    return self.fail("output after the end of the request".to_owned());
                }
                State::Whole(_) => {
                    let room = KEEP_EXCERPT.saturating_sub(self.buf.len());
                    self.buf.extend_from_slice(&data[..room.min(data.len())]);
                    return Ok(());
                }
                State::Done => {
                    return if data.iter().all(u8::is_ascii_whitespace) {
                        Ok(())
                    } else {
                        self.fail("output after the `done` trailer".to_owned())
                    };
                }
                State::Head => {
                    if data.is_empty() {
                        return Ok(());
                    }
                    let before = self.buf.len();
                    self.buf.extend_from_slice(data);
                    let Some(end) = outcome::head_end(&self.buf) else {
                        if self.buf.len() > MAX_HEAD {
                            return self.fail("CGI head too long".to_owned());
                        }
                        return Ok(());
                    };
                    let consumed = end - before;
                    data = &data[consumed.min(data.len())..];
                    let head = std::mem::take(&mut self.buf);
                    let parsed = outcome::parse_head(&head[..end]);
                    self.status = parsed.as_ref().ok().map(|h| h.status);
                    match parsed {
                        Err(e) => return self.fail(e),
                        Ok(parsed) if parsed.status == 200 && is_batch_reply(&head[..end]) => {
                            self.state = State::Lines;
                        }
                        Ok(parsed) => self.state = State::Whole(parsed),
                    }
                }
                State::Lines => {
                    let Some(nl) = data.iter().position(|b| *b == b'\n') else {
                        self.buf.extend_from_slice(data);
                        if self.buf.len() > MAX_LINE {
                            return self.fail(format!("line longer than {MAX_LINE} bytes"));
                        }
                        return Ok(());
                    };
                    let (whole, rest) = (&data[..nl], &data[nl + 1..]);
                    data = rest;
                    if self.buf.len() + whole.len() > MAX_LINE {
                        return self.fail(format!("line longer than {MAX_LINE} bytes"));
                    }
                    // A line that arrived in one piece is read where it lies; one cut by a read
                    // is put together in `buf`, which keeps its room for the next (no allocation
                    // per line).
                    let read = if self.buf.is_empty() {
                        self.line(whole, emit)
                    } else {
                        self.buf.extend_from_slice(whole);
                        let line = std::mem::take(&mut self.buf);
                        let read = self.line(&line, emit);
                        self.buf = line;
                        self.buf.clear();
                        read
                    };
                    if let Err(e) = read {
                        return self.fail(e);
                    }
                }
            }
        }
    }

    /// The request ended (its end-of-request record arrived): what the entries without an
    /// outcome get, if any. Anything fed after this is a protocol error.
    #[must_use]
    pub fn finish(&mut self) -> Option<Failure> {
        let state = std::mem::replace(&mut self.state, State::Ended);
        let missing = self.pending().count();
        match state {
            State::Failed(e) => {
                self.state = State::Failed(e.clone());
                Some(Failure::Protocol(e.0))
            }
            State::Whole(head) => {
                let excerpt = || excerpt(&self.buf);
                Some(Failure::Whole(whole_verdict(
                    &head,
                    self.require_ack,
                    excerpt,
                )))
            }
            _ if missing == 0 => None,
            State::Head => Some(Failure::Incomplete(if self.buf.is_empty() {
                "empty reply".to_owned()
            } else {
                "reply has no CGI header block".to_owned()
            })),
            _ => Some(Failure::Incomplete(format!(
                "the reply ended without an outcome for {missing} of {} entries",
                self.expected.len()
            ))),
        }
    }

    fn fail(&mut self, why: String) -> Result<(), ProtocolError> {
        let e = ProtocolError(why);
        self.state = State::Failed(e.clone());
        Err(e)
    }

    fn line(&mut self, line: &[u8], emit: &mut impl FnMut(usize, Verdict)) -> Result<(), String> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Ok(());
        }
        // Before the nonce is checked nothing of the line is trusted, not even its encoding.
        let Some(line) = line.strip_prefix(self.prefix.as_bytes()) else {
            let text = String::from_utf8_lossy(line);
            return Err(format!(
                "a line without the request's nonce (a handler's own output?): `{}`",
                crate::printable::printable(&text).capped(120)
            ));
        };
        // Only a reason may hold any bytes: replaced, never an error for the other entries.
        let text = String::from_utf8_lossy(line);
        let quoted = || crate::printable::printable(&text).capped(200).to_string();
        let mut words = text.splitn(2, ' ');
        let first = words.next().unwrap_or_default();
        let rest = words.next().unwrap_or_default();
        if first == "done" {
            let count =
                decimal(rest.trim()).ok_or_else(|| format!("bad trailer `{}`", quoted()))?;
            if count != self.expected.len() {
                return Err(format!(
                    "trailer says {count} entries, the request had {}",
                    self.expected.len()
                ));
            }
            if self.pending().next().is_some() {
                return Err(format!(
                    "trailer before an outcome for every entry ({} missing)",
                    self.pending().count()
                ));
            }
            self.state = State::Done;
            return Ok(());
        }
        let index = decimal(first).ok_or_else(|| format!("not an outcome line: `{}`", quoted()))?;
        let Ok(at) = self.expected.binary_search(&index) else {
            return Err(format!("unknown entry index {index}"));
        };
        if self.answered[at] {
            return Err(format!("entry {index} was answered already"));
        }
        if rest == "start" {
            if let Some(running) = self.running {
                return Err(format!(
                    "entry {index} started while entry {running} has no outcome"
                ));
            }
            self.running = Some(index);
            return Ok(());
        }
        if self.running != Some(index) {
            return Err(format!(
                "outcome for entry {index}, which PHP did not start"
            ));
        }
        let verdict =
            parse_outcome(rest, self.require_ack).map_err(|e| format!("entry {index}: {e}"))?;
        self.answered[at] = true;
        self.answered_count += 1;
        self.running = None;
        emit(index, verdict);
        Ok(())
    }
}

/// A number as PHP writes it (`%d`): ASCII digits, no sign, no leading zero. `str::parse`
/// alone would also take `+3` and `03` for entry 3.
fn decimal(text: &str) -> Option<usize> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

/// `ack`, `retry <status> <seconds|-> [reason]` or `reject <status> [reason]` as a verdict.
fn parse_outcome(text: &str, require_ack: bool) -> Result<Verdict, String> {
    let mut words = text.splitn(2, ' ');
    let verb = words.next().unwrap_or_default();
    let rest = words.next().unwrap_or_default();
    let status = |word: Option<&str>| {
        word.and_then(|w| w.parse::<u16>().ok())
            .filter(|s| (100..=999).contains(s))
            .ok_or_else(|| format!("`{verb}` needs a status"))
    };
    match verb {
        "ack" if rest.trim().is_empty() => {
            let head = ReplyHead {
                status: 200,
                acked: true,
                retry_after: None,
                accepts_batches: None,
            };
            Ok(outcome::classify_reply(&head, require_ack, String::new))
        }
        "retry" => {
            let mut parts = rest.splitn(3, ' ');
            let status = status(parts.next())?;
            let retry_after = match parts.next() {
                None | Some("-") => None,
                Some(s) => {
                    Some(Duration::from_secs(s.parse().map_err(|_| {
                        format!("bad Retry-After `{s}` (seconds or -)")
                    })?))
                }
            };
            let reason = parts.next().unwrap_or_default();
            let head = ReplyHead {
                status,
                acked: false,
                retry_after,
                accepts_batches: None,
            };
            match outcome::classify_reply(&head, require_ack, || reason_text(reason)) {
                v @ Verdict::Transient { .. } => Ok(v),
                _ => Err(format!("status {status} is not a retry status")),
            }
        }
        "reject" => {
            let mut parts = rest.splitn(2, ' ');
            let status = status(parts.next())?;
            let reason = parts.next().unwrap_or_default();
            let head = ReplyHead {
                status,
                acked: false,
                retry_after: None,
                accepts_batches: None,
            };
            match outcome::classify_reply(&head, require_ack, || reason_text(reason)) {
                v @ Verdict::Permanent { .. } => Ok(v),
                // PHP refused the entry's signature: as for a single request, the secrets
                // differ (no attempt used, the subject pauses).
                v @ Verdict::Transient { counts: false, .. } if status == 401 => Ok(v),
                _ => Err(format!("status {status} is not a reject status")),
            }
        }
        _ => Err(format!(
            "unknown outcome `{}`",
            crate::printable::printable(verb).capped(40)
        )),
    }
}

fn reason_text(reason: &str) -> String {
    let reason = reason.trim();
    if reason.is_empty() {
        "(no reason given)".to_owned()
    } else {
        reason.to_owned()
    }
}

/// The verdict a reply that is not a batch reply would give: as a single message's reply with
/// that head, except that a success without `X-Agent-Batch: 2` acknowledges nothing (the PHP
/// side answered as if the batch were one message).
fn whole_verdict(head: &ReplyHead, require_ack: bool, excerpt: impl FnOnce() -> String) -> Verdict {
    if (200..=299).contains(&head.status) {
        return Verdict::Transient {
            reason: "fpm_malformed_reply",
            detail: format!(
                "status {} without X-Agent-Batch: 2 (does the PHP side handle this batch version?): {}",
                head.status,
                excerpt()
            ),
            status: Some(head.status),
            retry_after: None,
            counts: true,
        };
    }
    outcome::classify_reply(head, require_ack, excerpt)
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = outcome::reply_text(&text);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        crate::contract::clean(text).into_owned()
    }
}

/// The reply header by which PHP says it answered a batch (`X-Agent-Batch: <version>`).
pub const BATCH_HEADER: &str = "x-agent-batch";

/// True when the head has `X-Agent-Batch` with this format's version.
fn is_batch_reply(head: &[u8]) -> bool {
    head.split(|b| *b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.iter().position(|b| *b == b':').is_some_and(|colon| {
            line[..colon].eq_ignore_ascii_case(BATCH_HEADER.as_bytes())
                && line[colon + 1..].trim_ascii() == super::wire::VERSION.to_string().as_bytes()
        })
    })
}

#[cfg(test)]
mod tests;
