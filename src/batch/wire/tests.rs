use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::config::Config;
use crate::contract::{Envelope, RequestTemplate};

const SECRET: &str = "0123456789abcdef";
const NOW: u64 = 1_800_000_000;
/// The nonce of every test batch (and of the known-answer vector).
const NONCE: &str = "0123456789abcdef0123456789abcdef";

fn config() -> Config {
    let text = format!(
        r#"
        [amqp]
        url = "amqp://guest:guest@127.0.0.1:5672/%2f"
        [fpm]
        address = "127.0.0.1:9000"
        script_filename = "/srv/app/public/index.php"
        signing_secrets = ["{SECRET}"]
        [subjects.event]
        queue = "messages.event"
        batch_max = 10
    "#
    );
    Config::from_toml(&text, Path::new("t.toml"), |_| None).unwrap()
}

fn envelope(id: &str, attempt: u32) -> Envelope<'_> {
    Envelope {
        subject: "event",
        message_id: id.into(),
        message_id_generated: false,
        attempt,
        redelivered: false,
        routing_key: "user.created",
        exchange: "events",
        content_type: Some("application/json"),
        kind: Some("user.created"),
        correlation_id: None,
        timestamp: Some(1_700_000_000),
        headers: None,
    }
}

/// One decoded entry: its index, fields and body.
#[derive(Debug)]
struct Entry {
    index: usize,
    fields: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// The decoder the PHP receiver follows (docs/batches.md), strict: any deviation is an error.
fn decode(mut data: &[u8], count: usize) -> Result<Vec<Entry>, String> {
    fn line<'a>(data: &mut &'a [u8]) -> Result<&'a str, String> {
        let end = data.iter().position(|b| *b == b'\n').ok_or("no line end")?;
        let text = std::str::from_utf8(&data[..end]).map_err(|e| e.to_string())?;
        *data = &data[end + 1..];
        Ok(text)
    }
    fn take<'a>(data: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if data.len() < n {
            return Err(format!("{n} bytes announced, {} left", data.len()));
        }
        let (head, rest) = data.split_at(n);
        *data = rest;
        Ok(head)
    }
    if line(&mut data)? != format!("{MAGIC} {VERSION} {NONCE}") {
        return Err("bad magic or version".into());
    }
    let mut entries = Vec::new();
    while !data.is_empty() {
        let head = line(&mut data)?;
        let numbers: Vec<usize> = head
            .split(' ')
            .map(|n| n.parse().map_err(|_| format!("bad entry head `{head}`")))
            .collect::<Result<_, _>>()?;
        let [index, fields_len, body_len] = numbers[..] else {
            return Err(format!("bad entry head `{head}`"));
        };
        let mut fields_block = take(&mut data, fields_len)?;
        let mut fields = BTreeMap::new();
        while !fields_block.is_empty() {
            let field = line(&mut fields_block)?;
            let (name, value) = field.split_once('=').ok_or("field without =")?;
            if !is_entry_field(name) {
                return Err(format!("`{name}` is not an entry field"));
            }
            fields.insert(name.to_owned(), value.to_owned());
        }
        let body = take(&mut data, body_len)?.to_vec();
        if take(&mut data, 1)? != b"\n" {
            return Err("entry not followed by LF".into());
        }
        entries.push(Entry {
            index,
            fields,
            body,
        });
    }
    if entries.len() != count {
        return Err(format!("{} entries, {count} announced", entries.len()));
    }
    Ok(entries)
}

fn verifies(subject: &str, entry: &Entry, body: &[u8]) -> bool {
    let f = |name: &str| entry.fields.get(name).map_or("", String::as_str);
    let signed = crate::signature::Signed {
        subject,
        message_id: f("HTTP_X_AGENT_MESSAGE_ID"),
        attempt: f("HTTP_X_AGENT_ATTEMPT").parse().unwrap(),
        routing_key: f("HTTP_X_AGENT_ROUTING_KEY"),
        exchange: f("HTTP_X_AGENT_EXCHANGE"),
        content_type: f("HTTP_X_AGENT_CONTENT_TYPE"),
        headers_json: f("HTTP_X_AGENT_HEADERS"),
        body,
    };
    let secrets = [SECRET.to_owned()];
    crate::signature::verify(
        f("HTTP_X_AGENT_SIGNATURE"),
        &secrets,
        NOW,
        0,
        &signed,
        false,
    )
}

fn param<'a>(params: &'a [(&'static str, Cow<'_, str>)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_ref())
}

#[test]
fn entries_round_trip_each_with_its_own_signature() {
    let template = RequestTemplate::new(&config(), "event");
    let ids = ["m-0", "m-1", "m-2"];
    let bodies: [&[u8]; 3] = [b"{\"a\":1}", b"", b"line\nwith\r\nbreaks and \0 NUL"];
    let envelopes: Vec<_> = ids.iter().map(|id| envelope(id, 2)).collect();
    let mut encoder = Encoder::new(64, NONCE);
    let mut first = None;
    for (i, (env, body)) in envelopes.iter().zip(bodies).enumerate() {
        let params = template.params(env, body, (None, None), NOW).unwrap();
        // Index 1 is skipped (settled before the request, e.g. over the limits).
        if i != 1 {
            encoder.push(i, &params, body);
        }
        first.get_or_insert(params);
    }
    assert_eq!(encoder.count(), 2);
    let (params, body) = encoder.finish(&first.unwrap());
    assert_eq!(param(&params, "CONTENT_TYPE"), Some(CONTENT_TYPE));
    assert_eq!(
        param(&params, "CONTENT_LENGTH"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(param(&params, BATCH_PARAM), Some("2"));
    assert_eq!(param(&params, BATCH_SIZE_PARAM), Some("2"));
    assert_eq!(param(&params, "HTTP_X_AGENT_SUBJECT"), Some("event"));
    assert_eq!(
        param(&params, "REQUEST_URI"),
        Some("/_agent/messages/event")
    );
    for name in ENTRY_FIELDS {
        assert_eq!(param(&params, name), None, "{name} is per entry");
    }
    let entries = decode(&body, 2).unwrap();
    assert_eq!(entries.len(), 2);
    for (entry, want) in entries.iter().zip([0usize, 2]) {
        assert_eq!(entry.index, want);
        assert_eq!(entry.body, bodies[want]);
        assert_eq!(entry.fields["HTTP_X_AGENT_MESSAGE_ID"], ids[want]);
        assert_eq!(entry.fields["HTTP_X_AGENT_ATTEMPT"], "2");
        assert_eq!(entry.fields["HTTP_X_AGENT_TYPE"], "user.created");
        assert_eq!(entry.fields["HTTP_X_AGENT_HEADERS"], "{}");
        assert!(verifies("event", entry, &entry.body), "entry {want}");
    }
}

#[test]
fn an_entry_signature_covers_only_its_own_entry() {
    let template = RequestTemplate::new(&config(), "event");
    let (a, b) = (envelope("m-a", 1), envelope("m-b", 1));
    let mut encoder = Encoder::new(0, NONCE);
    let pa = template.params(&a, b"pay 10", (None, None), NOW).unwrap();
    let pb = template.params(&b, b"pay 99", (None, None), NOW).unwrap();
    encoder.push(0, &pa, b"pay 10");
    encoder.push(1, &pb, b"pay 99");
    let (_, body) = encoder.finish(&pa);
    let entries = decode(&body, 2).unwrap();
    assert!(verifies("event", &entries[0], b"pay 10"));
    // Entry 0's fields with entry 1's body, or another subject: refused.
    assert!(!verifies("event", &entries[0], b"pay 99"));
    assert!(!verifies("command", &entries[0], b"pay 10"));
    // Entry 1's signature moved onto entry 0's fields: refused.
    let mut moved = Entry {
        index: 0,
        fields: entries[0].fields.clone(),
        body: entries[0].body.clone(),
    };
    moved.fields.insert(
        "HTTP_X_AGENT_SIGNATURE".into(),
        entries[1].fields["HTTP_X_AGENT_SIGNATURE"].clone(),
    );
    assert!(!verifies("event", &moved, b"pay 10"));
}

#[test]
fn entry_len_is_what_push_adds() {
    let template = RequestTemplate::new(&config(), "event");
    let mut encoder = Encoder::new(0, NONCE);
    for (i, body) in [&b"{}"[..], &[7u8; 3000][..], b""].into_iter().enumerate() {
        let env = envelope("m-len", 3);
        let params = template.params(&env, body, (None, None), NOW).unwrap();
        let before = encoder.len();
        encoder.push(i * 100, &params, body);
        assert_eq!(
            encoder.len() - before,
            Encoder::entry_len(i * 100, &params, body.len())
        );
    }
}

#[test]
fn binary_bodies_travel_raw() {
    let template = RequestTemplate::new(&config(), "event");
    let mib: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let env = envelope("m-big", 1);
    let params = template.params(&env, &mib, (None, None), NOW).unwrap();
    let mut encoder = Encoder::new(2 * mib.len(), NONCE);
    encoder.push(0, &params, &mib);
    encoder.push(1, &params, &mib);
    let (_, body) = encoder.finish(&params);
    // Two 1 MiB bodies: 2 MiB and a few hundred bytes of fields, no base64.
    assert!(body.len() < 2 * mib.len() + 2048, "{}", body.len());
    let entries = decode(&body, 2).unwrap();
    assert_eq!(entries[0].body, mib);
    assert_eq!(entries[1].body, mib);
    assert!(verifies("event", &entries[1], &mib));
}

#[test]
fn the_decoder_refuses_what_the_format_does_not_allow() {
    let template = RequestTemplate::new(&config(), "event");
    let env = envelope("m-0", 1);
    let params = template.params(&env, b"x", (None, None), NOW).unwrap();
    let mut encoder = Encoder::new(0, NONCE);
    encoder.push(0, &params, b"x");
    let (_, body) = encoder.finish(&params);
    assert!(decode(&body, 1).is_ok());
    // Cut anywhere: an error, never a shorter batch that parses.
    for cut in 1..body.len() {
        assert!(decode(&body[..cut], 1).is_err(), "cut at {cut}");
    }
    let other_version = String::from_utf8_lossy(&body).replacen(" 2 ", " 1 ", 1);
    assert!(decode(other_version.as_bytes(), 1).is_err());
    let other_nonce = String::from_utf8_lossy(&body).replacen(NONCE, &"f".repeat(32), 1);
    assert!(decode(other_nonce.as_bytes(), 1).is_err());
}

/// The known-answer batch the PHP receiver's tests parse and verify (`tests/vectors/batch-v2.bin`,
/// secret `0123456789abcdef`, t = 1800000000, nonce [`NONCE`]): entries 0 and 2 of the
/// round-trip test.
/// `UPDATE_VECTORS=1 cargo test --lib batch::wire` rewrites it.
#[test]
fn the_known_answer_batch_is_unchanged() {
    // Written when every request carried v1 too: kept so, the file is the same for its readers.
    let mut config = config();
    config.fpm.signature_v1 = true;
    let template = RequestTemplate::new(&config, "event");
    let a = envelope("m-0", 2);
    let c = envelope("m-2", 2);
    let bodies: [&[u8]; 2] = [b"{\"a\":1}", b"line\nwith\r\nbreaks and \0 NUL"];
    let mut encoder = Encoder::new(0, NONCE);
    let pa = template.params(&a, bodies[0], (None, None), NOW).unwrap();
    let pc = template.params(&c, bodies[1], (None, None), NOW).unwrap();
    encoder.push(0, &pa, bodies[0]);
    encoder.push(2, &pc, bodies[1]);
    let (_, body) = encoder.finish(&pa);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/batch-v2.bin");
    if std::env::var_os("UPDATE_VECTORS").is_some() {
        std::fs::write(&path, &body).unwrap();
    }
    assert_eq!(std::fs::read(&path).unwrap(), body, "{}", path.display());
}

/// `ENTRY_FIELDS` is a list kept beside `contract::RequestTemplate::params`: a per-message param
/// added there and not here would reach PHP with the first entry's value for every entry. Two
/// messages that differ in every property show which params are per message.
#[test]
fn entry_fields_are_exactly_the_params_that_differ_between_messages() {
    use lapin::types::{AMQPValue, FieldTable};
    let template = RequestTemplate::new(&config(), "event");
    let headers = |count: i64, tag: &str| {
        let mut h = FieldTable::default();
        h.insert("x-delivery-count".into(), AMQPValue::LongLongInt(count));
        h.insert("tag".into(), AMQPValue::LongString(tag.into()));
        h
    };
    let (ha, hb) = (headers(1, "a"), headers(2, "b"));
    // A struct literal on purpose: a new Envelope field does not compile here until it is
    // given two different values.
    let a = Envelope {
        subject: "event",
        message_id: "m-a".into(),
        message_id_generated: false,
        attempt: 1,
        redelivered: false,
        routing_key: "user.created",
        exchange: "events",
        content_type: Some("application/json"),
        kind: Some("user.created"),
        correlation_id: Some("c-a"),
        timestamp: Some(1_700_000_000),
        headers: Some(&ha),
    };
    let b = Envelope {
        subject: "event",
        message_id: "m-b".into(),
        message_id_generated: true,
        attempt: 2,
        redelivered: true,
        routing_key: "user.deleted",
        exchange: "other",
        content_type: Some("text/plain"),
        kind: Some("user.deleted"),
        correlation_id: Some("c-b"),
        timestamp: Some(1_700_000_001),
        headers: Some(&hb),
    };
    let tp_a = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let tp_b = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01";
    let pa = template
        .params(&a, b"body a", (Some(tp_a), Some("k=a")), NOW)
        .unwrap();
    let pb = template
        .params(&b, b"body bb", (Some(tp_b), Some("k=b")), NOW)
        .unwrap();
    let map = |p: &[(&'static str, std::borrow::Cow<'_, str>)]| -> BTreeMap<&'static str, String> {
        p.iter().map(|(k, v)| (*k, v.to_string())).collect()
    };
    let (ma, mb) = (map(&pa), map(&pb));
    // The batch request sets its own body framing: CONTENT_TYPE and CONTENT_LENGTH are the
    // request's (the message's content type travels per entry as HTTP_X_AGENT_CONTENT_TYPE).
    let request_level = ["CONTENT_TYPE", "CONTENT_LENGTH"];
    let differing: Vec<&str> = ma
        .keys()
        .chain(mb.keys())
        .copied()
        .filter(|k| ma.get(k) != mb.get(k) && !request_level.contains(k))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut listed = ENTRY_FIELDS.to_vec();
    listed.sort_unstable();
    assert_eq!(
        differing, listed,
        "ENTRY_FIELDS must name exactly the per-message params"
    );
}

#[test]
fn head_lines_are_written_and_measured_as_format_would() {
    for n in [
        0,
        1,
        9,
        10,
        11,
        99,
        100,
        1024,
        65_535,
        1_000_000,
        usize::MAX,
    ] {
        let mut out = b"x".to_vec();
        push_decimal(&mut out, n);
        assert_eq!(out, format!("x{n}").into_bytes());
        assert_eq!(decimal_len(n), n.to_string().len());
        assert_eq!(head_len(n, 7, n), format!("{n} 7 {n}\n").len());
    }
}

#[test]
fn every_entry_field_and_nothing_else_is_one() {
    for name in ENTRY_FIELDS {
        assert!(is_entry_field(name), "{name}");
        // The same name with one byte changed, at each position, is not one.
        for at in 0..name.len() {
            let mut other = name.as_bytes().to_vec();
            other[at] = b'#';
            assert!(
                !is_entry_field(std::str::from_utf8(&other).unwrap()),
                "{name} at {at}"
            );
        }
    }
    for name in [
        "SCRIPT_FILENAME",
        "CONTENT_TYPE",
        "CONTENT_LENGTH",
        "HTTP_X_AGENT_SUBJECT",
        BATCH_SIZE_PARAM,
        "HTTP_X_AGENT_MESSAGE_I",
        "HTTP_X_AGENT_MESSAGE_ID_",
        "X_AGENT_MESSAGE_ID",
        "",
    ] {
        assert!(!is_entry_field(name), "{name}");
    }
}
