use std::path::Path;

use lapin::types::{AMQPValue, ByteArray, FieldArray, FieldTable, LongString};

use super::*;
use crate::config::Config;

fn config() -> Config {
    let text = r#"
        [amqp]
        url = "amqp://guest:guest@127.0.0.1:5672/%2f"
        [fpm]
        address = "127.0.0.1:9000"
        script_filename = "/srv/app/public/index.php"
        signing_secrets = ["0123456789abcdef"]
        [subjects.event]
        queue = "messages.event"
    "#;
    Config::from_toml(text, Path::new("t.toml"), |_| None).unwrap()
}

fn envelope<'a>(headers: Option<&'a FieldTable>) -> Envelope<'a> {
    Envelope {
        subject: "event",
        message_id: "m-1".into(),
        message_id_generated: false,
        attempt: 2,
        redelivered: true,
        routing_key: "rk",
        exchange: "ex",
        content_type: None,
        kind: Some("user.created"),
        correlation_id: None,
        timestamp: Some(1_700_000_000),
        headers,
    }
}

/// The signature timestamp the tests pass in.
const NOW: u64 = 1_800_000_000;

/// What PHP feeds into the signature check: the params as received, and the body.
fn signed_as_sent<'a>(
    params: &'a [(&'static str, Cow<'a, str>)],
    body: &'a [u8],
) -> crate::signature::Signed<'a> {
    let param = |name| get(params, name).unwrap_or_else(|| panic!("{name} sent"));
    crate::signature::Signed {
        subject: param("HTTP_X_AGENT_SUBJECT"),
        message_id: param("HTTP_X_AGENT_MESSAGE_ID"),
        attempt: param("HTTP_X_AGENT_ATTEMPT").parse().unwrap(),
        routing_key: param("HTTP_X_AGENT_ROUTING_KEY"),
        exchange: param("HTTP_X_AGENT_EXCHANGE"),
        content_type: param("HTTP_X_AGENT_CONTENT_TYPE"),
        headers_json: param("HTTP_X_AGENT_HEADERS"),
        body,
    }
}

/// The v2 signature of `params` verifies for `signed` (v1 not accepted).
fn verifies(
    params: &[(&'static str, Cow<'_, str>)],
    signed: &crate::signature::Signed<'_>,
) -> bool {
    let sig = get(params, "HTTP_X_AGENT_SIGNATURE").expect("signed");
    let secrets = ["0123456789abcdef".to_owned()];
    crate::signature::verify(sig, &secrets, NOW, 0, signed, false)
}

fn get<'a>(params: &'a [(&'static str, Cow<'a, str>)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_ref())
}

#[test]
fn builds_the_documented_params() {
    let template = RequestTemplate::new(&config(), "event");
    let env = envelope(None);
    let params = template.params(&env, b"{}", (None, None), NOW).unwrap();
    assert_eq!(get(&params, "REQUEST_METHOD"), Some("POST"));
    assert_eq!(
        get(&params, "SCRIPT_FILENAME"),
        Some("/srv/app/public/index.php")
    );
    assert_eq!(get(&params, "DOCUMENT_ROOT"), Some("/srv/app/public"));
    assert_eq!(get(&params, "SCRIPT_NAME"), Some("/index.php"));
    assert_eq!(get(&params, "REQUEST_URI"), Some("/_agent/messages/event"));
    assert_eq!(
        get(&params, "CONTENT_TYPE"),
        Some("application/octet-stream")
    );
    assert_eq!(get(&params, "CONTENT_LENGTH"), Some("2"));
    assert_eq!(get(&params, "HTTP_X_AGENT_ATTEMPT"), Some("2"));
    assert_eq!(get(&params, "HTTP_X_AGENT_REDELIVERED"), Some("1"));
    assert_eq!(get(&params, "HTTP_X_AGENT_TYPE"), Some("user.created"));
    assert_eq!(get(&params, "HTTP_X_AGENT_TIMESTAMP"), Some("1700000000"));
    assert_eq!(get(&params, "HTTP_X_AGENT_CORRELATION_ID"), None);
    assert_eq!(get(&params, "HTTP_X_AGENT_HEADERS"), Some("{}"));
    assert_eq!(get(&params, "HTTP_X_AGENT_CONTENT_TYPE"), Some(""));
    assert_eq!(get(&params, "HTTP_X_AGENT_ROUTING_KEY"), Some("rk"));
    assert_eq!(get(&params, "HTTP_X_AGENT_EXCHANGE"), Some("ex"));
    let sig = get(&params, "HTTP_X_AGENT_SIGNATURE").unwrap();
    assert!(sig.starts_with(&format!("t={NOW},v2=")), "{sig}");
    assert!(
        !sig.contains("v1="),
        "no v1 without fpm.signature_v1: {sig}"
    );
    assert!(verifies(&params, &signed_as_sent(&params, b"{}")));
}

#[test]
fn header_names_never_become_params_and_values_are_clean() {
    let mut h = FieldTable::default();
    h.insert(
        "PHP_VALUE".into(),
        AMQPValue::LongString("memory_limit=1M".into()),
    );
    h.insert(
        "SCRIPT_FILENAME".into(),
        AMQPValue::LongString("/etc/passwd".into()),
    );
    h.insert(
        "evil".into(),
        AMQPValue::LongString("a\r\nStatus: 200\0".into()),
    );
    let template = RequestTemplate::new(&config(), "event");
    let mut env = envelope(Some(&h));
    env.message_id = "id\r\nX: y".into();
    let params = template.params(&env, b"", (None, None), NOW).unwrap();
    assert_eq!(
        params
            .iter()
            .filter(|(n, _)| *n == "SCRIPT_FILENAME")
            .count(),
        1
    );
    assert!(params.iter().all(|(n, _)| !n.starts_with("PHP_")));
    assert!(params.iter().all(|(_, v)| !v.contains(['\r', '\n', '\0'])));
    assert_eq!(get(&params, "HTTP_X_AGENT_MESSAGE_ID"), Some("id  X: y"));
    let json: serde_json::Value =
        serde_json::from_str(get(&params, "HTTP_X_AGENT_HEADERS").unwrap()).unwrap();
    assert_eq!(json["PHP_VALUE"], "memory_limit=1M");
    assert_eq!(json["evil"], "a\r\nStatus: 200\0");
}

#[test]
fn headers_nest_and_bytes_are_base64() {
    let mut inner = FieldTable::default();
    inner.insert("n".into(), AMQPValue::LongLongInt(-5));
    let mut h = FieldTable::default();
    h.insert("table".into(), AMQPValue::FieldTable(inner));
    h.insert(
        "list".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::Boolean(true),
            AMQPValue::Void,
        ])),
    );
    h.insert(
        "bytes".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![0xff, 0x00])),
    );
    h.insert(
        "latin1".into(),
        AMQPValue::LongString(LongString::from(vec![0xe9])),
    );
    h.insert("ts".into(), AMQPValue::Timestamp(42));
    let json: serde_json::Value =
        serde_json::from_str(&headers_json(Some(&h), 8, 1 << 16).unwrap()).unwrap();
    assert_eq!(json["table"]["n"], -5);
    assert_eq!(json["list"], serde_json::json!([true, null]));
    assert_eq!(json["bytes"], "/wA=");
    assert_eq!(json["latin1"], "6Q==");
    assert_eq!(json["ts"], 42);
}

#[test]
fn limits_reject_deep_or_large_headers_and_large_bodies() {
    let mut table = FieldTable::default();
    for _ in 0..40 {
        let mut outer = FieldTable::default();
        outer.insert("t".into(), AMQPValue::FieldTable(table));
        table = outer;
    }
    assert!(matches!(
        headers_json(Some(&table), 16, 1 << 20),
        Err(ContractError::Headers(_))
    ));
    let mut wide = FieldTable::default();
    for i in 0..5000 {
        wide.insert(
            format!("h{i}").into(),
            AMQPValue::LongString("v".repeat(20).into()),
        );
    }
    assert!(matches!(
        headers_json(Some(&wide), 16, 65536),
        Err(ContractError::Headers(_))
    ));
    let template = RequestTemplate::new(&config(), "event");
    let env = envelope(None);
    let big = vec![0u8; 8 * 1024 * 1024 + 1];
    let err = template.params(&env, &big, (None, None), NOW).unwrap_err();
    assert_eq!(err.reason(), "body_too_large");
}

#[test]
fn attempt_header_parsing() {
    let mut h = FieldTable::default();
    assert_eq!(attempt_from_headers(None), Ok(1));
    h.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(3));
    assert_eq!(attempt_from_headers(Some(&h)), Ok(3));
    h.insert(ATTEMPT_HEADER.into(), AMQPValue::LongString("4".into()));
    assert_eq!(attempt_from_headers(Some(&h)), Ok(4));
    h.insert(ATTEMPT_HEADER.into(), AMQPValue::LongString("soon".into()));
    assert!(attempt_from_headers(Some(&h)).is_err());
    h.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(0));
    assert!(attempt_from_headers(Some(&h)).is_err());
}

#[test]
fn form_content_types_never_reach_content_type() {
    for form in [
        "multipart/form-data",
        "multipart/form-data; boundary=----x",
        "Multipart/Form-Data;boundary=x",
        " application/x-www-form-urlencoded ",
        "APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8",
        "application/x-www-form-urlencoded,text/plain",
        "multipart/ form-data",
        "multipart/form-data\t;",
        "",
        "  ",
    ] {
        assert_eq!(
            cgi_content_type(form),
            "application/octet-stream",
            "{form:?}"
        );
    }
    for kept in [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "multipart/mixed; boundary=x",
        "application/x-www-form-urlencoded-not",
        "application/octet-stream",
    ] {
        assert_eq!(cgi_content_type(kept), kept);
    }
}

#[test]
fn the_original_content_type_is_sent_and_signed() {
    let template = RequestTemplate::new(&config(), "event");
    let mut env = envelope(None);
    env.content_type = Some("multipart/form-data; boundary=abc");
    let body = b"--abc\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--abc--\r\n";
    let params = template.params(&env, body, (None, None), NOW).unwrap();
    assert_eq!(
        get(&params, "CONTENT_TYPE"),
        Some("application/octet-stream")
    );
    assert_eq!(
        get(&params, "HTTP_X_AGENT_CONTENT_TYPE"),
        Some("multipart/form-data; boundary=abc")
    );
    env.content_type = Some("application/json");
    let params = template.params(&env, body, (None, None), NOW).unwrap();
    assert_eq!(get(&params, "CONTENT_TYPE"), Some("application/json"));
    assert_eq!(
        get(&params, "HTTP_X_AGENT_CONTENT_TYPE"),
        Some("application/json")
    );
    // The signature covers the original type.
    let signed = signed_as_sent(&params, body);
    assert!(verifies(&params, &signed));
    let other = crate::signature::Signed {
        content_type: "multipart/form-data; boundary=abc",
        ..signed
    };
    assert!(!verifies(&params, &other));
}

#[test]
fn signed_values_are_the_cleaned_values_sent() {
    let template = RequestTemplate::new(&config(), "event");
    let mut env = envelope(None);
    env.message_id = "id\r\nX".into();
    env.routing_key = "a\nb";
    env.content_type = Some("text/plain\r\n");
    let params = template.params(&env, b"x", (None, None), NOW).unwrap();
    let signed = signed_as_sent(&params, b"x");
    assert_eq!(signed.message_id, "id  X");
    assert_eq!(signed.routing_key, "a b");
    assert_eq!(signed.content_type, "text/plain  ");
    assert!(verifies(&params, &signed));
    // Not the raw values.
    let raw = crate::signature::Signed {
        message_id: "id\r\nX",
        ..signed
    };
    assert!(!verifies(&params, &raw));
}

/// A headers table on the wire: `{"deep": <levels nested arrays>, "ok": "yes"}`, built without
/// recursion, as a hostile publisher would send it.
fn deep_headers_on_the_wire(levels: usize) -> Vec<u8> {
    let mut content = vec![4];
    content.extend_from_slice(b"deep");
    for level in 1..=levels {
        content.push(b'A');
        content.extend_from_slice(&u32::try_from((levels - level) * 5).unwrap().to_be_bytes());
    }
    content.extend_from_slice(&[2, b'o', b'k', b'S', 0, 0, 0, 3, b'y', b'e', b's']);
    let mut table = u32::try_from(content.len()).unwrap().to_be_bytes().to_vec();
    table.extend_from_slice(&content);
    table
}

fn names(headers: &FieldTable) -> Vec<&str> {
    headers.inner().keys().map(|k| k.as_str()).collect()
}

fn parse_headers(bytes: &[u8]) -> FieldTable {
    lapin::types::parsing::parse_field_table(bytes).unwrap().1
}

#[test]
fn headers_cut_by_the_parser_are_always_too_deep() {
    // 10,000 levels: the parser keeps PARSER_MAX_DEPTH of them and a marker; the deepest
    // max_header_depth the config accepts still refuses the result.
    let headers = parse_headers(&deep_headers_on_the_wire(10_000));
    let err = headers_json(Some(&headers), PARSER_MAX_DEPTH - 1, 1 << 20).unwrap_err();
    assert_eq!(err.reason(), "headers_unencodable");
    assert!(err.to_string().contains("max_header_depth"), "{err}");
    // Just under the cap the same shape is encodable: the refusal above is the cut.
    let whole = parse_headers(&deep_headers_on_the_wire(PARSER_MAX_DEPTH - 2));
    assert!(headers_json(Some(&whole), PARSER_MAX_DEPTH - 1, 1 << 20).is_ok());
}

#[test]
fn too_deep_headers_are_removed_from_a_copy_and_named() {
    let mut headers = parse_headers(&deep_headers_on_the_wire(2_000));
    headers.insert(
        "nested".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![])),
    );
    assert_eq!(remove_too_deep(&mut headers, 16), ["deep"]);
    assert_eq!(names(&headers), ["nested", "ok"]);
    assert!(headers_json(Some(&headers), 16, 1 << 20).is_ok());
    assert!(remove_too_deep(&mut headers, 16).is_empty());
    // A value exactly at the limit stays: `deep` holds 15 arrays, the deepest at depth 16.
    let mut at_limit = parse_headers(&deep_headers_on_the_wire(15));
    assert!(remove_too_deep(&mut at_limit, 16).is_empty());
    assert!(headers_json(Some(&at_limit), 16, 1 << 20).is_ok());
    let mut over = parse_headers(&deep_headers_on_the_wire(16));
    assert_eq!(remove_too_deep(&mut over, 16), ["deep"]);
}

#[test]
fn a_copy_sheds_its_largest_headers_to_fit_a_frame() {
    let mut headers = FieldTable::default();
    for (name, len) in [
        ("small", 10),
        ("big", 5000),
        ("medium", 2000),
        ("bigger", 8000),
    ] {
        headers.insert(name.into(), AMQPValue::LongString("x".repeat(len).into()));
    }
    // Entry: key length byte + key + type + 4-byte length + value; table: 4-byte length.
    let size = |h: &FieldTable| {
        4 + h
            .inner()
            .iter()
            .map(|(k, v)| match v {
                AMQPValue::LongString(s) => 1 + k.as_str().len() + 5 + s.len(),
                _ => unreachable!(),
            })
            .sum::<usize>()
    };
    let all = size(&headers);
    assert!(shrink_to_fit(&mut headers, all).is_empty());
    assert_eq!(shrink_to_fit(&mut headers, all - 1), ["bigger"]);
    assert_eq!(shrink_to_fit(&mut headers, 2000), ["big", "medium"]);
    assert_eq!(names(&headers), ["small"]);
    assert!(size(&headers) <= 2000);
}

#[test]
fn quorum_delivery_count_reaches_php_only_when_the_broker_sets_it() {
    let template = RequestTemplate::new(&config(), "event");
    let none = envelope(None);
    let params = template.params(&none, b"{}", (None, None), NOW).unwrap();
    assert_eq!(get(&params, "HTTP_X_AGENT_DELIVERY_COUNT"), None);
    let mut headers = FieldTable::default();
    headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
    let counted = envelope(Some(&headers));
    let params = template.params(&counted, b"{}", (None, None), NOW).unwrap();
    assert_eq!(get(&params, "HTTP_X_AGENT_DELIVERY_COUNT"), Some("3"));
}

/// A double header must reach PHP with its exact value: the JSON holds the shortest text that
/// reads back to the same bits with a correctly rounding parser (PHP's `json_decode`, Rust's
/// `str::parse`), subnormals included. (The fuzz target `headers` once failed its own float
/// check here: it parsed with serde_json's default parser, which is off on subnormals.)
#[test]
fn doubles_are_written_so_that_they_read_back_exactly() {
    for bits in [
        0x0001_36b5_3d66_b8dc_u64, // 1.68786176167026e-309: read back wrong by serde_json
        0x0000_0000_0000_0001,     // the smallest subnormal
        0x000f_ffff_ffff_ffff,     // the largest subnormal
        0x3fb9_9999_9999_999a,     // 0.1
        0x7fef_ffff_ffff_ffff,     // f64::MAX
        0x8000_0000_0000_0000,     // -0.0
    ] {
        let x = f64::from_bits(bits);
        let mut headers = FieldTable::default();
        headers.insert("x".into(), AMQPValue::Double(x));
        let json = headers_json(Some(&headers), 4, 1024).unwrap();
        let text = json
            .strip_prefix("{\"x\":")
            .and_then(|rest| rest.strip_suffix('}'))
            .unwrap_or_else(|| panic!("unexpected JSON {json}"));
        let back: f64 = text.parse().unwrap();
        assert_eq!(back.to_bits(), bits, "{x:e} written as {text}");
    }
}

/// PHP's own reading of `CONTENT_TYPE` (`sapi_read_post_data` in main/SAPI.c): lowercased and
/// cut at the first `;`, `,` or space, then looked up among the form types. Each row is the
/// type PHP sees; every row that PHP reads as a form must reach it as opaque.
#[test]
fn the_media_type_is_read_as_php_reads_it() {
    for (content_type, php_sees) in [
        ("multipart/form-data x; boundary=XyZ", "multipart/form-data"),
        (
            "application/x-www-form-urlencoded x",
            "application/x-www-form-urlencoded",
        ),
        (
            "Application/X-WWW-Form-URLEncoded junk",
            "application/x-www-form-urlencoded",
        ),
        ("multipart/form-data,x", "multipart/form-data"),
        ("multipart/form-data;x", "multipart/form-data"),
        ("multipart/form-data", "multipart/form-data"),
        (" multipart/form-data", ""),
        ("multipart/ form-data", "multipart/"),
        ("multipart/form-data\tx", "multipart/form-data\tx"),
        ("application/json x", "application/json"),
        ("text/plain", "text/plain"),
    ] {
        assert_eq!(
            php_media_type(content_type).to_ascii_lowercase(),
            php_sees,
            "{content_type:?}"
        );
        let form = matches!(
            php_sees,
            "multipart/form-data" | "application/x-www-form-urlencoded"
        );
        if form {
            assert_eq!(
                cgi_content_type(content_type),
                "application/octet-stream",
                "{content_type:?}"
            );
        }
    }
    // Tab, CR and the like are not where PHP cuts, but whatever ends the type there counts too.
    assert_eq!(
        cgi_content_type("multipart/form-data\tx"),
        "application/octet-stream"
    );
    assert_eq!(cgi_content_type("application/json x"), "application/json x");
}

#[test]
fn a_message_whose_properties_could_not_be_parsed_is_refused_with_their_size() {
    let template = RequestTemplate::new(&config(), "event");
    let mut headers = FieldTable::default();
    headers.insert(
        lapin::UNPARSED_PROPERTIES_HEADER.into(),
        AMQPValue::ByteArray(ByteArray::from(vec![0x20, 0, 0, 0, 0, 4])),
    );
    let env = envelope(Some(&headers));
    let err = template.params(&env, b"{}", (None, None), NOW).unwrap_err();
    assert_eq!(err, ContractError::Unparsed { bytes: 6 });
    assert_eq!(err.reason(), "malformed_properties");
    assert!(err.to_string().contains(RAW_PROPERTIES_HEADER), "{err}");
    // The same name with another type is an ordinary header.
    let mut other = FieldTable::default();
    other.insert(
        lapin::UNPARSED_PROPERTIES_HEADER.into(),
        AMQPValue::LongString(LongString::from(&b"x"[..])),
    );
    let env = envelope(Some(&other));
    assert!(template.params(&env, b"{}", (None, None), NOW).is_ok());
}

/// The encoder `headers_json` replaced (a `serde_json::Value` tree, kept here as the reference):
/// the direct one must write the same text for every table.
fn reference_json(table: &FieldTable) -> String {
    use base64::Engine as _;
    use serde_json::{Map, Value};
    fn value(v: &AMQPValue) -> Value {
        let b64 =
            |bytes: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
        match v {
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
                Value::Array(items.as_slice().iter().map(value).collect())
            }
            AMQPValue::Timestamp(t) => Value::from(*t),
            AMQPValue::FieldTable(t) => table_value(t),
            AMQPValue::ByteArray(bytes) => b64(bytes.as_slice()),
            AMQPValue::Void => Value::Null,
        }
    }
    fn table_value(t: &FieldTable) -> Value {
        let mut map = Map::new();
        for (k, v) in t {
            map.insert(k.as_str().to_owned(), value(v));
        }
        Value::Object(map)
    }
    serde_json::to_string(&table_value(table)).unwrap()
}

/// Every kind of AMQP value, and odd keys and numbers, from a seeded generator (xorshift).
fn generated_table(seed: &mut u64, depth: usize) -> FieldTable {
    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }
    let keys = [
        "a",
        "B",
        "type",
        "x-death",
        "é",
        "\"quoted\"",
        "back\\slash",
        "tab\t",
        "nul\0",
        "💡",
        "",
        "z",
        "10",
        "9",
    ];
    let mut table = FieldTable::default();
    for _ in 0..(next(seed) % 8) {
        let key = keys[(next(seed) % keys.len() as u64) as usize];
        let n = next(seed);
        let value = match n % 19 {
            0 => AMQPValue::Boolean(n & 1 == 0),
            1 => AMQPValue::ShortShortInt(n as i8),
            2 => AMQPValue::ShortShortUInt(n as u8),
            3 => AMQPValue::ShortInt(n as i16),
            4 => AMQPValue::ShortUInt(n as u16),
            5 => AMQPValue::LongInt(n as i32),
            6 => AMQPValue::LongUInt(n as u32),
            7 => AMQPValue::LongLongInt(n as i64),
            8 => AMQPValue::Float(
                [
                    f32::NAN,
                    f32::INFINITY,
                    -0.0,
                    1.5e-7,
                    f32::MAX,
                    (n as f32) / 3.0,
                ][(n % 6) as usize],
            ),
            9 => AMQPValue::Double(
                [
                    f64::NAN,
                    f64::NEG_INFINITY,
                    0.1,
                    1e300,
                    f64::MIN_POSITIVE,
                    (n as f64) / 7.0,
                ][(n % 6) as usize],
            ),
            10 => AMQPValue::DecimalValue(lapin::types::DecimalValue {
                scale: (n % 12) as u8,
                value: (n >> 8) as u32,
            }),
            11 => AMQPValue::ShortString(format!("s{n}\u{7f}\u{2028}").into()),
            12 => AMQPValue::LongString(LongString::from(format!("<\"{n}\"\n>").into_bytes())),
            13 => AMQPValue::LongString(LongString::from(vec![0xff, (n >> 8) as u8, 0xc3])),
            14 => AMQPValue::Timestamp(n),
            15 => AMQPValue::ByteArray(ByteArray::from(n.to_le_bytes().to_vec())),
            16 => AMQPValue::Void,
            17 if depth < 4 => AMQPValue::FieldTable(generated_table(seed, depth + 1)),
            _ if depth < 4 => {
                let inner = generated_table(seed, depth + 1);
                AMQPValue::FieldArray(FieldArray::from(
                    inner.inner().values().cloned().collect::<Vec<_>>(),
                ))
            }
            _ => AMQPValue::Void,
        };
        table.insert(key.into(), value);
    }
    table
}

#[test]
fn headers_json_writes_what_a_json_value_tree_wrote() {
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    let mut kinds = std::collections::HashSet::new();
    for _ in 0..2_000 {
        let table = generated_table(&mut seed, 1);
        for value in table.inner().values() {
            kinds.insert(std::mem::discriminant(value));
        }
        assert_eq!(
            headers_json(Some(&table), 8, 1 << 20).unwrap(),
            reference_json(&table),
            "{table:?}"
        );
    }
    // Every variant of AMQPValue came up at the top level at least once.
    assert_eq!(kinds.len(), 18, "value kinds generated");
    assert_eq!(headers_json(None, 8, 1 << 20).unwrap(), "{}");
    assert_eq!(
        headers_json(Some(&FieldTable::default()), 8, 1 << 20).unwrap(),
        "{}"
    );
}
