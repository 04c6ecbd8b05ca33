//! AMQP headers as the contract reads and forwards them: the attempt and delivery count, string
//! headers, the JSON that carries all headers to PHP (`HTTP_X_AGENT_HEADERS`), and trimming a
//! copy's headers to what can be encoded again and fits in one frame.

use base64::Engine as _;
use lapin::types::{AMQPValue, FieldTable};

use super::{ATTEMPT_HEADER, ContractError};

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
#[must_use]
pub(crate) fn integer(value: &AMQPValue) -> Option<i64> {
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
/// Headers nested deeper than the AMQP parser's cap ([`crate::config::PARSER_MAX_DEPTH`]) arrive cut, with a
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
    // The headers table is depth 1, a table or array in it depth 2, and so on.
    if max_depth < 1
        || headers
            .inner()
            .values()
            .any(|v| nests_deeper(v, 2, max_depth))
    {
        return Err(ContractError::Headers(format!(
            "nested deeper than limits.max_header_depth ({max_depth})"
        )));
    }
    let json = serde_json::to_string(&Json::Table(headers))
        .map_err(|e| ContractError::Headers(e.to_string()))?;
    if json.len() > max_bytes {
        return Err(ContractError::Headers(format!(
            "encoded headers are {} bytes, over limits.max_headers_bytes ({max_bytes})",
            json.len()
        )));
    }
    Ok(json)
}

/// An AMQP value written straight as JSON, in the table's own (sorted, unique) key order: the
/// text a `serde_json::Value` built from it would give, without building one (a string, a
/// value and a tree node per header, for every message).
enum Json<'a> {
    Table(&'a FieldTable),
    Value(&'a AMQPValue),
}

impl serde::Serialize for Json<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap as _, SerializeSeq as _};
        let value = match self {
            Json::Table(table) => {
                let mut map = s.serialize_map(Some(table.inner().len()))?;
                for (key, value) in table.inner() {
                    map.serialize_entry(key.as_str(), &Json::Value(value))?;
                }
                return map.end();
            }
            Json::Value(value) => value,
        };
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        match value {
            AMQPValue::Boolean(b) => s.serialize_bool(*b),
            AMQPValue::ShortShortInt(v) => s.serialize_i8(*v),
            AMQPValue::ShortShortUInt(v) => s.serialize_u8(*v),
            AMQPValue::ShortInt(v) => s.serialize_i16(*v),
            AMQPValue::ShortUInt(v) => s.serialize_u16(*v),
            AMQPValue::LongInt(v) => s.serialize_i32(*v),
            AMQPValue::LongUInt(v) => s.serialize_u32(*v),
            AMQPValue::LongLongInt(v) => s.serialize_i64(*v),
            // serde_json writes NaN and the infinities as null.
            AMQPValue::Float(v) => s.serialize_f64(f64::from(*v)),
            AMQPValue::Double(v) => s.serialize_f64(*v),
            AMQPValue::DecimalValue(d) => {
                s.serialize_f64(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
            }
            AMQPValue::ShortString(text) => s.serialize_str(text.as_str()),
            AMQPValue::LongString(text) => match std::str::from_utf8(text.as_bytes()) {
                Ok(text) => s.serialize_str(text),
                Err(_) => s.serialize_str(&b64(text.as_bytes())),
            },
            AMQPValue::FieldArray(items) => {
                let mut seq = s.serialize_seq(Some(items.as_slice().len()))?;
                for item in items.as_slice() {
                    seq.serialize_element(&Json::Value(item))?;
                }
                seq.end()
            }
            AMQPValue::Timestamp(t) => s.serialize_u64(*t),
            AMQPValue::FieldTable(table) => Json::Table(table).serialize(s),
            AMQPValue::ByteArray(bytes) => s.serialize_str(&b64(bytes.as_slice())),
            AMQPValue::Void => s.serialize_unit(),
        }
    }
}

/// Removes the headers whose tables or arrays nest deeper than `max_depth` (the headers table
/// itself is depth 1, as in [`headers_json`]) and returns their names, so that a dead-letter copy
/// carries only headers that can be encoded again. The walk looks at most one level past
/// `max_depth`, however deep a value nests.
pub(crate) fn remove_too_deep(headers: &mut FieldTable, max_depth: usize) -> Vec<String> {
    remove_where(headers, |_, value| nests_deeper(value, 2, max_depth))
}

/// Bytes of a copy's content-header frame kept for everything but the headers it inherits:
/// frame and property overhead, the other properties (short strings of at most 255 bytes) and
/// the headers the agent adds (`x-agent-last-error` is at most about 1 KiB).
pub const COPY_FRAME_RESERVE: usize = 8 * 1024;

/// Removes the largest headers until the table encodes in at most `budget` bytes, and returns
/// their names. A copy of a message whose headers filled `frame_max` would not fit in one frame
/// once the agent adds its own headers, and RabbitMQ closes the connection on such a frame.
pub(crate) fn shrink_to_fit(headers: &mut FieldTable, budget: usize) -> Vec<String> {
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
