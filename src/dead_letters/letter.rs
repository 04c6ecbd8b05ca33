//! One dead letter as the operator sees it: what the agent recorded on its copy (reason, last
//! HTTP status, attempts, last error, when), what the broker recorded when it dead-lettered a
//! message itself (`x-death`, `x-first-death-reason`), the message's type, and the body shown as
//! pretty JSON, text or hex. Pure: the caller passes the time.

use std::borrow::Cow;
use std::fmt::Write as _;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::contract::{
    ATTEMPTS_HEADER, DEAD_LETTERED_AT_HEADER, LAST_ERROR_HEADER, REASON_HEADER, STATUS_HEADER,
    SUBJECT_HEADER,
};

/// Symfony Messenger's AMQP transport puts the message class in this header.
pub(crate) const TYPE_HEADER: &str = "type";
/// What a quorum queue counts a message's returns in.
const DELIVERY_COUNT: &str = "x-delivery-count";
/// The broker's record of each time it dead-lettered the message.
const X_DEATH: &str = "x-death";
/// The broker's reason for the first time it dead-lettered the message.
const X_FIRST_DEATH_REASON: &str = "x-first-death-reason";

/// Longest text of one summary field (an id, a last error): the list stays small whatever the
/// messages hold; the detail shows everything.
pub(crate) const SUMMARY_CHARS: usize = 500;
/// Most body bytes shown as text or pretty JSON (a larger body is cut, and says so).
pub(crate) const MAX_TEXT_BYTES: usize = 2 * 1024 * 1024;
/// Most body bytes shown in hex.
pub(crate) const MAX_HEX_BYTES: usize = 64 * 1024;

/// A dead letter: its properties and body, borrowed from the delivery.
#[derive(Debug, Clone, Copy)]
pub struct Letter<'a> {
    props: &'a BasicProperties,
    body: &'a [u8],
}

impl<'a> Letter<'a> {
    /// The letter of a delivery's properties and body.
    #[must_use]
    pub(crate) fn new(props: &'a BasicProperties, body: &'a [u8]) -> Self {
        Self { props, body }
    }

    fn headers(&self) -> Option<&'a FieldTable> {
        self.props.headers().as_ref()
    }

    fn header(&self, name: &str) -> Option<&'a AMQPValue> {
        self.headers().and_then(|h| h.inner().get(name))
    }

    /// Names the letter among the others of its queue: 16 hex digits of a SHA-256 of its
    /// properties (headers included, but not the `x-delivery-count` a quorum queue adds each
    /// time a message goes back to it) and body. Two copies alike in every byte share it.
    #[must_use]
    pub(crate) fn key(&self) -> String {
        let mut hash = Sha256::new();
        let counted = self
            .headers()
            .is_some_and(|h| h.inner().contains_key(DELIVERY_COUNT));
        if counted {
            let mut headers = self.headers().cloned().unwrap_or_default();
            let mut kept = headers.inner().clone();
            kept.remove(DELIVERY_COUNT);
            headers = FieldTable::from(kept);
            let props = self.props.clone().with_headers(headers);
            hash.update(format!("{props:?}").as_bytes());
        } else {
            hash.update(format!("{:?}", self.props).as_bytes());
        }
        hash.update([0]);
        hash.update(self.body);
        hex::encode(&hash.finalize()[..8])
    }

    /// The AMQP `message_id`.
    #[must_use]
    pub(crate) fn message_id(&self) -> Option<&'a str> {
        self.props.message_id().as_ref().map(|s| s.as_str())
    }

    /// The message type: the AMQP `type` property, else Messenger's `type` header.
    #[must_use]
    pub(crate) fn kind(&self) -> Option<Cow<'a, str>> {
        if let Some(kind) = self.props.kind().as_ref() {
            return Some(Cow::Borrowed(kind.as_str()));
        }
        self.header(TYPE_HEADER).and_then(text)
    }

    /// Why it was dead-lettered: the agent's `x-agent-reason`, else the broker's
    /// `x-first-death-reason` or the reason of its latest `x-death` entry (`delivery_limit`,
    /// `expired`, `rejected`, `maxlen`).
    #[must_use]
    pub(crate) fn reason(&self) -> Option<Cow<'a, str>> {
        if let Some(reason) = self.header(REASON_HEADER).and_then(text) {
            return Some(reason);
        }
        if let Some(reason) = self.header(X_FIRST_DEATH_REASON).and_then(text) {
            return Some(reason);
        }
        self.first_death()
            .and_then(|d| d.inner().get("reason"))
            .and_then(text)
    }

    /// The last HTTP status PHP answered (`x-agent-status`; 0 when PHP gave none).
    #[must_use]
    pub(crate) fn status(&self) -> Option<i64> {
        self.header(STATUS_HEADER).and_then(integer)
    }

    /// How many attempts were made (`x-agent-attempts`).
    #[must_use]
    pub(crate) fn attempts(&self) -> Option<i64> {
        self.header(ATTEMPTS_HEADER).and_then(integer)
    }

    /// The last attempt's error (`x-agent-last-error`).
    #[must_use]
    pub(crate) fn last_error(&self) -> Option<Cow<'a, str>> {
        self.header(LAST_ERROR_HEADER).and_then(text)
    }

    /// When it was dead-lettered (Unix seconds): `x-agent-dead-lettered-at`, else the time of
    /// the broker's latest `x-death` entry, else the message's AMQP `timestamp`.
    #[must_use]
    pub(crate) fn dead_at(&self) -> Option<u64> {
        self.header(DEAD_LETTERED_AT_HEADER)
            .and_then(unix)
            .or_else(|| {
                self.first_death()
                    .and_then(|d| d.inner().get("time"))
                    .and_then(unix)
            })
            .or(*self.props.timestamp())
    }

    /// The W3C trace id the copy carries (`traceparent`), when well-formed.
    #[must_use]
    pub(crate) fn trace_id(&self) -> Option<&'a str> {
        crate::trace_context::read(self.headers()).trace_id()
    }

    /// The body.
    #[must_use]
    pub(crate) fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The first (latest) entry of `x-death`.
    fn first_death(&self) -> Option<&'a FieldTable> {
        match self.header(X_DEATH)? {
            AMQPValue::FieldArray(items) => match items.as_slice().first()? {
                AMQPValue::FieldTable(t) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }

    /// The properties that are set, as (name, text) pairs, in AMQP's order.
    #[must_use]
    pub(crate) fn properties(&self) -> Vec<(&'static str, String)> {
        let p = self.props;
        let mut out = Vec::new();
        let mut short = |name: &'static str, v: &Option<lapin::types::ShortString>| {
            if let Some(v) = v {
                out.push((name, v.as_str().to_owned()));
            }
        };
        short("content_type", p.content_type());
        short("content_encoding", p.content_encoding());
        short("correlation_id", p.correlation_id());
        short("reply_to", p.reply_to());
        short("expiration", p.expiration());
        short("message_id", p.message_id());
        short("type", p.kind());
        short("user_id", p.user_id());
        short("app_id", p.app_id());
        short("cluster_id", p.cluster_id());
        if let Some(v) = p.delivery_mode() {
            out.push(("delivery_mode", v.to_string()));
        }
        if let Some(v) = p.priority() {
            out.push(("priority", v.to_string()));
        }
        if let Some(v) = p.timestamp() {
            out.push(("timestamp", format!("{v} ({})", rfc3339(*v))));
        }
        out
    }

    /// The headers as (name, text) pairs: strings as they are, anything else as JSON (tables
    /// and arrays nest; bytes and text that is not UTF-8 in base64; timestamps as integers).
    #[must_use]
    pub(crate) fn header_texts(&self) -> Vec<(String, String)> {
        let Some(headers) = self.headers() else {
            return Vec::new();
        };
        // Deep enough for anything the AMQP parser hands over (it cuts deeper values).
        let json = crate::contract::headers_json(
            Some(headers),
            crate::config::PARSER_MAX_DEPTH + 1,
            usize::MAX,
        )
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&s).ok());
        match json {
            Some(map) => map
                .into_iter()
                .map(|(k, v)| {
                    let shown = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, shown)
                })
                .collect(),
            None => headers
                .inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), format!("{v:?}")))
                .collect(),
        }
    }

    /// The row of a list.
    #[must_use]
    pub(crate) fn summary(&self, now: u64) -> Summary {
        let cut = |s: &str| cut(s, SUMMARY_CHARS);
        Summary {
            key: self.key(),
            message_id: self.message_id().map(cut),
            kind: self.kind().map(|k| cut(&k)),
            reason: self.reason().map(|r| cut(&r)),
            status: self.status(),
            attempts: self.attempts(),
            last_error: self.last_error().map(|e| cut(&e)),
            subject: self.header(SUBJECT_HEADER).and_then(text).map(|s| cut(&s)),
            dead_lettered_at: self.dead_at(),
            age_seconds: self.dead_at().map(|t| now.saturating_sub(t)),
            content_type: self.props.content_type().as_ref().map(|c| cut(c.as_str())),
            body_bytes: self.body.len(),
            trace_id: self.trace_id().map(str::to_owned),
        }
    }

    /// Everything about it, the body in the three forms.
    #[must_use]
    pub(crate) fn detail(&self, now: u64) -> Detail {
        Detail {
            summary: self.summary(now),
            last_error: self.last_error().map(Cow::into_owned),
            properties: self
                .properties()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            headers: self.header_texts(),
            body: Body::of(self.body),
        }
    }
}

/// A dead letter in a list.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// [`Letter::key`].
    pub key: String,
    /// The AMQP `message_id`.
    pub message_id: Option<String>,
    /// [`Letter::kind`].
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// [`Letter::reason`].
    pub reason: Option<String>,
    /// [`Letter::status`].
    pub status: Option<i64>,
    /// [`Letter::attempts`].
    pub attempts: Option<i64>,
    /// [`Letter::last_error`], cut at [`SUMMARY_CHARS`].
    pub last_error: Option<String>,
    /// `x-agent-subject`.
    pub subject: Option<String>,
    /// [`Letter::dead_at`].
    pub dead_lettered_at: Option<u64>,
    /// Seconds since [`Letter::dead_at`].
    pub age_seconds: Option<u64>,
    /// The AMQP `content_type`.
    pub content_type: Option<String>,
    /// The body's length.
    pub body_bytes: usize,
    /// [`Letter::trace_id`].
    pub trace_id: Option<String>,
}

/// A dead letter opened.
#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    /// What the list shows.
    #[serde(flatten)]
    pub summary: Summary,
    /// The whole last error (`summary.last_error` is cut).
    #[serde(rename = "last_error_full")]
    pub last_error: Option<String>,
    /// [`Letter::properties`].
    pub properties: Vec<(String, String)>,
    /// [`Letter::header_texts`].
    pub headers: Vec<(String, String)>,
    /// The body in three forms.
    pub body: Body,
}

/// The body as pretty JSON (when it is JSON), text and hex.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Body {
    /// Its length.
    pub bytes: usize,
    /// Whether it is valid UTF-8.
    pub utf8: bool,
    /// Pretty-printed, when the body (at most [`MAX_TEXT_BYTES`]) parses as JSON.
    pub json: Option<String>,
    /// As text (invalid UTF-8 replaced by U+FFFD), at most [`MAX_TEXT_BYTES`].
    pub text: String,
    /// Whether `text` was cut.
    pub text_cut: bool,
    /// A hex dump of at most [`MAX_HEX_BYTES`].
    pub hex: String,
    /// Whether `hex` was cut.
    pub hex_cut: bool,
}

impl Body {
    /// The three forms of `body`.
    #[must_use]
    pub(crate) fn of(body: &[u8]) -> Self {
        let utf8 = std::str::from_utf8(body).is_ok();
        let json = (body.len() <= MAX_TEXT_BYTES)
            .then(|| serde_json::from_slice::<serde_json::Value>(body).ok())
            .flatten()
            .and_then(|v| serde_json::to_string_pretty(&v).ok());
        let shown = &body[..body.len().min(MAX_TEXT_BYTES)];
        Self {
            bytes: body.len(),
            utf8,
            json,
            text: String::from_utf8_lossy(shown).into_owned(),
            text_cut: shown.len() < body.len(),
            hex: hex_dump(&body[..body.len().min(MAX_HEX_BYTES)]),
            hex_cut: body.len() > MAX_HEX_BYTES,
        }
    }
}

/// `xxd`-like lines: offset, 16 bytes in hex, the printable ASCII ones (others as `.`).
#[must_use]
pub(crate) fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 4 + bytes.len() / 16 * 12);
    for (i, line) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{:08x} ", i * 16);
        for (j, b) in line.iter().enumerate() {
            if j == 8 {
                out.push(' ');
            }
            let _ = write!(out, " {b:02x}");
        }
        for j in line.len()..16 {
            out.push_str(if j == 8 { "    " } else { "   " });
        }
        out.push_str("  ");
        out.extend(line.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        }));
        out.push('\n');
    }
    out
}

/// `text` cut at `max` bytes on a character boundary, with a note of its length.
#[must_use]
pub(crate) fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// A header value as text: strings (long ones that are not UTF-8 with U+FFFD).
fn text(value: &AMQPValue) -> Option<Cow<'_, str>> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ShortString(s) => Some(Cow::Borrowed(s.as_str())),
        _ => None,
    }
}

/// An integer header of any width (`contract::integer`), a timestamp, or a number written as
/// text.
fn integer(value: &AMQPValue) -> Option<i64> {
    if let Some(v) = crate::contract::integer(value) {
        return Some(v);
    }
    match value {
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        _ => None,
    }
}

fn unix(value: &AMQPValue) -> Option<u64> {
    integer(value).and_then(|v| u64::try_from(v).ok())
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
#[must_use]
pub(crate) fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}
