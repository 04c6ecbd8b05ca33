use lapin::BasicProperties;
use lapin::types::parsing::not_utf8 as stand_in;
use lapin::types::{AMQPValue, FieldTable, LongString};

use super::*;
use crate::contract::{NOT_UTF8_HEADER, NOT_UTF8_HEADERS_HEADER, USER_ID_HEADER};

fn bytes_of(value: Option<&AMQPValue>) -> Option<Vec<u8>> {
    match value? {
        AMQPValue::LongString(s) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

#[test]
fn a_copy_keeps_clean_properties_and_moves_the_rest_into_headers() {
    let mut headers = FieldTable::default();
    headers.insert(
        "ok".into(),
        AMQPValue::LongString(LongString::from(&b"v"[..])),
    );
    headers.insert(stand_in(b"k\xe9y"), AMQPValue::LongLongInt(7));
    let mut inner = FieldTable::default();
    inner.insert(stand_in(b"n\xe9"), AMQPValue::Boolean(true));
    headers.insert("nested".into(), AMQPValue::FieldTable(inner));
    let props = BasicProperties::default()
        .with_message_id(stand_in(&[0xff, 0xfe]))
        .with_type(stand_in(b"caf\xe9"))
        .with_content_type("application/json".into())
        .with_user_id("publisher".into())
        .with_delivery_mode(2)
        .with_priority(3)
        .with_headers(headers);
    let (copy, moved) = sanitized(&props);
    assert_eq!(copy.message_id(), &None);
    assert_eq!(copy.kind(), &None);
    assert_eq!(copy.user_id(), &None);
    assert_eq!(
        copy.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(copy.delivery_mode(), &Some(2));
    assert_eq!(copy.priority(), &Some(3));
    let h = copy.headers().as_ref().unwrap().inner();
    let AMQPValue::FieldTable(raw) = &h[NOT_UTF8_HEADER] else {
        panic!("{NOT_UTF8_HEADER} is a table")
    };
    assert_eq!(
        bytes_of(raw.inner().get("message_id")),
        Some(vec![0xff, 0xfe])
    );
    assert_eq!(bytes_of(raw.inner().get("type")), Some(b"caf\xe9".to_vec()));
    assert_eq!(bytes_of(h.get(USER_ID_HEADER)), Some(b"publisher".to_vec()));
    let AMQPValue::FieldArray(bad) = &h[NOT_UTF8_HEADERS_HEADER] else {
        panic!("{NOT_UTF8_HEADERS_HEADER} is an array")
    };
    let AMQPValue::FieldArray(pair) = &bad.as_slice()[0] else {
        panic!("a pair")
    };
    assert_eq!(bytes_of(pair.as_slice().first()), Some(b"k\xe9y".to_vec()));
    assert_eq!(pair.as_slice()[1], AMQPValue::LongLongInt(7));
    let AMQPValue::FieldTable(nested) = &h["nested"] else {
        panic!("nested stays a table")
    };
    assert!(nested.inner().contains_key("n\u{e9}"), "Latin-1 reading");
    assert!(h.contains_key("ok"));
    assert_eq!(moved.len(), 4, "{moved:?}");
    // What is left encodes: no stand-in is generated again.
    assert!(header_frame_len(&copy) < 1_000);
}

#[test]
fn a_clean_message_is_copied_unchanged() {
    let props = BasicProperties::default()
        .with_message_id("m-1".into())
        .with_type("App\\Event".into())
        .with_delivery_mode(2);
    let (copy, moved) = sanitized(&props);
    assert!(moved.is_empty());
    assert_eq!(copy, props);
}

#[test]
fn the_first_field_that_is_not_utf8_is_named() {
    let id = stand_in(&[0xff, 0xfe]);
    let found = first_not_utf8(
        [("message_id", Some(id.as_str())), ("type", Some("ok"))],
        None,
    );
    assert_eq!(found, Some(("message_id".to_owned(), vec![0xff, 0xfe])));
    let mut inner = FieldTable::default();
    inner.insert(stand_in(b"\xe9"), AMQPValue::Void);
    let mut headers = FieldTable::default();
    headers.insert("outer".into(), AMQPValue::FieldTable(inner));
    let found = first_not_utf8([("type", Some("ok"))], Some(&headers)).unwrap();
    assert_eq!(found.1, vec![0xe9]);
    assert!(found.0.contains("headers.outer"), "{}", found.0);
    // In a table inside an array, behind scalar headers.
    let mut inner = FieldTable::default();
    inner.insert(stand_in(b"\xfe"), AMQPValue::Boolean(true));
    let mut headers = FieldTable::default();
    headers.insert("a".into(), AMQPValue::LongString("x".into()));
    headers.insert(
        "list".into(),
        AMQPValue::FieldArray(vec![AMQPValue::LongInt(1), AMQPValue::FieldTable(inner)].into()),
    );
    let found = first_not_utf8([("type", Some("ok"))], Some(&headers)).unwrap();
    assert_eq!(found.1, vec![0xfe]);
    assert!(found.0.contains("headers.list"), "{}", found.0);
    assert_eq!(first_not_utf8([("type", Some("\u{fffd}"))], None), None);
    assert_eq!(describe_not_utf8(&[0xff, 0xfe]), "fffe");
}

#[test]
fn the_bytes_of_unparsed_properties_move_to_the_agents_header() {
    let raw = AMQPValue::ByteArray(vec![0x20, 0x00, 1, 2, 3].into());
    let mut headers = FieldTable::default();
    headers.insert(lapin::UNPARSED_PROPERTIES_HEADER.into(), raw.clone());
    let props = BasicProperties::default().with_headers(headers);
    let (copy, moved) = sanitized(&props);
    let h = copy.headers().as_ref().unwrap().inner();
    assert_eq!(h.get(crate::contract::RAW_PROPERTIES_HEADER), Some(&raw));
    assert!(!h.contains_key(lapin::UNPARSED_PROPERTIES_HEADER));
    assert_eq!(moved, ["unparsed properties"]);
    assert!(header_frame_len(&copy) < 100);
}
