use crate::{flags::*, types::*, value::*};
use nom::{
    self, Parser,
    bytes::streaming::take,
    combinator::{all_consuming, complete, flat_map, map, map_opt, map_parser},
    error::{ContextError, ErrorKind, ParseError, context},
    multi::fold_many0,
    number::streaming::{
        be_f32, be_f64, be_i16, be_i32, be_i64, be_u16, be_u32, be_u64, i8 as be_i8, u8 as be_u8,
    },
    sequence::pair,
};
use std::{error, fmt};
use traits::*;

/// Error context for `ParserErrors`
#[derive(Clone, Debug, Eq, PartialEq)]
enum VerboseErrorKind {
    /// Static string added by the `context` function
    Context(&'static str),
    /// Indicates which character was expected by the `char` function
    Char(char),
    /// Error kind given by various nom parsers
    Nom(ErrorKind),
}

/// Struct holding the errors stack
#[derive(Clone, Debug, PartialEq)]
pub struct ParserErrors {
    error: VerboseErrorKind,
    errors: Option<Vec<VerboseErrorKind>>,
}

impl ParserErrors {
    #[cfg(not(feature = "verbose-errors"))]
    fn init_errors() -> Option<Vec<VerboseErrorKind>> {
        None
    }
    #[cfg(feature = "verbose-errors")]
    fn init_errors() -> Option<Vec<VerboseErrorKind>> {
        Some(Vec::new())
    }
}

impl<I> ParseError<I> for ParserErrors {
    fn from_error_kind(_input: I, kind: ErrorKind) -> Self {
        Self {
            error: VerboseErrorKind::Nom(kind),
            errors: Self::init_errors(),
        }
    }

    fn append(_input: I, kind: ErrorKind, mut other: Self) -> Self {
        if let Some(errors) = other.errors.as_mut() {
            errors.push(VerboseErrorKind::Nom(kind));
        }
        other
    }

    fn from_char(_input: I, c: char) -> Self {
        Self {
            error: VerboseErrorKind::Char(c),
            errors: Self::init_errors(),
        }
    }
}

impl<I> ContextError<I> for ParserErrors {
    fn add_context(_input: I, ctx: &'static str, mut other: Self) -> Self {
        if let Some(errors) = other.errors.as_mut() {
            errors.push(VerboseErrorKind::Context(ctx));
        }
        other
    }
}

impl<I, E> nom::error::FromExternalError<I, E> for ParserErrors {
    fn from_external_error(input: I, kind: ErrorKind, _e: E) -> Self {
        Self::from_error_kind(input, kind)
    }
}

impl fmt::Display for ParserErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Parser error: {:?}", self.error)?;
        if let Some(errors) = self.errors.as_ref() {
            for error in errors {
                writeln!(f)?;
                write!(f, "\tat {error:?}")?;
            }
        }
        Ok(())
    }
}

impl error::Error for ParserErrors {}

/// Error returned by parsers
pub type ParserError = nom::Err<ParserErrors>;
/// Return type of parsers
pub type ParserResult<I, T> = Result<(I, T), ParserError>;

/// Deepest field table or field array that is parsed (amqp-agent patch, see `PATCHES.md`).
///
/// The table or array read by a top-level call (e.g. a message's `headers`) is at depth 1; a
/// table or array inside it is at depth 2, and so on. A table or array that would sit deeper
/// than this is not parsed: it is skipped by its length prefix and replaced by
/// [`nesting_truncated`], and the rest of the frame parses as usual. Parsing recurses once per
/// level, so this bounds the stack one frame can use; it also bounds every other recursive walk
/// over a parsed value (`Clone`, `Drop`, `Debug`, the generator).
pub const MAX_NESTING_DEPTH: usize = 64;

/// Text of the value that stands for a field table or field array nested deeper than
/// [`MAX_NESTING_DEPTH`] (see [`nesting_truncated`]).
pub const NESTING_TRUNCATED: &str =
    "amq-protocol-types: nested deeper than MAX_NESTING_DEPTH, skipped";

/// The value that replaces a table or array nested deeper than [`MAX_NESTING_DEPTH`]: a
/// `LongString` holding [`NESTING_TRUNCATED`].
#[must_use]
pub fn nesting_truncated() -> AMQPValue {
    AMQPValue::LongString(NESTING_TRUNCATED.into())
}

/// Parse the [AMQPValue](../type.AMQPValue.html) of the given [AMQPType](../type.AMQPType.html)
#[must_use]
pub fn parse_raw_value<I: ParsableInput>(
    amqp_type: AMQPType,
) -> impl Parser<I, Output = AMQPValue, Error = ParserErrors> {
    parse_raw_value_at(amqp_type, 1)
}

/// `parse_raw_value` for a value whose table or array, if it is one, sits at `depth`.
fn parse_raw_value_at<I: ParsableInput>(
    amqp_type: AMQPType,
    depth: usize,
) -> impl Parser<I, Output = AMQPValue, Error = ParserErrors> {
    context("parse_raw_value", move |i| match amqp_type {
        AMQPType::Boolean => map(parse_boolean, AMQPValue::Boolean).parse(i),
        AMQPType::ShortShortInt => map(parse_short_short_int, AMQPValue::ShortShortInt).parse(i),
        AMQPType::ShortShortUInt => map(parse_short_short_uint, AMQPValue::ShortShortUInt).parse(i),
        AMQPType::ShortInt => map(parse_short_int, AMQPValue::ShortInt).parse(i),
        AMQPType::ShortUInt => map(parse_short_uint, AMQPValue::ShortUInt).parse(i),
        AMQPType::LongInt => map(parse_long_int, AMQPValue::LongInt).parse(i),
        AMQPType::LongUInt => map(parse_long_uint, AMQPValue::LongUInt).parse(i),
        AMQPType::LongLongInt => map(parse_long_long_int, AMQPValue::LongLongInt).parse(i),
        /* RabbitMQ treats LongLongUInt as a LongLongInt hence expose it as such */
        AMQPType::LongLongUInt => map(parse_long_long_int, AMQPValue::LongLongInt).parse(i),
        AMQPType::Float => map(parse_float, AMQPValue::Float).parse(i),
        AMQPType::Double => map(parse_double, AMQPValue::Double).parse(i),
        AMQPType::DecimalValue => map(parse_decimal_value, AMQPValue::DecimalValue).parse(i),
        AMQPType::ShortString => map(parse_short_string, AMQPValue::ShortString).parse(i),
        AMQPType::LongString => map(parse_long_string, AMQPValue::LongString).parse(i),
        AMQPType::FieldArray | AMQPType::FieldTable if depth > MAX_NESTING_DEPTH => skip_nested(i),
        AMQPType::FieldArray => {
            map(|i| parse_field_array_at(i, depth), AMQPValue::FieldArray).parse(i)
        }
        AMQPType::Timestamp => map(parse_timestamp, AMQPValue::Timestamp).parse(i),
        AMQPType::FieldTable => {
            map(|i| parse_field_table_at(i, depth), AMQPValue::FieldTable).parse(i)
        }
        AMQPType::ByteArray => map(parse_byte_array, AMQPValue::ByteArray).parse(i),
        AMQPType::Void => Ok((i, AMQPValue::Void)),
    })
}

/// Consumes a length-prefixed table or array without looking inside it, so without recursing
/// however deep it nests, and returns the marker.
fn skip_nested<I: ParsableInput>(i: I) -> ParserResult<I, AMQPValue> {
    context(
        "skip_nested",
        map(flat_map(parse_long_uint, take), |_| nesting_truncated()),
    )
    .parse(i)
}

/// Parse an [AMQPValue](../type.AMQPValue.html)
pub fn parse_value<I: ParsableInput>(i: I) -> ParserResult<I, AMQPValue> {
    parse_value_at(i, 1)
}

/// `parse_value` for a value whose table or array, if it is one, sits at `depth`.
fn parse_value_at<I: ParsableInput>(i: I, depth: usize) -> ParserResult<I, AMQPValue> {
    context(
        "parse_value",
        flat_map(parse_type, move |t| parse_raw_value_at(t, depth)),
    )
    .parse(i)
}

/// Parse an [AMQPType](../type.AMQPType.html)
pub fn parse_type<I: ParsableInput>(i: I) -> ParserResult<I, AMQPType> {
    context(
        "parse_type",
        map_opt(be_u8, |t| AMQPType::from_id(t as char)),
    )
    .parse(i)
}

/// Parse an id [(ShortUInt)](../type.ShortUInt.html)
pub fn parse_id<I: ParsableInput>(i: I) -> ParserResult<I, ShortUInt> {
    context("parse_id", parse_short_uint).parse(i)
}

/// Parse a [Boolean](../type.Boolean.html)
pub fn parse_boolean<I: ParsableInput>(i: I) -> ParserResult<I, Boolean> {
    context("parse_boolean", map(be_u8, |b| b != 0)).parse(i)
}

/// Parse a [ShortShortInt](../type.ShortShortInt.html)
pub fn parse_short_short_int<I: ParsableInput>(i: I) -> ParserResult<I, ShortShortInt> {
    context("parse_short_short_int", be_i8).parse(i)
}

/// Parse a [ShortShortUInt](../type.ShortShortUInt.html)
pub fn parse_short_short_uint<I: ParsableInput>(i: I) -> ParserResult<I, ShortShortUInt> {
    context("parse_short_short_uint", be_u8).parse(i)
}

/// Parse a [ShortInt](../type.ShortInt.html)
pub fn parse_short_int<I: ParsableInput>(i: I) -> ParserResult<I, ShortInt> {
    context("parse_short_int", be_i16).parse(i)
}

/// Parse a [ShortUInt](../type.ShortUInt.html)
pub fn parse_short_uint<I: ParsableInput>(i: I) -> ParserResult<I, ShortUInt> {
    context("parse_short_uint", be_u16).parse(i)
}

/// Parse a [LongInt](../type.LongInt.html)
pub fn parse_long_int<I: ParsableInput>(i: I) -> ParserResult<I, LongInt> {
    context("parse_long_int", be_i32).parse(i)
}

/// Parse a [LongUInt](../type.LongUInt.html)
pub fn parse_long_uint<I: ParsableInput>(i: I) -> ParserResult<I, LongUInt> {
    context("parse_long_uint", be_u32).parse(i)
}

/// Parse a [LongLongInt](../type.LongLongInt.html)
pub fn parse_long_long_int<I: ParsableInput>(i: I) -> ParserResult<I, LongLongInt> {
    context("parse_long_long_int", be_i64).parse(i)
}

/// Parse a [LongLongUInt](../type.LongLongUInt.html)
pub fn parse_long_long_uint<I: ParsableInput>(i: I) -> ParserResult<I, LongLongUInt> {
    context("parse_long_long_uint", be_u64).parse(i)
}

/// Parse a [Float](../type.Float.html)
pub fn parse_float<I: ParsableInput>(i: I) -> ParserResult<I, Float> {
    context("parse_float", be_f32).parse(i)
}

/// Parse a [Double](../type.Double.html)
pub fn parse_double<I: ParsableInput>(i: I) -> ParserResult<I, Double> {
    context("parse_double", be_f64).parse(i)
}

/// Parse a [DecimalValue](../type.DecimalValue.html)
pub fn parse_decimal_value<I: ParsableInput>(i: I) -> ParserResult<I, DecimalValue> {
    context(
        "parse_decimal_value",
        map(
            pair(parse_short_short_uint, parse_long_uint),
            |(scale, value)| DecimalValue { scale, value },
        ),
    )
    .parse(i)
}

/// Start of the text that stands for a short string whose bytes are not UTF-8 (see
/// [`not_utf8`]). It begins with U+FFFD, the replacement character.
pub const NOT_UTF8_PREFIX: &str = "\u{FFFD}amqp-not-utf8:";

/// The `ShortString` that stands for `bytes`, which are not UTF-8: [`NOT_UTF8_PREFIX`] followed
/// by the bytes in lowercase hex. The original returned a parse error, which lapin treats as a
/// connection error: a message with such a property (RabbitMQ accepts them) then killed every
/// connection it was delivered on. Its text may be longer than 255 bytes: it must be read with
/// [`not_utf8_bytes`] and never generated again.
#[must_use]
pub fn not_utf8(bytes: &[u8]) -> ShortString {
    let mut text = String::with_capacity(NOT_UTF8_PREFIX.len() + bytes.len() * 2);
    text.push_str(NOT_UTF8_PREFIX);
    for b in bytes {
        text.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        text.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    ShortString::unchecked(text)
}

/// The original bytes of a short string that [`not_utf8`] stands for, or `None` for any other
/// text.
#[must_use]
pub fn not_utf8_bytes(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix(NOT_UTF8_PREFIX)?;
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digit = |c: u8| char::from(c).to_digit(16);
            Some(u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?)
        })
        .collect()
}

fn make_short_string<I: Input<Item = u8>>(i: I) -> ShortString {
    let bytes: Vec<u8> = i.iter_elements().collect();
    match String::from_utf8(bytes) {
        Ok(text) => ShortString::from(text),
        Err(e) => not_utf8(e.as_bytes()),
    }
}

/// Parse a [ShortString](../type.ShortString.html)
pub fn parse_short_string<I: ParsableInput>(i: I) -> ParserResult<I, ShortString> {
    context(
        "parse_short_string",
        // amqp-agent patch: bytes that are not UTF-8 become `not_utf8(bytes)`, not an error.
        map(flat_map(parse_short_short_uint, take), make_short_string),
    )
    .parse(i)
}

/// Parse a [LongString](../type.LongString.html)
pub fn parse_long_string<I: ParsableInput>(i: I) -> ParserResult<I, LongString> {
    context(
        "parse_long_string",
        map(flat_map(parse_long_uint, take), |i: I| {
            i.iter_elements().collect::<Vec<u8>>().into()
        }),
    )
    .parse(i)
}

/// Parse a [FieldArray](../type.FieldArray.html)
pub fn parse_field_array<I: ParsableInput>(i: I) -> ParserResult<I, FieldArray> {
    parse_field_array_at(i, 1)
}

/// `parse_field_array` for an array at `depth` (its elements are at `depth + 1`).
fn parse_field_array_at<I: ParsableInput>(i: I, depth: usize) -> ParserResult<I, FieldArray> {
    context(
        "parse_field_array",
        map_parser(
            flat_map(parse_long_uint, take),
            all_consuming(fold_many0(
                context(
                    "parse_field_array_entry",
                    complete(move |i| parse_value_at(i, depth + 1)),
                ),
                FieldArray::default,
                |mut acc, elem| {
                    acc.push(elem);
                    acc
                },
            )),
        ),
    )
    .parse(i)
}

/// Parse a [Timestamp](../type.Timestamp.html)
pub fn parse_timestamp<I: ParsableInput>(i: I) -> ParserResult<I, Timestamp> {
    context("parse_timestamp", parse_long_long_uint).parse(i)
}

/// Parse a [FieldTable](../type.FieldTable.html)
pub fn parse_field_table<I: ParsableInput>(i: I) -> ParserResult<I, FieldTable> {
    parse_field_table_at(i, 1)
}

/// `parse_field_table` for a table at `depth` (its values are at `depth + 1`).
fn parse_field_table_at<I: ParsableInput>(i: I, depth: usize) -> ParserResult<I, FieldTable> {
    context(
        "parse_field_table",
        map_parser(
            flat_map(parse_long_uint, take),
            all_consuming(fold_many0(
                context(
                    "parse_field_table_entry",
                    complete(pair(parse_short_string, move |i| {
                        parse_value_at(i, depth + 1)
                    })),
                ),
                FieldTable::default,
                |mut acc, (key, value)| {
                    acc.insert(key, value);
                    acc
                },
            )),
        ),
    )
    .parse(i)
}

/// Parse a [ByteArray](../type.ByteArray.html)
pub fn parse_byte_array<I: ParsableInput>(i: I) -> ParserResult<I, ByteArray> {
    context(
        "parse_byte_array",
        map(flat_map(parse_long_uint, take), |i: I| {
            i.iter_elements().collect::<Vec<u8>>().into()
        }),
    )
    .parse(i)
}

/// Parse the [AMQPFlags](../type.AMQPFlags.html) for which the names are provided
pub fn parse_flags<I: ParsableInput>(
    i: I,
    names: &[&'static str],
) -> ParserResult<I, AMQPFlags> {
    context(
        "parse_flags",
        map(take(names.len().div_ceil(8)), |b| {
            AMQPFlags::from_bytes(names, b)
        }),
    )
    .parse(i)
}

/// Traits required for parsing
pub mod traits {
    /// Reexport nom traits required for parsing
    pub use nom::{Compare, CompareResult, Input, Needed};

    /// Trait used to ensure we can properly parse input
    pub trait ParsableInput: Clone + Compare<&'static [u8]> + Input<Item = u8> + PartialEq {}

    impl<T: Clone + Compare<&'static [u8]> + Input<Item = u8> + PartialEq> ParsableInput for T {}
}

#[cfg(test)]
mod test {
    use super::*;

    const EMPTY: &[u8] = b"";

    #[test]
    fn test_parse_value() {
        assert_eq!(
            parse_value(&[84, 42, 42, 42, 42, 42, 42, 42, 42][..]),
            Ok((EMPTY, AMQPValue::Timestamp(3038287259199220266)))
        );
        assert_eq!(
            parse_value(&[83, 0, 0, 0, 4, 116, 101, 115, 116][..]),
            Ok((EMPTY, AMQPValue::LongString("test".into())))
        );
    }

    #[test]
    fn test_parse_raw_value() {
        assert_eq!(
            parse_raw_value(AMQPType::Timestamp).parse(&[42, 42, 42, 42, 42, 42, 42, 42][..]),
            Ok((EMPTY, AMQPValue::Timestamp(3038287259199220266)))
        );
        assert_eq!(
            parse_raw_value(AMQPType::LongString).parse(&[0, 0, 0, 4, 116, 101, 115, 116][..]),
            Ok((EMPTY, AMQPValue::LongString("test".into())))
        );
        /* Test internal exceptions */
        assert_eq!(
            parse_raw_value(AMQPType::LongLongUInt).parse(&[42, 42, 42, 42, 42, 42, 42, 42][..]),
            Ok((EMPTY, AMQPValue::LongLongInt(3038287259199220266)))
        );
        assert_eq!(
            parse_raw_value(AMQPType::ShortString).parse(&[4, 116, 101, 115, 116][..]),
            Ok((EMPTY, AMQPValue::ShortString("test".into())))
        );
    }

    #[test]
    fn test_parse_type() {
        assert_eq!(parse_type(&[116][..]), Ok((EMPTY, AMQPType::Boolean)));
        assert_eq!(parse_type(&[102][..]), Ok((EMPTY, AMQPType::Float)));
    }

    #[test]
    fn test_parse_id() {
        assert_eq!(parse_id(&[0, 0][..]), Ok((EMPTY, 0)));
        assert_eq!(parse_id(&[255, 255][..]), Ok((EMPTY, 65535)));
    }

    #[test]
    fn test_parse_boolean() {
        assert_eq!(parse_boolean(&[0][..]), Ok((EMPTY, false)));
        assert_eq!(parse_boolean(&[1][..]), Ok((EMPTY, true)));
    }

    #[test]
    fn test_parse_short_short_int() {
        assert_eq!(parse_short_short_int(&[0][..]), Ok((EMPTY, 0)));
        assert_eq!(parse_short_short_int(&[255][..]), Ok((EMPTY, -1)));
    }

    #[test]
    fn test_parse_short_short_uint() {
        assert_eq!(parse_short_short_uint(&[0][..]), Ok((EMPTY, 0)));
        assert_eq!(parse_short_short_uint(&[255][..]), Ok((EMPTY, 255)));
    }

    #[test]
    fn test_parse_short_int() {
        assert_eq!(parse_short_int(&[0, 0][..]), Ok((EMPTY, 0)));
        assert_eq!(parse_short_int(&[255, 255][..]), Ok((EMPTY, -1)));
    }

    #[test]
    fn test_parse_short_uint() {
        assert_eq!(parse_short_uint(&[0, 0][..]), Ok((EMPTY, 0)));
        assert_eq!(parse_short_uint(&[255, 255][..]), Ok((EMPTY, 65535)));
    }

    #[test]
    fn test_parse_long_int() {
        assert_eq!(parse_long_int(&[0, 0, 0, 0][..]), Ok((EMPTY, 0)));
        assert_eq!(parse_long_int(&[255, 255, 255, 255][..]), Ok((EMPTY, -1)));
    }

    #[test]
    fn test_parse_long_uint() {
        assert_eq!(parse_long_uint(&[0, 0, 0, 0][..]), Ok((EMPTY, 0)));
        assert_eq!(
            parse_long_uint(&[255, 255, 255, 255][..]),
            Ok((EMPTY, 4294967295))
        );
    }

    #[test]
    fn test_parse_long_long_int() {
        assert_eq!(
            parse_long_long_int(&[0, 0, 0, 0, 0, 0, 0, 0][..]),
            Ok((EMPTY, 0))
        );
        assert_eq!(
            parse_long_long_int(&[255, 255, 255, 255, 255, 255, 255, 255][..]),
            Ok((EMPTY, -1))
        );
    }

    #[test]
    fn test_parse_long_long_uint() {
        assert_eq!(
            parse_long_long_uint(&[0, 0, 0, 0, 0, 0, 0, 0][..]),
            Ok((EMPTY, 0))
        );
        assert_eq!(
            parse_long_long_uint(&[255, 255, 255, 255, 255, 255, 255, 255][..]),
            Ok((EMPTY, 18446744073709551615))
        );
    }

    #[test]
    fn test_parse_float() {
        assert_eq!(parse_float(&[0, 0, 0, 0][..]), Ok((EMPTY, 0.)));
        assert_eq!(parse_float(&[66, 41, 174, 20][..]), Ok((EMPTY, 42.42)));
    }

    #[test]
    fn test_parse_double() {
        assert_eq!(parse_double(&[0, 0, 0, 0, 0, 0, 0, 0][..]), Ok((EMPTY, 0.)));
        assert_eq!(
            parse_double(&[64, 69, 53, 194, 143, 92, 40, 246][..]),
            Ok((EMPTY, 42.42))
        );
    }

    #[test]
    fn test_parse_decimal_value() {
        assert_eq!(
            parse_decimal_value(&[0, 0, 0, 0, 0][..]),
            Ok((EMPTY, DecimalValue { scale: 0, value: 0 }))
        );
        assert_eq!(
            parse_decimal_value(&[255, 255, 255, 255, 255][..]),
            Ok((
                EMPTY,
                DecimalValue {
                    scale: 255,
                    value: 4294967295
                }
            ))
        );
    }

    #[test]
    fn test_parse_short_string() {
        assert_eq!(
            parse_short_string(&[0][..]),
            Ok((EMPTY, ShortString::default()))
        );
        assert_eq!(
            parse_short_string(&[4, 116, 101, 115, 116][..]),
            Ok((EMPTY, "test".into()))
        );
    }

    #[test]
    fn test_parse_long_string() {
        assert_eq!(
            parse_long_string(&[0, 0, 0, 0][..]),
            Ok((EMPTY, LongString::default()))
        );
        assert_eq!(
            parse_long_string(&[0, 0, 0, 4, 116, 101, 115, 116][..]),
            Ok((EMPTY, "test".into()))
        );
    }

    #[test]
    fn test_parse_field_array() {
        assert_eq!(
            parse_field_array(&[0, 0, 0, 0][..]),
            Ok((EMPTY, FieldArray::default()))
        );
        assert_eq!(
            parse_field_array(&[0, 0, 0, 10, 83, 0, 0, 0, 4, 116, 101, 115, 116, 86][..]),
            Ok((
                EMPTY,
                vec![AMQPValue::LongString("test".into()), AMQPValue::Void].into()
            ))
        );
    }

    #[test]
    fn test_parse_timestamp() {
        assert_eq!(
            parse_timestamp(&[0, 0, 0, 0, 0, 0, 0, 0][..]),
            Ok((EMPTY, 0))
        );
        assert_eq!(
            parse_timestamp(&[255, 255, 255, 255, 255, 255, 255, 255][..]),
            Ok((EMPTY, 18446744073709551615))
        );
    }

    #[test]
    fn test_parse_field_table() {
        let mut table = FieldTable::default();
        table.insert("test".into(), AMQPValue::LongString("test".into()));
        table.insert("tt".into(), AMQPValue::Void);
        assert_eq!(
            parse_field_table(&[0, 0, 0, 0][..]),
            Ok((EMPTY, FieldTable::default()))
        );
        assert_eq!(
            parse_field_table(
                &[
                    0, 0, 0, 18, 4, 116, 101, 115, 116, 83, 0, 0, 0, 4, 116, 101, 115, 116, 2, 116,
                    116, 86
                ][..]
            ),
            Ok((EMPTY, table))
        );
    }

    #[test]
    fn test_parse_byte_array() {
        assert_eq!(
            parse_byte_array(&[0, 0, 0, 0][..]),
            Ok((EMPTY, ByteArray::default()))
        );
        assert_eq!(
            parse_byte_array(&[0, 0, 0, 4, 42, 1, 2, 3][..]),
            Ok((EMPTY, vec![42, 1, 2, 3].into()))
        );
    }

    #[test]
    fn test_parse_flags() {
        let mut flags = AMQPFlags::default();
        let mut names = Vec::new();
        names.push("a");
        flags.add_flag("a".to_string(), true);
        names.push("b");
        flags.add_flag("b".to_string(), false);
        names.push("c");
        flags.add_flag("c".to_string(), true);
        names.push("d");
        flags.add_flag("d".to_string(), true);
        assert_eq!(
            parse_flags(&[0b00001101][..], &names),
            Ok((EMPTY, flags.clone()))
        );
        names.push("e");
        flags.add_flag("e".to_string(), true);
        names.push("f");
        flags.add_flag("f".to_string(), false);
        names.push("g");
        flags.add_flag("g".to_string(), true);
        names.push("h");
        flags.add_flag("h".to_string(), true);
        names.push("i");
        flags.add_flag("i".to_string(), false);
        names.push("j");
        flags.add_flag("j".to_string(), true);
        assert_eq!(
            parse_flags(&[0b11011101, 0b00000010][..], &names),
            Ok((EMPTY, flags))
        );
    }
}

/// The nesting limit (amqp-agent patch, see `PATCHES.md`).
#[cfg(test)]
mod nesting {
    use super::*;
    use crate::generation::gen_field_table;
    use cookie_factory::r#gen as generate;

    /// A field table `{"deep": <levels nested arrays or tables>, "more": "ok"}` on the wire.
    /// Each level is written as `type, length, content`, so no recursion is needed to build it.
    fn deep_table(levels: usize, kind: u8) -> Vec<u8> {
        let per_level = if kind == b'A' { 5 } else { 7 }; // a table level also has its key "k"
        let mut value = Vec::with_capacity(levels * per_level);
        for level in 1..=levels {
            if kind == b'F' && level > 1 {
                value.extend_from_slice(&[1, b'k']);
            }
            value.push(kind);
            let inner = (levels - level) * per_level;
            value.extend_from_slice(&(inner as u32).to_be_bytes());
        }
        let mut content = vec![4];
        content.extend_from_slice(b"deep");
        content.extend_from_slice(&value);
        content.extend_from_slice(&[4, b'm', b'o', b'r', b'e', b'S', 0, 0, 0, 2, b'o', b'k']);
        let mut table = (content.len() as u32).to_be_bytes().to_vec();
        table.extend_from_slice(&content);
        table
    }

    /// Follows the chain of nested values down from `value`; returns the number of tables and
    /// arrays on the way (an empty one at the bottom included) and the last value reached.
    fn bottom(mut value: &AMQPValue) -> (usize, &AMQPValue) {
        let mut containers = 0;
        loop {
            let first = match value {
                AMQPValue::FieldArray(a) => a.as_slice().first(),
                AMQPValue::FieldTable(t) => t.inner().values().next(),
                _ => return (containers, value),
            };
            containers += 1;
            match first {
                Some(next) => value = next,
                None => return (containers, value),
            }
        }
    }

    fn check_cut(levels: usize, kind: u8) {
        let bytes = deep_table(levels, kind);
        let trailing = [0xCE, 1, 2];
        let input = [&bytes[..], &trailing[..]].concat();
        let (rest, table) = parse_field_table(&input[..]).unwrap();
        assert_eq!(
            rest,
            &trailing[..],
            "the bytes after the table are left for the next field"
        );
        assert_eq!(
            table.inner().get("more"),
            Some(&AMQPValue::LongString("ok".into()))
        );
        // The headers table is depth 1, "deep" depth 2: MAX_NESTING_DEPTH - 1 levels are kept.
        let (containers, last) = bottom(&table.inner()["deep"]);
        assert_eq!(containers, MAX_NESTING_DEPTH - 1);
        assert_eq!(last, &nesting_truncated());
    }

    #[test]
    fn arrays_100000_levels_deep_are_cut_at_the_limit() {
        check_cut(100_000, b'A');
    }

    #[test]
    fn tables_100000_levels_deep_are_cut_at_the_limit() {
        check_cut(100_000, b'F');
    }

    #[test]
    fn one_level_past_the_limit_is_cut() {
        check_cut(MAX_NESTING_DEPTH, b'A');
        check_cut(MAX_NESTING_DEPTH, b'F');
    }

    fn round_trip(bytes: &[u8]) {
        let (rest, table) = parse_field_table(bytes).unwrap();
        assert!(rest.is_empty());
        let (out, _) = generate(gen_field_table(&table), Vec::new()).unwrap();
        assert_eq!(out, bytes, "parse then generate gives the same bytes");
    }

    #[test]
    fn a_value_at_the_limit_parses_whole_and_byte_identical() {
        // "deep" holds MAX_NESTING_DEPTH - 1 levels: the deepest is at depth MAX_NESTING_DEPTH.
        for kind in [b'A', b'F'] {
            let bytes = deep_table(MAX_NESTING_DEPTH - 1, kind);
            round_trip(&bytes);
            let (_, table) = parse_field_table(&bytes[..]).unwrap();
            let (containers, last) = bottom(&table.inner()["deep"]);
            assert_eq!(containers, MAX_NESTING_DEPTH - 1);
            assert_ne!(last, &nesting_truncated());
        }
    }

    #[test]
    fn ordinary_headers_parse_byte_identical() {
        // An x-death-like table with every value type, nested a few levels.
        let mut death = FieldTable::default();
        death.insert("count".into(), AMQPValue::LongLongInt(3));
        death.insert("reason".into(), AMQPValue::LongString("expired".into()));
        death.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(vec![AMQPValue::LongString("a.b".into())].into()),
        );
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        );
        headers.insert("t".into(), AMQPValue::Boolean(true));
        headers.insert("b".into(), AMQPValue::ShortShortInt(-1));
        headers.insert("B".into(), AMQPValue::ShortShortUInt(255));
        headers.insert("s".into(), AMQPValue::ShortInt(-2));
        headers.insert("u".into(), AMQPValue::ShortUInt(2));
        headers.insert("I".into(), AMQPValue::LongInt(-3));
        headers.insert("i".into(), AMQPValue::LongUInt(3));
        headers.insert("l".into(), AMQPValue::LongLongInt(-4));
        headers.insert("f".into(), AMQPValue::Float(1.5));
        headers.insert("d".into(), AMQPValue::Double(2.5));
        headers.insert(
            "D".into(),
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 314,
            }),
        );
        headers.insert("x".into(), AMQPValue::ByteArray(vec![0, 1, 2].into()));
        headers.insert("V".into(), AMQPValue::Void);
        headers.insert("empty".into(), AMQPValue::FieldTable(FieldTable::default()));
        let (bytes, _) = generate(gen_field_table(&headers), Vec::new()).unwrap();
        round_trip(&bytes);
        assert_eq!(parse_field_table(&bytes[..]).unwrap().1, headers);
    }

    #[test]
    fn a_value_at_the_limit_fits_a_small_stack() {
        // Everything done with a parsed value recurses at most MAX_NESTING_DEPTH levels: parse,
        // clone, format, generate, drop. Half of Rust's default 2 MiB thread stack is enough
        // even for this unoptimised build (measured: parsing needs about 650 KiB here, 150 KiB
        // in a release build; see PATCHES.md).
        let bytes = deep_table(100_000, b'F');
        std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(move || {
                let (_, table) = parse_field_table(&bytes[..]).unwrap();
                let copy = table.clone();
                assert!(format!("{copy:?}").contains("LongString"));
                generate(gen_field_table(&copy), Vec::new()).unwrap();
                drop(copy);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}

/// Short strings that are not UTF-8 (amqp-agent patch, see `PATCHES.md`).
#[cfg(test)]
mod not_utf8_strings {
    use super::*;

    #[test]
    fn utf8_short_strings_parse_as_before() {
        let input = [5, b'h', 0xc3, 0xa9, b'l', b'o'];
        assert_eq!(
            parse_short_string(&input[..]),
            Ok((&[][..], ShortString::from("h\u{e9}lo")))
        );
    }

    #[test]
    fn other_bytes_become_a_marker_that_gives_them_back() {
        for bytes in [vec![0xff, 0xfe], vec![b'c', b'a', b'f', 0xe9], vec![0x80; 255], vec![0xc3]] {
            let mut input = vec![u8::try_from(bytes.len()).unwrap()];
            input.extend_from_slice(&bytes);
            input.push(7); // what follows is left for the next parser
            let (rest, parsed) = parse_short_string(&input[..]).unwrap();
            assert_eq!(rest, &[7][..]);
            assert!(parsed.as_str().starts_with(NOT_UTF8_PREFIX));
            assert_eq!(not_utf8_bytes(parsed.as_str()), Some(bytes));
        }
        assert_eq!(not_utf8_bytes("plain"), None);
        assert_eq!(not_utf8_bytes(&format!("{NOT_UTF8_PREFIX}abc")), None);
        assert_eq!(not_utf8_bytes(&format!("{NOT_UTF8_PREFIX}zz")), None);
    }

    #[test]
    fn a_table_with_a_latin1_key_parses_with_the_marker_as_key() {
        // {"k\xe9y": "v", "ok": "yes"}
        let mut content = vec![3, b'k', 0xe9, b'y', b'S', 0, 0, 0, 1, b'v'];
        content.extend_from_slice(&[2, b'o', b'k', b'S', 0, 0, 0, 3, b'y', b'e', b's']);
        let mut input = (content.len() as u32).to_be_bytes().to_vec();
        input.extend_from_slice(&content);
        let (_, table) = parse_field_table(&input[..]).unwrap();
        let keys: Vec<String> = table.inner().keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&"ok".to_owned()));
        let marker = keys.iter().find(|k| k.as_str() != "ok").unwrap();
        assert_eq!(not_utf8_bytes(marker), Some(vec![b'k', 0xe9, b'y']));
    }
}
