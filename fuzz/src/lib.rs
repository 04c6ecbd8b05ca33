//! Helpers shared by the fuzz targets: AMQP header tables built from fuzz bytes, their nesting
//! depth, and a check that a JSON value says the same as an AMQP value.

use amq_protocol_types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use arbitrary::{Result, Unstructured};
use base64::Engine as _;
use serde_json::Value;

/// Deepest table built by [`table`]: well past any sane `limits.max_header_depth`, shallow
/// enough for the recursive helpers here.
pub const MAX_BUILT_DEPTH: usize = 64;

/// Nesting depth as `contract::headers_json` counts it: the table itself is 1, and every table
/// or array inside adds one.
#[must_use]
pub fn nesting(table: &FieldTable) -> usize {
    1 + table.inner().values().map(value_nesting).max().unwrap_or(0)
}

fn value_nesting(value: &AMQPValue) -> usize {
    match value {
        AMQPValue::FieldTable(t) => nesting(t),
        AMQPValue::FieldArray(a) => 1 + a.as_slice().iter().map(value_nesting).max().unwrap_or(0),
        _ => 0,
    }
}

/// Frames `body` as a field table on the wire (a 32-bit length, then the entries) and parses
/// it with the parser lapin uses; `None` when it does not parse.
#[must_use]
pub fn parse_table_body(body: &[u8]) -> Option<FieldTable> {
    let len = u32::try_from(body.len()).ok()?;
    let mut framed = Vec::with_capacity(body.len() + 4);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(body);
    amq_protocol_types::parsing::parse_field_table(framed.as_slice())
        .ok()
        .map(|(_, table)| table)
}

/// A header table of any shape up to `depth_left` levels, built from fuzz bytes.
///
/// # Errors
/// When the bytes run out in a way `arbitrary` reports.
pub fn table(u: &mut Unstructured<'_>, depth_left: usize) -> Result<FieldTable> {
    let mut table = FieldTable::default();
    if depth_left == 0 {
        return Ok(table);
    }
    let entries = u.int_in_range(0..=6)?;
    for _ in 0..entries {
        let key = short_string(u)?;
        table.insert(key, value(u, depth_left - 1)?);
    }
    Ok(table)
}

fn value(u: &mut Unstructured<'_>, depth_left: usize) -> Result<AMQPValue> {
    Ok(match u.int_in_range(0..=17u8)? {
        0 => AMQPValue::Boolean(u.arbitrary()?),
        1 => AMQPValue::ShortShortInt(u.arbitrary()?),
        2 => AMQPValue::ShortShortUInt(u.arbitrary()?),
        3 => AMQPValue::ShortInt(u.arbitrary()?),
        4 => AMQPValue::ShortUInt(u.arbitrary()?),
        5 => AMQPValue::LongInt(u.arbitrary()?),
        6 => AMQPValue::LongUInt(u.arbitrary()?),
        7 => AMQPValue::LongLongInt(u.arbitrary()?),
        8 => AMQPValue::Float(u.arbitrary()?),
        9 => AMQPValue::Double(u.arbitrary()?),
        10 => AMQPValue::DecimalValue(DecimalValue {
            scale: u.arbitrary()?,
            value: u.arbitrary()?,
        }),
        11 => AMQPValue::ShortString(short_string(u)?),
        12 => AMQPValue::LongString(LongString::from(u.arbitrary::<Vec<u8>>()?)),
        13 => AMQPValue::Timestamp(u.arbitrary()?),
        14 => AMQPValue::ByteArray(ByteArray::from(u.arbitrary::<Vec<u8>>()?)),
        15 => AMQPValue::Void,
        16 if depth_left > 0 => {
            let len = u.int_in_range(0..=6)?;
            let mut items = FieldArray::default();
            for _ in 0..len {
                items.push(value(u, depth_left - 1)?);
            }
            AMQPValue::FieldArray(items)
        }
        17 if depth_left > 0 => AMQPValue::FieldTable(table(u, depth_left)?),
        _ => AMQPValue::Void,
    })
}

fn short_string(u: &mut Unstructured<'_>) -> Result<ShortString> {
    let mut s: String = u.arbitrary()?;
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    Ok(ShortString::from(s))
}

/// True when `json` carries the same information as the header table `table`, by the rules of
/// `contract::headers_json`.
#[must_use]
pub fn same_table(table: &FieldTable, json: &Value) -> bool {
    let Some(object) = json.as_object() else {
        return false;
    };
    object.len() == table.inner().len()
        && table
            .inner()
            .iter()
            .all(|(k, v)| object.get(k.as_str()).is_some_and(|j| same_value(v, j)))
}

fn same_value(value: &AMQPValue, json: &Value) -> bool {
    match value {
        AMQPValue::Boolean(b) => json.as_bool() == Some(*b),
        AMQPValue::ShortShortInt(v) => json.as_i64() == Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => json.as_i64() == Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => json.as_i64() == Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => json.as_i64() == Some(i64::from(*v)),
        AMQPValue::LongInt(v) => json.as_i64() == Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => json.as_i64() == Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => json.as_i64() == Some(*v),
        AMQPValue::Timestamp(t) => json.as_u64() == Some(*t),
        AMQPValue::Float(v) => same_float(f64::from(*v), json),
        AMQPValue::Double(v) => same_float(*v, json),
        AMQPValue::DecimalValue(d) => {
            same_float(f64::from(d.value) / 10f64.powi(i32::from(d.scale)), json)
        }
        AMQPValue::ShortString(s) => json.as_str() == Some(s.as_str()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => json.as_str() == Some(text),
            Err(_) => base64_of(json).as_deref() == Some(s.as_bytes()),
        },
        AMQPValue::ByteArray(b) => base64_of(json).as_deref() == Some(b.as_slice()),
        AMQPValue::FieldArray(items) => json.as_array().is_some_and(|a| {
            a.len() == items.as_slice().len()
                && items
                    .as_slice()
                    .iter()
                    .zip(a)
                    .all(|(v, j)| same_value(v, j))
        }),
        AMQPValue::FieldTable(t) => same_table(t, json),
        AMQPValue::Void => json.is_null(),
    }
}

/// Finite numbers survive to the last bit; NaN and infinities become null. The agent writes the
/// shortest representation that reads back exactly (ryu), and this crate parses it exactly
/// (serde_json's `float_roundtrip`): the default parser is off by more than a few ulps on
/// subnormals, which is what the first crash of this target was (1.68786176167026e-309).
fn same_float(x: f64, json: &Value) -> bool {
    if !x.is_finite() {
        return json.is_null();
    }
    json.as_f64().is_some_and(|y| y.to_bits() == x.to_bits())
}

fn base64_of(json: &Value) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(json.as_str()?)
        .ok()
}
