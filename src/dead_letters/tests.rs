use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};

use super::*;

const NOW: u64 = 1_800_000_000;

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// A dead letter as the agent writes it.
fn agent_copy(reason: &str, status: i64, dead_at: u64) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert(contract::REASON_HEADER.into(), text(reason));
    h.insert(
        contract::STATUS_HEADER.into(),
        AMQPValue::LongLongInt(status),
    );
    h.insert(contract::ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(3));
    h.insert(
        contract::LAST_ERROR_HEADER.into(),
        text("http_status: status 503: down"),
    );
    h.insert(
        contract::DEAD_LETTERED_AT_HEADER.into(),
        AMQPValue::Timestamp(dead_at),
    );
    h.insert("tenant".into(), text("Acme Corp"));
    BasicProperties::default()
        .with_message_id("m-1".into())
        .with_headers(h)
}

fn filter(t: FilterText<'_>) -> Filter {
    Filter::parse(t).unwrap()
}

#[test]
fn filters_parse_and_name_the_field_at_fault() {
    let f = filter(FilterText {
        reason: Some(" rejected "),
        status: Some("4XX"),
        kind: Some("App\\Message\\SendEmail"),
        older_than: Some("90s"),
        grep: Some("acme corp"),
    });
    assert_eq!(f.reason.as_deref(), Some("rejected"));
    assert_eq!(f.status, Some(StatusFilter::Class(4)));
    assert_eq!(f.kind.as_deref(), Some("App\\Message\\SendEmail"));
    assert_eq!(f.older_than, Some(Duration::from_secs(90)));
    assert_eq!(f.grep.as_deref(), Some("acme corp"));
    assert!(!f.is_empty());
    assert!(filter(FilterText::default()).is_empty());
    // Empty and blank fields are absent.
    let blank = FilterText {
        reason: Some(""),
        status: Some("  "),
        grep: Some("   "),
        ..FilterText::default()
    };
    assert!(filter(blank).is_empty());
    assert_eq!(
        StatusFilter::parse("404").unwrap(),
        StatusFilter::Exact(404)
    );
    assert_eq!(StatusFilter::parse("0").unwrap(), StatusFilter::Exact(0));
    let bad = [
        (
            FilterText {
                status: Some("40"),
                ..FilterText::default()
            },
            "status",
        ),
        (
            FilterText {
                status: Some("6xx"),
                ..FilterText::default()
            },
            "status",
        ),
        (
            FilterText {
                status: Some("abc"),
                ..FilterText::default()
            },
            "status",
        ),
        (
            FilterText {
                older_than: Some("soon"),
                ..FilterText::default()
            },
            "older_than",
        ),
        (
            FilterText {
                reason: Some("a\u{1b}b"),
                ..FilterText::default()
            },
            "reason",
        ),
    ];
    for (text, field) in bad {
        assert_eq!(Filter::parse(text).unwrap_err().field, field);
    }
    let long = "x".repeat(filter::MAX_FIELD + 1);
    let e = Filter::parse(FilterText {
        grep: Some(&long),
        ..FilterText::default()
    })
    .unwrap_err();
    assert_eq!(e.field, "grep");
}

#[test]
fn every_criterion_must_hold() {
    let props = agent_copy("max_attempts", 503, NOW - 120);
    let body = br#"{"order": 42, "note": "Refund"}"#;
    let letter = Letter::new(&props, body);
    let yes = |t: FilterText<'_>| assert!(filter(t).matches(&letter, NOW), "{t:?}");
    let no = |t: FilterText<'_>| assert!(!filter(t).matches(&letter, NOW), "{t:?}");
    yes(FilterText::default());
    yes(FilterText {
        reason: Some("MAX_ATTEMPTS"),
        ..Default::default()
    });
    no(FilterText {
        reason: Some("rejected"),
        ..Default::default()
    });
    no(FilterText {
        reason: Some("max"),
        ..Default::default()
    });
    yes(FilterText {
        status: Some("503"),
        ..Default::default()
    });
    yes(FilterText {
        status: Some("5xx"),
        ..Default::default()
    });
    no(FilterText {
        status: Some("4xx"),
        ..Default::default()
    });
    no(FilterText {
        status: Some("0"),
        ..Default::default()
    });
    yes(FilterText {
        older_than: Some("2m"),
        ..Default::default()
    });
    no(FilterText {
        older_than: Some("121s"),
        ..Default::default()
    });
    // Text search: body, header values and names, properties; without ASCII case.
    yes(FilterText {
        grep: Some("refund"),
        ..Default::default()
    });
    yes(FilterText {
        grep: Some("ACME corp"),
        ..Default::default()
    });
    yes(FilterText {
        grep: Some("tenant"),
        ..Default::default()
    });
    yes(FilterText {
        grep: Some("m-1"),
        ..Default::default()
    });
    yes(FilterText {
        grep: Some("status 503"),
        ..Default::default()
    });
    no(FilterText {
        grep: Some("refunded"),
        ..Default::default()
    });
    // No type recorded: a type filter does not match.
    no(FilterText {
        kind: Some("Refund"),
        ..Default::default()
    });
    yes(FilterText {
        reason: Some("max_attempts"),
        status: Some("503"),
        older_than: Some("1m"),
        grep: Some("order"),
        ..Default::default()
    });
    no(FilterText {
        reason: Some("max_attempts"),
        status: Some("404"),
        ..Default::default()
    });
}

#[test]
fn the_type_is_the_property_or_messengers_header() {
    let by_property = BasicProperties::default().with_type("App\\Message\\SendEmail".into());
    let mut h = FieldTable::default();
    h.insert(letter::TYPE_HEADER.into(), text("App\\Message\\Refund"));
    let by_header = BasicProperties::default().with_headers(h);
    let kind = |props: &BasicProperties, wanted: &str| {
        filter(FilterText {
            kind: Some(wanted),
            ..Default::default()
        })
        .matches(&Letter::new(props, b""), NOW)
    };
    assert!(kind(&by_property, "App\\Message\\SendEmail"));
    assert!(kind(&by_property, "SendEmail"));
    assert!(!kind(&by_property, "Email"));
    assert!(!kind(&by_property, "Refund"));
    assert!(kind(&by_header, "Refund"));
    assert!(kind(&by_header, "App\\Message\\Refund"));
    assert_eq!(
        Letter::new(&by_header, b"").kind().as_deref(),
        Some("App\\Message\\Refund")
    );
}

#[test]
fn a_broker_dead_letter_has_its_reason_and_time_from_x_death() {
    let mut death = FieldTable::default();
    death.insert("reason".into(), text("delivery_limit"));
    death.insert("time".into(), AMQPValue::Timestamp(NOW - 600));
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    let mut h = FieldTable::default();
    h.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
    );
    let props = BasicProperties::default()
        .with_timestamp(NOW - 3600)
        .with_headers(h);
    let letter = Letter::new(&props, b"{}");
    assert_eq!(letter.reason().as_deref(), Some("delivery_limit"));
    assert_eq!(letter.dead_at(), Some(NOW - 600));
    assert_eq!(letter.status(), None);
    let f = filter(FilterText {
        reason: Some("delivery_limit"),
        older_than: Some("10m"),
        ..Default::default()
    });
    assert!(f.matches(&letter, NOW));
    // Without any record the AMQP timestamp is the age; without one, no age matches.
    let stamped = BasicProperties::default().with_timestamp(NOW - 3600);
    assert_eq!(Letter::new(&stamped, b"").dead_at(), Some(NOW - 3600));
    let old = filter(FilterText {
        older_than: Some("1s"),
        ..Default::default()
    });
    assert!(!old.matches(&Letter::new(&BasicProperties::default(), b""), NOW));
}

#[test]
fn the_summary_and_the_detail_show_what_was_recorded() {
    let props = agent_copy("rejected", 404, NOW - 5).with_content_type("application/json".into());
    let letter = Letter::new(&props, br#"{"a":[1,2]}"#);
    let s = letter.summary(NOW);
    assert_eq!(s.key.len(), 16);
    assert_eq!(s.key, Letter::new(&props, br#"{"a":[1,2]}"#).key());
    assert_ne!(s.key, Letter::new(&props, br#"{"a":[1,3]}"#).key());
    // A quorum queue counts each return of the message in a header: the key stays.
    let mut counted = props.headers().clone().unwrap();
    counted.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
    let returned = props.clone().with_headers(counted);
    assert_eq!(s.key, Letter::new(&returned, br#"{"a":[1,2]}"#).key());
    assert_eq!(s.reason.as_deref(), Some("rejected"));
    assert_eq!(s.status, Some(404));
    assert_eq!(s.attempts, Some(3));
    assert_eq!(s.age_seconds, Some(5));
    assert_eq!(s.message_id.as_deref(), Some("m-1"));
    let d = letter.detail(NOW);
    assert_eq!(
        d.body.json.as_deref(),
        Some("{\n  \"a\": [\n    1,\n    2\n  ]\n}")
    );
    assert!(
        d.headers
            .iter()
            .any(|(k, v)| k == "tenant" && v == "Acme Corp")
    );
    assert!(
        d.headers
            .iter()
            .any(|(k, v)| k == "x-agent-status" && v == "404")
    );
    assert!(
        d.properties
            .iter()
            .any(|(k, v)| k == "content_type" && v == "application/json")
    );
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["type"], serde_json::Value::Null);
    assert_eq!(json["reason"], "rejected");
    assert_eq!(json["body"]["utf8"], true);
}

#[test]
fn bodies_show_as_text_and_hex_whatever_they_hold() {
    let hostile = b"<script>alert(1)</script>\"><img src=x onerror=alert(2)>\xff\xfe";
    let body = Body::of(hostile);
    assert!(!body.utf8);
    assert_eq!(body.json, None);
    assert!(body.text.starts_with("<script>alert(1)</script>"));
    assert!(body.text.ends_with("\u{fffd}\u{fffd}"));
    assert!(body.hex.starts_with(
        "00000000  3c 73 63 72 69 70 74 3e  61 6c 65 72 74 28 31 29  <script>alert(1)"
    ));
    assert!(!body.hex_cut && !body.text_cut);
    // A megabyte on one line: whole as text, its hex cut.
    let line = vec![b'a'; 1024 * 1024];
    let big = Body::of(&line);
    assert_eq!(big.text.len(), 1024 * 1024);
    assert!(big.hex_cut);
    assert_eq!(big.hex.lines().count(), letter::MAX_HEX_BYTES / 16);
    let short = letter::hex_dump(b"ab\n");
    assert_eq!(
        short,
        format!("00000000  61 62 0a{}  ab.\n", " ".repeat(3 * 13 + 1))
    );
}

#[test]
fn long_values_are_cut_in_the_summary() {
    let mut h = FieldTable::default();
    h.insert(contract::LAST_ERROR_HEADER.into(), text(&"é".repeat(1000)));
    let props = BasicProperties::default().with_headers(h);
    let s = Letter::new(&props, b"").summary(NOW);
    let e = s.last_error.unwrap();
    assert!(e.ends_with("… (2000 bytes)"), "{e}");
    assert!(e.len() < letter::SUMMARY_CHARS + 20);
}

#[test]
fn a_replay_drops_the_agents_state_and_keeps_the_route_headers_apart() {
    assert!(is_agent_state("x-agent-attempt"));
    assert!(is_agent_state("x-agent-reason"));
    assert!(is_agent_state("x-death"));
    assert!(is_agent_state("x-first-death-reason"));
    assert!(!is_agent_state("x-agent-original-exchange"));
    assert!(!is_agent_state("tenant"));
    assert!(is_route("x-agent-original-routing-key"));
}

#[test]
fn case_blind_search() {
    assert!(filter::contains(b"Hello World", b"world"));
    assert!(filter::contains(b"abc", b""));
    assert!(!filter::contains(b"ab", b"abc"));
    assert!(filter::contains(b"\xff\xfeX", b"x"));
}
