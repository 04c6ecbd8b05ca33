//! What a retry or dead-letter copy may carry of its original's properties, so that the broker
//! is sure to accept it: no short string that is not UTF-8 (the AMQP parser's stand-in for one
//! cannot be encoded again), no `user_id` (RabbitMQ refuses a `user_id` that is not the
//! publishing connection's user, and closes the channel), and a content header that fits one
//! frame.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use super::{NOT_UTF8_HEADER, NOT_UTF8_HEADERS_HEADER, RAW_PROPERTIES_HEADER, USER_ID_HEADER};

/// The original bytes of a short string that was not UTF-8, if `text` stands for one.
#[must_use]
pub fn not_utf8(text: &str) -> Option<Vec<u8>> {
    lapin::types::parsing::not_utf8_bytes(text)
}

/// The property bytes of a message whose content header could not be parsed: the patched lapin
/// then delivers it with no properties but this one header (`vendor/lapin/PATCHES.md`).
#[must_use]
pub(crate) fn unparsed_properties(headers: Option<&FieldTable>) -> Option<&[u8]> {
    match headers?.inner().get(lapin::UNPARSED_PROPERTIES_HEADER)? {
        AMQPValue::ByteArray(bytes) => Some(bytes.as_slice()),
        _ => None,
    }
}

/// How a short string that is not UTF-8 is shown in a log or a reason: its bytes in hex.
#[must_use]
pub(crate) fn describe_not_utf8(bytes: &[u8]) -> String {
    let shown: String = bytes.iter().take(32).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 32 {
        format!("{shown}… ({} bytes)", bytes.len())
    } else {
        shown
    }
}

/// The first field of a message PHP would read whose text is not UTF-8 (the property, the
/// route, or a header name at any depth), with its bytes: such a message is dead-lettered as
/// `malformed_properties` instead of being guessed at.
#[must_use]
pub fn first_not_utf8<'a>(
    fields: impl IntoIterator<Item = (&'static str, Option<&'a str>)>,
    headers: Option<&FieldTable>,
) -> Option<(String, Vec<u8>)> {
    for (name, value) in fields {
        if let Some(bytes) = value.and_then(not_utf8) {
            return Some((name.to_owned(), bytes));
        }
    }
    headers.and_then(|h| key_not_utf8(h, "headers"))
}

fn key_not_utf8(table: &FieldTable, path: &str) -> Option<(String, Vec<u8>)> {
    for (key, value) in table.inner() {
        if let Some(bytes) = not_utf8(key.as_str()) {
            return Some((format!("a header name in {path}"), bytes));
        }
        // Only a table or an array holds names; the path is written for those alone (every
        // message passes here, and most headers are scalars).
        if matches!(value, AMQPValue::FieldTable(_) | AMQPValue::FieldArray(_))
            && let Some(found) = value_key_not_utf8(value, &format!("{path}.{}", key.as_str()))
        {
            return Some(found);
        }
    }
    None
}

fn value_key_not_utf8(value: &AMQPValue, path: &str) -> Option<(String, Vec<u8>)> {
    match value {
        AMQPValue::FieldTable(t) => key_not_utf8(t, path),
        AMQPValue::FieldArray(items) => items
            .as_slice()
            .iter()
            .find_map(|v| value_key_not_utf8(v, path)),
        _ => None,
    }
}

/// The properties of a copy: `props` without what the broker could refuse. A property that is
/// not UTF-8 moves, as its original bytes, into the `x-agent-not-utf8` table (by property
/// name); a header whose name is not UTF-8 moves into `x-agent-not-utf8-headers` (a list of
/// `[name bytes, value]`); a header name nested deeper is replaced by its bytes read as
/// Latin-1; `user_id` moves to `x-agent-user-id`; the property bytes of a content header that
/// could not be parsed move to `x-agent-raw-properties`. Returns the properties and what moved.
#[must_use]
pub fn sanitized(props: &BasicProperties) -> (BasicProperties, Vec<String>) {
    let mut moved = Vec::new();
    let mut raw = FieldTable::default();
    let mut keep = |name: &'static str, value: &Option<ShortString>| -> Option<ShortString> {
        let value = value.as_ref()?;
        match not_utf8(value.as_str()) {
            Some(bytes) => {
                raw.insert(name.into(), AMQPValue::LongString(LongString::from(bytes)));
                moved.push(name.to_owned());
                None
            }
            None => Some(value.clone()),
        }
    };
    let mut out = BasicProperties::default();
    macro_rules! copy_short {
        ($($name:literal $get:ident / $with:ident),*) => {$(
            if let Some(v) = keep($name, props.$get()) {
                out = out.$with(v);
            }
        )*};
    }
    copy_short!(
        "content_type" content_type / with_content_type,
        "content_encoding" content_encoding / with_content_encoding,
        "correlation_id" correlation_id / with_correlation_id,
        "reply_to" reply_to / with_reply_to,
        "expiration" expiration / with_expiration,
        "message_id" message_id / with_message_id,
        "type" kind / with_type,
        "app_id" app_id / with_app_id,
        "cluster_id" cluster_id / with_cluster_id
    );
    if let Some(v) = props.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = props.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = props.timestamp() {
        out = out.with_timestamp(*v);
    }
    let mut headers = props.headers().clone().unwrap_or_default();
    let mut bad_keys = Vec::new();
    let mut clean = FieldTable::default();
    for (key, value) in headers.inner() {
        if key.as_str() == lapin::UNPARSED_PROPERTIES_HEADER {
            clean.insert(RAW_PROPERTIES_HEADER.into(), value.clone());
            moved.push("unparsed properties".to_owned());
            continue;
        }
        let value = latin1_keys(value);
        match not_utf8(key.as_str()) {
            Some(bytes) => bad_keys.push(AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::LongString(LongString::from(bytes)),
                value,
            ]))),
            None => {
                clean.insert(key.clone(), value);
            }
        }
    }
    headers = clean;
    if !bad_keys.is_empty() {
        moved.push(format!("{} header name(s)", bad_keys.len()));
        headers.insert(
            NOT_UTF8_HEADERS_HEADER.into(),
            AMQPValue::FieldArray(FieldArray::from(bad_keys)),
        );
    }
    if !raw.inner().is_empty() {
        headers.insert(NOT_UTF8_HEADER.into(), AMQPValue::FieldTable(raw));
    }
    if let Some(user) = props.user_id() {
        let bytes = not_utf8(user.as_str()).unwrap_or_else(|| user.as_str().as_bytes().to_vec());
        headers.insert(
            USER_ID_HEADER.into(),
            AMQPValue::LongString(LongString::from(bytes)),
        );
        moved.push("user_id".to_owned());
    }
    if props.headers().is_some() || !headers.inner().is_empty() {
        out = out.with_headers(headers);
    }
    (out, moved)
}

/// `value` with every nested table key that is not UTF-8 replaced by its bytes read as Latin-1
/// (cut to 255 bytes): valid, and as close to the original as a short string can be.
fn latin1_keys(value: &AMQPValue) -> AMQPValue {
    match value {
        AMQPValue::FieldTable(t) => {
            let mut out = FieldTable::default();
            for (key, v) in t.inner() {
                let key = match not_utf8(key.as_str()) {
                    Some(bytes) => latin1(&bytes),
                    None => key.clone(),
                };
                out.insert(key, latin1_keys(v));
            }
            AMQPValue::FieldTable(out)
        }
        AMQPValue::FieldArray(items) => AMQPValue::FieldArray(FieldArray::from(
            items.as_slice().iter().map(latin1_keys).collect::<Vec<_>>(),
        )),
        other => other.clone(),
    }
}

fn latin1(bytes: &[u8]) -> ShortString {
    let mut text = String::new();
    for c in bytes.iter().map(|b| char::from(*b)) {
        if text.len() + c.len_utf8() > 255 {
            break;
        }
        text.push(c);
    }
    ShortString::from(text)
}

/// Room a retry copy leaves under `frame_max` for what RabbitMQ adds when it dead-letters the
/// copy back to the main queue (its TTL ran out): the `x-death` table and `x-first-death-*`
/// headers, about 220 bytes with short queue names, at most about 1.6 KiB with 255-byte names.
pub const DEAD_LETTERING_GROWTH: usize = 2048;

/// Bytes of the content-header frame that carries `props`: frame overhead (8), class, weight
/// and body size (12), then the property flags and list.
#[must_use]
pub fn header_frame_len(props: &BasicProperties) -> usize {
    lapin::protocol::basic::gen_properties(props)(Vec::new().into())
        .map_or(usize::MAX, |out| 20 + out.position as usize)
}

#[cfg(test)]
mod tests;
