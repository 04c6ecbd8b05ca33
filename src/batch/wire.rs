//! The request of a batch: its params and its body (docs/batches.md, "The request").
//!
//! ```text
//! AMQP-AGENT-BATCH 2 <nonce>\n                  magic, format version, the request's nonce
//! <index> <fields length> <body length>\n      for each entry, in order:
//! <NAME>=<value>\n …                           its per-message params (fields length bytes)
//! <body>\n                                     its raw body (body length bytes), then LF
//! ```
//!
//! Each entry's fields are exactly the per-message params a single request of that message
//! carries ([`ENTRY_FIELDS`]), signature included: an entry's `HTTP_X_AGENT_SIGNATURE` is the
//! one its own single request would carry, over its own id, attempt, route, headers and body, so
//! PHP verifies each entry with the single-message code and one bad entry cannot pass under
//! another's signature. Values never hold CR, LF or NUL (`contract`), so a field is one line.
//! Bodies are raw bytes, length-prefixed: a 1 MiB binary body adds 1 MiB. The nonce is a
//! random token the agent draws for each request (32 lowercase hex digits); PHP starts every
//! line of its reply with it (`outcomes`), so a handler's own output cannot pass for an outcome.
//!
//! Invariant: every param *name*, of the request and of its entries, is a fixed string from
//! `contract` or this module.

use std::borrow::Cow;

use crate::contract::Param;

/// First line of a batch body: magic and version.
pub const MAGIC: &str = "AMQP-AGENT-BATCH";
/// Format version, in the magic line, in `HTTP_X_AGENT_BATCH` and in the reply's
/// `X-Agent-Batch` (2: the nonce and the `start` lines).
pub const VERSION: u32 = 2;
/// `CONTENT_TYPE` of a batch request.
pub const CONTENT_TYPE: &str = "application/vnd.amqp-agent.batch";
/// Request param: the format version; its presence says the request is a batch.
pub const BATCH_PARAM: &str = "HTTP_X_AGENT_BATCH";
/// Request param: how many entries the body holds.
pub const BATCH_SIZE_PARAM: &str = "HTTP_X_AGENT_BATCH_SIZE";

/// The per-message params: an entry carries these (those its message has), the request none.
pub const ENTRY_FIELDS: [&str; 14] = [
    "HTTP_X_AGENT_MESSAGE_ID",
    "HTTP_X_AGENT_ATTEMPT",
    "HTTP_X_AGENT_DELIVERY_COUNT",
    "HTTP_X_AGENT_REDELIVERED",
    "HTTP_X_AGENT_ROUTING_KEY",
    "HTTP_X_AGENT_EXCHANGE",
    "HTTP_X_AGENT_CONTENT_TYPE",
    "HTTP_X_AGENT_TYPE",
    "HTTP_X_AGENT_CORRELATION_ID",
    "HTTP_X_AGENT_TIMESTAMP",
    "HTTP_X_AGENT_SIGNATURE",
    "HTTP_X_AGENT_HEADERS",
    "HTTP_TRACEPARENT",
    "HTTP_TRACESTATE",
];

/// True for the name of a per-message param.
#[must_use]
pub fn is_entry_field(name: &str) -> bool {
    ENTRY_FIELDS.contains(&name)
}

/// Bytes of an entry's head line, `"{index} {fields} {body}\n"`.
fn head_len(index: usize, fields: usize, body: usize) -> usize {
    decimal_len(index) + 1 + decimal_len(fields) + 1 + decimal_len(body) + 1
}

/// Digits of `n` in decimal.
fn decimal_len(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Appends `n` in decimal (what `format!("{n}")` writes, without the `String`).
fn push_decimal(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Builds a batch body entry by entry.
#[derive(Debug)]
pub struct Encoder {
    body: Vec<u8>,
    count: usize,
}

impl Encoder {
    /// An empty batch whose reply lines must start with `nonce` (random per request, drawn by
    /// the caller: this module is pure); `capacity` is a hint (the sum of the bodies).
    #[must_use]
    pub fn new(capacity: usize, nonce: &str) -> Self {
        let mut body = Vec::with_capacity(capacity + 64);
        body.extend_from_slice(MAGIC.as_bytes());
        body.push(b' ');
        body.extend_from_slice(VERSION.to_string().as_bytes());
        body.push(b' ');
        body.extend_from_slice(nonce.as_bytes());
        body.push(b'\n');
        Self { body, count: 0 }
    }

    /// Room for at least `additional` more bytes (one allocation now instead of regrowth).
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.body.reserve(additional);
    }

    /// The bytes entry `index` adds to the body: its head line, its fields and its body.
    /// `limits.max_batch_bytes` bounds the sum (PHP's `post_max_size` sees every byte).
    #[must_use]
    pub(crate) fn entry_len(index: usize, params: &[Param<'_>], body: usize) -> usize {
        let fields = fields_len(params);
        head_len(index, fields, body) + fields + body + 1
    }

    /// Appends entry `index` from the params of its single request (`contract::RequestTemplate::
    /// params`, signature included) and its body. Only the per-message params are written.
    pub fn push(&mut self, index: usize, params: &[Param<'_>], body: &[u8]) {
        let fields = fields_len(params);
        self.body
            .reserve(head_len(index, fields, body.len()) + fields + body.len() + 1);
        push_decimal(&mut self.body, index);
        self.body.push(b' ');
        push_decimal(&mut self.body, fields);
        self.body.push(b' ');
        push_decimal(&mut self.body, body.len());
        self.body.push(b'\n');
        for (name, value) in params.iter().filter(|(name, _)| is_entry_field(name)) {
            self.body.extend_from_slice(name.as_bytes());
            self.body.push(b'=');
            self.body.extend_from_slice(value.as_bytes());
            self.body.push(b'\n');
        }
        self.body.extend_from_slice(body);
        self.body.push(b'\n');
        self.count += 1;
    }

    /// Entries so far.
    #[cfg(test)]
    #[must_use]
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Bytes so far.
    #[must_use]
    pub(crate) fn len(&self) -> usize {
        self.body.len()
    }

    /// True before the first entry.
    #[must_use]
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The request's params and body. `first` is the params of any entry's single request: the
    /// request keeps its fixed params (script, URI, subject), without any per-message one, with
    /// the batch's content type and length and the batch params.
    #[must_use]
    pub fn finish<'a>(self, first: &[Param<'a>]) -> (Vec<Param<'a>>, Vec<u8>) {
        let mut params: Vec<Param<'a>> = first
            .iter()
            .filter(|(name, _)| {
                !is_entry_field(name) && *name != "CONTENT_TYPE" && *name != "CONTENT_LENGTH"
            })
            .cloned()
            .collect();
        params.push(("CONTENT_TYPE", Cow::Borrowed(CONTENT_TYPE)));
        params.push(("CONTENT_LENGTH", Cow::Owned(self.body.len().to_string())));
        params.push((BATCH_PARAM, Cow::Owned(VERSION.to_string())));
        params.push((BATCH_SIZE_PARAM, Cow::Owned(self.count.to_string())));
        (params, self.body)
    }
}

/// Bytes of an entry's fields block: `<NAME>=<value>\n` for each per-message param.
fn fields_len(params: &[Param<'_>]) -> usize {
    params
        .iter()
        .filter(|(name, _)| is_entry_field(name))
        .map(|(name, value)| name.len() + value.len() + 2)
        .sum()
}

#[cfg(test)]
mod tests;
