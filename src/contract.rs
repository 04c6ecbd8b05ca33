//! The endpoint contract: how one message attempt becomes one FastCGI request.
//!
//! Invariant: every FastCGI param *name* sent to PHP is a fixed string from this module (a
//! batch's own params: `batch::wire`). Nothing
//! from a message (header names included) can become a param name, so a message cannot set
//! `PHP_VALUE`, `PHP_ADMIN_VALUE` or `SCRIPT_FILENAME`. Param values never contain CR, LF or NUL.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value};

use crate::config::Config;

/// AMQP header carrying the 1-based attempt number of a retried message.
pub const ATTEMPT_HEADER: &str = "x-agent-attempt";
/// AMQP header of retry/dead-letter copies: the exchange the message was first published to.
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-agent-original-exchange";
/// AMQP header of retry/dead-letter copies: the routing key the message was first published with.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-agent-original-routing-key";
/// AMQP header carrying the error of the previous attempt.
pub const LAST_ERROR_HEADER: &str = "x-agent-last-error";

/// What the agent knows about one delivery, independent of the AMQP client types.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// `event` or `command`.
    pub subject: &'a str,
    /// The AMQP `message_id`, or one the agent made up.
    pub message_id: Cow<'a, str>,
    /// True when `message_id` was made up because the message had none.
    pub message_id_generated: bool,
    /// 1-based attempt number.
    pub attempt: u32,
    /// The broker's redelivered flag.
    pub redelivered: bool,
    /// Routing key the message was published with.
    pub routing_key: &'a str,
    /// Exchange the message was published to (empty: default exchange).
    pub exchange: &'a str,
    /// AMQP `content_type`.
    pub content_type: Option<&'a str>,
    /// AMQP `type`.
    pub kind: Option<&'a str>,
    /// AMQP `correlation_id`.
    pub correlation_id: Option<&'a str>,
    /// AMQP `timestamp` (unix seconds).
    pub timestamp: Option<u64>,
    /// Application headers.
    pub headers: Option<&'a FieldTable>,
}

/// Why a message cannot be turned into a request (it is dead-lettered, FPM is not called).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// The body exceeds `limits.max_body_bytes`.
    #[error("body of {size} bytes exceeds limits.max_body_bytes ({limit})")]
    BodyTooLarge {
        /// Body size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The headers cannot be encoded within the limits.
    #[error("headers cannot be encoded: {0}")]
    Headers(String),
}

impl ContractError {
    /// Short machine-readable reason for `x-agent-reason`.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::Headers(_) => "headers_unencodable",
        }
    }
}

/// Reads the attempt number from the headers: 1 when absent; `Err` with the raw value when it is
/// not a positive integer (the caller logs it and treats the message as attempt 1).
pub fn attempt_from_headers(headers: Option<&FieldTable>) -> Result<u32, String> {
    let Some(value) = headers.and_then(|h| h.inner().get(ATTEMPT_HEADER)) else {
        return Ok(1);
    };
    let n: Option<i64> = match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse().ok()),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        other => integer(other),
    };
    match n {
        Some(n) if n >= 1 => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
        _ => Err(match value {
            AMQPValue::LongString(s) => format!("{:?}", String::from_utf8_lossy(s.as_bytes())),
            other => format!("{other:?}"),
        }),
    }
}

/// Quorum queues' `x-delivery-count`: how many times the broker delivered this message before
/// (returned unacked: a crashed worker, a lost connection, a killed agent). Absent on classic
/// queues and on a first delivery.
#[must_use]
pub fn delivery_count(headers: Option<&FieldTable>) -> Option<i64> {
    integer(headers?.inner().get("x-delivery-count")?)
}

/// An AMQP integer of any width as `i64`; `None` for every other type.
fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        _ => None,
    }
}

/// Reads a string header (W3C trace context), if present and textual.
#[must_use]
pub fn string_header<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a str> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// Encodes AMQP application headers as one JSON object.
///
/// Tables and arrays nest; byte arrays and non-UTF-8 long strings become base64 strings;
/// timestamps become integers; NaN and infinities become null.
///
/// Headers nested deeper than the AMQP parser's cap ([`PARSER_MAX_DEPTH`]) arrive cut, with a
/// marker string where the parser stopped. Because `max_depth` is validated to be below that
/// cap, such headers always fail here as too deep: a cut value never reaches PHP.
///
/// # Errors
/// When nesting exceeds `max_depth` or the JSON exceeds `max_bytes`.
pub fn headers_json(
    headers: Option<&FieldTable>,
    max_depth: usize,
    max_bytes: usize,
) -> Result<String, ContractError> {
    let Some(headers) = headers else {
        return Ok("{}".to_owned());
    };
    let value = table_to_json(headers, 1, max_depth)?;
    let json = serde_json::to_string(&value).map_err(|e| ContractError::Headers(e.to_string()))?;
    if json.len() > max_bytes {
        return Err(ContractError::Headers(format!(
            "encoded headers are {} bytes, over limits.max_headers_bytes ({max_bytes})",
            json.len()
        )));
    }
    Ok(json)
}

fn table_to_json(
    table: &FieldTable,
    depth: usize,
    max_depth: usize,
) -> Result<Value, ContractError> {
    if depth > max_depth {
        return Err(ContractError::Headers(format!(
            "nested deeper than limits.max_header_depth ({max_depth})"
        )));
    }
    let mut map = Map::new();
    for (key, value) in table {
        map.insert(
            key.as_str().to_owned(),
            value_to_json(value, depth, max_depth)?,
        );
    }
    Ok(Value::Object(map))
}

fn value_to_json(
    value: &AMQPValue,
    depth: usize,
    max_depth: usize,
) -> Result<Value, ContractError> {
    let b64 = |bytes: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    Ok(match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(v) => Value::from(*v),
        AMQPValue::ShortShortUInt(v) => Value::from(*v),
        AMQPValue::ShortInt(v) => Value::from(*v),
        AMQPValue::ShortUInt(v) => Value::from(*v),
        AMQPValue::LongInt(v) => Value::from(*v),
        AMQPValue::LongUInt(v) => Value::from(*v),
        AMQPValue::LongLongInt(v) => Value::from(*v),
        AMQPValue::Float(v) => Value::from(f64::from(*v)),
        AMQPValue::Double(v) => Value::from(*v),
        AMQPValue::DecimalValue(d) => {
            Value::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => Value::String(text.to_owned()),
            Err(_) => b64(s.as_bytes()),
        },
        AMQPValue::FieldArray(items) => {
            if depth + 1 > max_depth {
                return Err(ContractError::Headers(format!(
                    "nested deeper than limits.max_header_depth ({max_depth})"
                )));
            }
            Value::Array(
                items
                    .as_slice()
                    .iter()
                    .map(|v| value_to_json(v, depth + 1, max_depth))
                    .collect::<Result<_, _>>()?,
            )
        }
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => table_to_json(t, depth + 1, max_depth)?,
        AMQPValue::ByteArray(bytes) => b64(bytes.as_slice()),
        AMQPValue::Void => Value::Null,
    })
}

/// Tables and arrays nested deeper than this are cut by the (patched) AMQP parser, which skips
/// them without parsing (`vendor/amq-protocol-types/PATCHES.md`). `limits.max_header_depth` must
/// stay below it, so that a cut header is always over the limit.
pub const PARSER_MAX_DEPTH: usize = lapin::types::parsing::MAX_NESTING_DEPTH;

/// Removes the headers whose tables or arrays nest deeper than `max_depth` (the headers table
/// itself is depth 1, as in [`headers_json`]) and returns their names, so that a dead-letter copy
/// carries only headers that can be encoded again. The walk looks at most one level past
/// `max_depth`, however deep a value nests.
pub fn remove_too_deep(headers: &mut FieldTable, max_depth: usize) -> Vec<String> {
    remove_where(headers, |_, value| nests_deeper(value, 2, max_depth))
}

/// Bytes of a copy's content-header frame kept for everything but the headers it inherits:
/// frame and property overhead, the other properties (short strings of at most 255 bytes) and
/// the headers the agent adds (`x-agent-last-error` is at most about 1 KiB).
pub const COPY_FRAME_RESERVE: usize = 8 * 1024;

/// Removes the largest headers until the table encodes in at most `budget` bytes, and returns
/// their names. A copy of a message whose headers filled `frame_max` would not fit in one frame
/// once the agent adds its own headers, and RabbitMQ closes the connection on such a frame.
pub fn shrink_to_fit(headers: &mut FieldTable, budget: usize) -> Vec<String> {
    let entry_len = |key: &str, value: &AMQPValue| {
        let value_len = lapin::types::generation::gen_value(value)(Vec::new().into())
            .map_or(usize::MAX / 2, |out| out.position as usize);
        1 + key.len() + value_len
    };
    let mut sizes: Vec<(usize, &str)> = headers
        .inner()
        .iter()
        .map(|(k, v)| (entry_len(k.as_str(), v), k.as_str()))
        .collect();
    let mut total = 4 + sizes.iter().map(|s| s.0).sum::<usize>();
    if total <= budget {
        return Vec::new();
    }
    sizes.sort_by_key(|s| std::cmp::Reverse(s.0));
    let mut over = Vec::new();
    for (len, name) in sizes {
        if total <= budget {
            break;
        }
        total -= len;
        over.push(name.to_owned());
    }
    remove_where(headers, |name, _| over.iter().any(|o| o == name))
}

/// Removes the headers `unwanted` picks and returns their names.
fn remove_where(
    headers: &mut FieldTable,
    mut unwanted: impl FnMut(&str, &AMQPValue) -> bool,
) -> Vec<String> {
    let mut kept = FieldTable::default();
    let mut removed = Vec::new();
    for (key, value) in headers.inner() {
        if unwanted(key.as_str(), value) {
            removed.push(key.as_str().to_owned());
        } else {
            kept.insert(key.clone(), value.clone());
        }
    }
    if !removed.is_empty() {
        *headers = kept;
    }
    removed
}

/// True when `value`, if a table or array at `depth`, or anything inside it, is deeper than `max`.
fn nests_deeper(value: &AMQPValue, depth: usize, max: usize) -> bool {
    let deeper = |v: &AMQPValue| nests_deeper(v, depth + 1, max);
    match value {
        AMQPValue::FieldArray(items) => depth > max || items.as_slice().iter().any(deeper),
        AMQPValue::FieldTable(table) => depth > max || table.inner().values().any(deeper),
        _ => false,
    }
}

/// Makes a value safe for a FastCGI param: CR, LF and NUL become spaces.
#[must_use]
pub fn clean(value: &str) -> Cow<'_, str> {
    if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        Cow::Owned(value.replace(['\r', '\n', '\0'], " "))
    } else {
        Cow::Borrowed(value)
    }
}

/// `CONTENT_TYPE` when the message has none, or one PHP must not see.
const OPAQUE_TYPE: &str = "application/octet-stream";

/// `CONTENT_TYPE` for PHP: the message's content type, except the two that make PHP parse the
/// body itself (writing temp files and leaving `php://input` empty), and none, which become
/// `application/octet-stream`. The original always travels in `HTTP_X_AGENT_CONTENT_TYPE`.
#[must_use]
pub fn cgi_content_type(original: &str) -> &str {
    if opaque_to_php(original) {
        OPAQUE_TYPE
    } else {
        original
    }
}

/// True for no content type and for the form types PHP would parse itself.
fn opaque_to_php(content_type: &str) -> bool {
    // PHP cuts the type at the first `;`, `,` or space and compares it lowercased; ignoring all
    // whitespace up to the first `;` or `,` covers that and any looser reading.
    let essence = || {
        content_type
            .split([';', ','])
            .next()
            .unwrap_or_default()
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .map(|b| b.to_ascii_lowercase())
    };
    let is = |form: &str| essence().eq(form.bytes());
    essence().next().is_none()
        || is("multipart/form-data")
        || is("application/x-www-form-urlencoded")
}

/// Seconds since the Unix epoch.
#[must_use]
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The static part of every request of a subject, computed once per worker.
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    subject: String,
    script_filename: String,
    script_name: String,
    document_root: String,
    request_uri: String,
    server_name: String,
    server_port: String,
    secrets: Vec<String>,
    max_body_bytes: usize,
    max_headers_bytes: usize,
    max_header_depth: usize,
}

impl RequestTemplate {
    /// Prepares the fixed params of `subject` from the config.
    #[must_use]
    pub fn new(config: &Config, subject: &str) -> Self {
        let script_filename = config.fpm.script_filename.clone();
        let document_root = config.fpm.document_root.clone().unwrap_or_else(|| {
            std::path::Path::new(&script_filename)
                .parent()
                .map_or_else(|| "/".to_owned(), |p| p.display().to_string())
        });
        let script_name = script_filename
            .strip_prefix(document_root.trim_end_matches('/'))
            .filter(|s| s.starts_with('/'))
            .map_or_else(|| script_filename.clone(), str::to_owned);
        Self {
            subject: subject.to_owned(),
            request_uri: config.fpm.request_uri.replace("{subject}", subject),
            script_filename,
            script_name,
            document_root,
            server_name: config.fpm.server_name.clone(),
            server_port: "80".to_owned(),
            secrets: config.fpm.signing_secrets.clone(),
            max_body_bytes: config.limits.max_body_bytes,
            max_headers_bytes: config.limits.max_headers_bytes,
            max_header_depth: config.limits.max_header_depth,
        }
    }

    /// `REQUEST_URI` of this subject's requests.
    #[must_use]
    pub fn request_uri(&self) -> &str {
        &self.request_uri
    }

    /// The subject this template is for.
    #[must_use]
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Builds the FastCGI params of one attempt, or says why the message cannot be sent.
    ///
    /// `trace` is the (traceparent, tracestate) to hand to PHP; `now` (unix seconds) is the
    /// signature's timestamp, read by the caller so that this stays a pure function.
    ///
    /// # Errors
    /// [`ContractError`] when the body or headers exceed the limits.
    pub fn params<'a>(
        &'a self,
        env: &'a Envelope<'a>,
        body: &[u8],
        trace: (Option<&'a str>, Option<&'a str>),
        now: u64,
    ) -> Result<Vec<(&'static str, Cow<'a, str>)>, ContractError> {
        if body.len() > self.max_body_bytes {
            return Err(ContractError::BodyTooLarge {
                size: body.len(),
                limit: self.max_body_bytes,
            });
        }
        let headers = headers_json(env.headers, self.max_header_depth, self.max_headers_bytes)?;
        let b = |s: &'a str| Cow::Borrowed(s);
        let mut p: Vec<(&'static str, Cow<'a, str>)> = Vec::with_capacity(28);
        p.push(("GATEWAY_INTERFACE", b("FastCGI/1.0")));
        p.push(("SERVER_SOFTWARE", b("amqp-agent")));
        p.push(("SERVER_PROTOCOL", b("HTTP/1.1")));
        p.push(("REQUEST_METHOD", b("POST")));
        p.push(("SCRIPT_FILENAME", b(&self.script_filename)));
        p.push(("SCRIPT_NAME", b(&self.script_name)));
        p.push(("DOCUMENT_ROOT", b(&self.document_root)));
        p.push(("REQUEST_URI", b(&self.request_uri)));
        p.push(("QUERY_STRING", b("")));
        p.push(("SERVER_NAME", b(&self.server_name)));
        p.push(("SERVER_PORT", b(&self.server_port)));
        p.push(("REMOTE_ADDR", b("127.0.0.1")));
        let content_type = clean(env.content_type.unwrap_or(""));
        let cgi_type = if opaque_to_php(&content_type) {
            b(OPAQUE_TYPE)
        } else {
            content_type.clone()
        };
        p.push(("CONTENT_TYPE", cgi_type));
        p.push(("CONTENT_LENGTH", Cow::Owned(body.len().to_string())));
        p.push(("HTTP_X_AGENT_SUBJECT", b(&self.subject)));
        let message_id = clean_cow(env.message_id.clone());
        p.push(("HTTP_X_AGENT_MESSAGE_ID", message_id.clone()));
        p.push(("HTTP_X_AGENT_ATTEMPT", Cow::Owned(env.attempt.to_string())));
        if let Some(count) = delivery_count(env.headers) {
            p.push(("HTTP_X_AGENT_DELIVERY_COUNT", Cow::Owned(count.to_string())));
        }
        p.push((
            "HTTP_X_AGENT_REDELIVERED",
            b(if env.redelivered { "1" } else { "0" }),
        ));
        let routing_key = clean(env.routing_key);
        let exchange = clean(env.exchange);
        p.push(("HTTP_X_AGENT_ROUTING_KEY", routing_key.clone()));
        p.push(("HTTP_X_AGENT_EXCHANGE", exchange.clone()));
        p.push(("HTTP_X_AGENT_CONTENT_TYPE", content_type.clone()));
        if let Some(kind) = env.kind {
            p.push(("HTTP_X_AGENT_TYPE", clean(kind)));
        }
        if let Some(id) = env.correlation_id {
            p.push(("HTTP_X_AGENT_CORRELATION_ID", clean(id)));
        }
        if let Some(ts) = env.timestamp {
            p.push(("HTTP_X_AGENT_TIMESTAMP", Cow::Owned(ts.to_string())));
        }
        if !self.secrets.is_empty() {
            let fields = crate::signature::Signed {
                subject: &self.subject,
                message_id: &message_id,
                attempt: env.attempt,
                routing_key: &routing_key,
                exchange: &exchange,
                content_type: &content_type,
                headers_json: &headers,
                body,
            };
            let signature = crate::signature::sign(&self.secrets, now, &fields);
            p.push(("HTTP_X_AGENT_SIGNATURE", Cow::Owned(signature)));
        }
        p.push(("HTTP_X_AGENT_HEADERS", Cow::Owned(headers)));
        if let Some(tp) = trace.0 {
            p.push(("HTTP_TRACEPARENT", clean(tp)));
        }
        if let Some(ts) = trace.1 {
            p.push(("HTTP_TRACESTATE", clean(ts)));
        }
        Ok(p)
    }
}

fn clean_cow(value: Cow<'_, str>) -> Cow<'_, str> {
    match value {
        Cow::Borrowed(s) => clean(s),
        Cow::Owned(s) => Cow::Owned(clean(&s).into_owned()),
    }
}

#[cfg(test)]
mod tests;
