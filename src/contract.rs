//! The endpoint contract: how one message attempt becomes one FastCGI request.
//!
//! Invariant: every FastCGI param *name* sent to PHP is a fixed string from this module (a
//! batch's own params: `batch::wire`). Nothing
//! from a message (header names included) can become a param name, so a message cannot set
//! `PHP_VALUE`, `PHP_ADMIN_VALUE` or `SCRIPT_FILENAME`. Param values never contain CR, LF or NUL.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use lapin::types::FieldTable;

use crate::config::Config;

/// AMQP header carrying the 1-based attempt number of a retried message.
pub const ATTEMPT_HEADER: &str = "x-agent-attempt";
/// AMQP header of retry/dead-letter copies: the exchange the message was first published to.
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-agent-original-exchange";
/// AMQP header of retry/dead-letter copies: the routing key the message was first published with.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-agent-original-routing-key";
/// AMQP header carrying the error of the previous attempt.
pub const LAST_ERROR_HEADER: &str = "x-agent-last-error";
/// Prefix of every header the agent writes on its copies.
pub const AGENT_HEADER_PREFIX: &str = "x-agent-";
/// AMQP header of dead-letter copies: why the message was dead-lettered (`max_attempts`, ...).
pub const REASON_HEADER: &str = "x-agent-reason";
/// AMQP header of dead-letter copies: the last HTTP status from PHP (0: none).
pub const STATUS_HEADER: &str = "x-agent-status";
/// AMQP header of dead-letter copies: how many attempts were made.
pub const ATTEMPTS_HEADER: &str = "x-agent-attempts";
/// AMQP header of dead-letter copies: the subject that consumed the message.
pub const SUBJECT_HEADER: &str = "x-agent-subject";
/// AMQP header of dead-letter copies: when the message was dead-lettered (AMQP timestamp).
pub const DEAD_LETTERED_AT_HEADER: &str = "x-agent-dead-lettered-at";
/// On a copy: the original's properties that were not UTF-8, by name, as their bytes.
pub const NOT_UTF8_HEADER: &str = "x-agent-not-utf8";
/// On a copy: the original's headers whose names were not UTF-8, as `[name bytes, value]`.
pub const NOT_UTF8_HEADERS_HEADER: &str = "x-agent-not-utf8-headers";
/// On a copy: the original's `user_id` property (the broker refuses a copy that keeps it).
pub const USER_ID_HEADER: &str = "x-agent-user-id";
/// On a copy: the original's property flags and list, as received, when they could not be
/// parsed (the patched lapin delivers such a message with these bytes only).
pub const RAW_PROPERTIES_HEADER: &str = "x-agent-raw-properties";

/// One FastCGI param of a request: a fixed name (this module's invariant) and its value.
pub type Param<'a> = (&'static str, Cow<'a, str>);

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
    /// A property, the route or a header name is not UTF-8 (bytes in hex).
    #[error("{field} is not UTF-8 (bytes {bytes})")]
    NotUtf8 {
        /// Which field.
        field: String,
        /// Its bytes, in hex.
        bytes: String,
    },
    /// The content header's properties could not be parsed; their bytes are kept.
    #[error(
        "the properties could not be parsed ({bytes} bytes of property flags and list, kept in {RAW_PROPERTIES_HEADER})"
    )]
    Unparsed {
        /// How many bytes of properties the content header held.
        bytes: usize,
    },
}

impl ContractError {
    /// Short machine-readable reason for `x-agent-reason`.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::Headers(_) => "headers_unencodable",
            Self::NotUtf8 { .. } | Self::Unparsed { .. } => "malformed_properties",
        }
    }
}

/// Makes a value safe for a FastCGI param: CR, LF and NUL become spaces.
#[must_use]
pub(crate) fn clean(value: &str) -> Cow<'_, str> {
    // memchr3 looks at a word at a time: five values per message.
    if memchr::memchr3(b'\r', b'\n', 0, value.as_bytes()).is_some() {
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
#[cfg(test)]
#[must_use]
pub(crate) fn cgi_content_type(original: &str) -> &str {
    if opaque_to_php(original) {
        OPAQUE_TYPE
    } else {
        original
    }
}

/// The media type as PHP reads `CONTENT_TYPE` before it decides whether to parse the body
/// (`sapi_read_post_data` in PHP's main/SAPI.c): cut at the first `;`, `,` or space, and
/// compared lowercased. Nothing is trimmed: a leading space gives the empty type.
#[must_use]
pub(crate) fn php_media_type(content_type: &str) -> &str {
    content_type
        .split([';', ',', ' '])
        .next()
        .unwrap_or_default()
}

/// The two types PHP parses into `$_POST` / `$_FILES` itself.
const FORM_TYPES: [&str; 2] = ["multipart/form-data", "application/x-www-form-urlencoded"];

/// True for no content type and for the form types PHP would parse itself.
fn opaque_to_php(content_type: &str) -> bool {
    let is_form = |t: &str| FORM_TYPES.iter().any(|f| t.eq_ignore_ascii_case(f));
    // PHP's own reading decides. Two looser ones err on the side of opaque, for a SAPI or a
    // PHP version that reads further: leading whitespace skipped and the type cut at any
    // whitespace, and every whitespace before the first `;` or `,` ignored.
    let first_word = content_type
        .trim_start()
        .split(|c: char| c == ';' || c == ',' || c.is_ascii_whitespace())
        .next()
        .unwrap_or_default();
    let squeezed = || {
        content_type
            .split([';', ','])
            .next()
            .unwrap_or_default()
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .map(|b| b.to_ascii_lowercase())
    };
    squeezed().next().is_none()
        || is_form(php_media_type(content_type))
        || is_form(first_word)
        || FORM_TYPES.iter().any(|f| squeezed().eq(f.bytes()))
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
    /// `fpm.signing_secrets`, keyed once (with `fpm.signature_v1`: the legacy `v1` values too).
    signer: crate::signature::Signer,
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
            signer: crate::signature::Signer::new(
                &config.fpm.signing_secrets,
                config.fpm.signature_v1,
            ),
            max_body_bytes: config.limits.max_body_bytes,
            max_headers_bytes: config.limits.max_headers_bytes,
            max_header_depth: config.limits.max_header_depth,
        }
    }

    /// `REQUEST_URI` of this subject's requests.
    #[must_use]
    pub(crate) fn request_uri(&self) -> &str {
        &self.request_uri
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
    ) -> Result<Vec<Param<'a>>, ContractError> {
        if body.len() > self.max_body_bytes {
            return Err(ContractError::BodyTooLarge {
                size: body.len(),
                limit: self.max_body_bytes,
            });
        }
        if let Some(bytes) = copy::unparsed_properties(env.headers) {
            return Err(ContractError::Unparsed { bytes: bytes.len() });
        }
        let fields = [
            (
                "message_id",
                (!env.message_id_generated).then_some(&*env.message_id),
            ),
            ("routing_key", Some(env.routing_key)),
            ("exchange", Some(env.exchange)),
            ("content_type", env.content_type),
            ("type", env.kind),
            ("correlation_id", env.correlation_id),
        ];
        if let Some((field, bytes)) = copy::first_not_utf8(fields, env.headers) {
            return Err(ContractError::NotUtf8 {
                field,
                bytes: copy::describe_not_utf8(&bytes),
            });
        }
        let headers = headers_json(env.headers, self.max_header_depth, self.max_headers_bytes)?;
        let b = |s: &'a str| Cow::Borrowed(s);
        let mut p: Vec<Param<'a>> = Vec::with_capacity(28);
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
        if !self.signer.is_empty() {
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
            let signature = self.signer.sign(now, &fields);
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

pub mod copy;
mod headers;
pub use crate::config::PARSER_MAX_DEPTH;
pub use headers::{
    COPY_FRAME_RESERVE, attempt_from_headers, delivery_count, headers_json, string_header,
};
pub(crate) use headers::{integer, remove_too_deep, shrink_to_fit};

#[cfg(test)]
mod tests;
