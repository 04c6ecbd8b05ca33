use lapin::types::FieldArray;

use super::*;

const QUEUE: &str = "app.event";

fn secrets() -> Vec<String> {
    vec![
        "new-secret-0123456789".to_owned(),
        "old-secret-0123456789".to_owned(),
    ]
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn binding<'a>(message_id: &'a str, body: &'a [u8]) -> Binding<'a> {
    Binding {
        queue: QUEUE,
        message_id,
        body,
    }
}

/// True when `h` is refused for its seal.
fn bad_seal(h: &FieldTable, b: &Binding<'_>) -> bool {
    read(Some(h), &secrets(), b).1 == Some(Untrusted::BadSeal)
}

/// The headers of a retry copy for attempt `attempt`, sealed with `secrets`.
fn retry_copy(attempt: i64, secrets: &[String]) -> FieldTable {
    let mut h = FieldTable::default();
    h.insert("tenant".into(), text("acme"));
    h.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(attempt));
    h.insert(ORIGINAL_EXCHANGE_HEADER.into(), text("app"));
    h.insert(ORIGINAL_ROUTING_KEY_HEADER.into(), text("orders.place"));
    seal(&mut h, secrets, &binding("m-1", b"body"));
    h
}

#[test]
fn no_state_headers_is_a_trusted_first_attempt() {
    let b = binding("m-1", b"body");
    assert_eq!(read(None, &secrets(), &b), (AgentState::FIRST, None));
    let mut h = FieldTable::default();
    h.insert("tenant".into(), text("acme"));
    assert_eq!(read(Some(&h), &secrets(), &b), (AgentState::FIRST, None));
}

#[test]
fn a_sealed_copy_is_believed_with_any_configured_secret() {
    let h = retry_copy(3, &secrets());
    let expected = AgentState {
        attempt: 3,
        original_exchange: Some("app"),
        original_routing_key: Some("orders.place"),
    };
    let b = binding("m-1", b"body");
    assert_eq!(read(Some(&h), &secrets(), &b), (expected, None));
    // Rotation: the copy was sealed with the first secret, which is now the second.
    let rotated = vec!["newer-secret-0123456".to_owned(), secrets()[0].clone()];
    assert_eq!(read(Some(&h), &rotated, &b), (expected, None));
}

#[test]
fn spoofed_or_transplanted_state_is_ignored_as_a_whole() {
    let b = binding("m-1", b"body");
    // A publisher's own headers, no seal.
    let mut spoofed = FieldTable::default();
    spoofed.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(99));
    spoofed.insert(ORIGINAL_ROUTING_KEY_HEADER.into(), text("admin.only"));
    assert_eq!(
        read(Some(&spoofed), &secrets(), &b),
        (AgentState::FIRST, Some(Untrusted::BadSeal))
    );
    // A genuine seal, but one field changed.
    let genuine = retry_copy(2, &secrets());
    let mut edited = genuine.clone();
    edited.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(99));
    assert!(bad_seal(&edited, &b));
    let mut edited = genuine.clone();
    edited.insert(ORIGINAL_ROUTING_KEY_HEADER.into(), text("admin.only"));
    assert!(bad_seal(&edited, &b));
    // The same headers on another message, body or queue.
    for other in [
        binding("m-2", b"body"),
        binding("m-1", b"other body"),
        Binding {
            queue: "app.command",
            ..b
        },
    ] {
        assert!(bad_seal(&genuine, &other));
    }
    // Sealed with a secret the agent does not have.
    let foreign = retry_copy(2, &["attacker-secret-012345".to_owned()]);
    assert!(bad_seal(&foreign, &b));
    // An absent header is not an empty one.
    let mut h = FieldTable::default();
    h.insert(ORIGINAL_ROUTING_KEY_HEADER.into(), text("orders.place"));
    seal(&mut h, &secrets(), &b);
    let mut dropped = h.clone();
    dropped.insert(ORIGINAL_EXCHANGE_HEADER.into(), text(""));
    assert!(bad_seal(&dropped, &b));
}

#[test]
fn a_malformed_state_header_is_ignored() {
    let mut h = FieldTable::default();
    h.insert(ATTEMPT_HEADER.into(), text("many"));
    let (state, why) = read(Some(&h), &secrets(), &binding("m-1", b""));
    assert_eq!(state, AgentState::FIRST);
    assert!(matches!(why, Some(Untrusted::Malformed(raw)) if raw.contains("many")));
}

#[test]
fn a_replayed_copy_without_attempt_keeps_its_sealed_route() {
    let mut h = FieldTable::default();
    h.insert(ORIGINAL_EXCHANGE_HEADER.into(), text(""));
    h.insert(ORIGINAL_ROUTING_KEY_HEADER.into(), text("orders.place"));
    seal(&mut h, &secrets(), &binding("m-1", b"body"));
    let (state, why) = read(Some(&h), &secrets(), &binding("m-1", b"body"));
    assert_eq!(why, None);
    assert_eq!(state.attempt, 1);
    assert_eq!(state.original_exchange, Some(""));
    assert_eq!(state.original_routing_key, Some("orders.place"));
}

fn death(queue: &str, reason: &str) -> AMQPValue {
    let mut entry = FieldTable::default();
    entry.insert("count".into(), AMQPValue::LongLongInt(1));
    entry.insert("queue".into(), text(queue));
    entry.insert("reason".into(), text(reason));
    entry.insert("exchange".into(), text(""));
    AMQPValue::FieldTable(entry)
}

#[test]
fn without_secrets_the_newest_x_death_must_be_an_expiry_in_a_delay_queue() {
    let b = binding("m-1", b"body");
    let mut h = retry_copy(2, &[]);
    assert!(!h.contains_key(SEAL_HEADER));
    assert_eq!(
        read(Some(&h), &[], &b).1,
        Some(Untrusted::NotFromDelayQueue)
    );
    let cases = [
        (vec![death("app.event.retry.100ms", "expired")], true),
        (
            vec![
                death("app.event.retry.2000ms", "expired"),
                death("app.event", "rejected"),
            ],
            true,
        ),
        (
            vec![
                death("app.event", "rejected"),
                death("app.event.retry.100ms", "expired"),
            ],
            false,
        ),
        (vec![death("app.event.retry.100ms", "rejected")], false),
        (vec![death("app.command.retry.100ms", "expired")], false),
        (vec![death("app.event.retry.ms", "expired")], false),
        (vec![death("app.event.retry.1x0ms", "expired")], false),
        (vec![], false),
    ];
    for (deaths, trusted) in cases {
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(deaths.clone())),
        );
        let (state, why) = read(Some(&h), &[], &b);
        assert_eq!(why.is_none(), trusted, "{deaths:?}");
        assert_eq!(state.attempt, if trusted { 2 } else { 1 });
    }
}

#[test]
fn sealing_without_secrets_removes_a_stale_seal() {
    let mut h = retry_copy(2, &secrets());
    assert!(h.contains_key(SEAL_HEADER));
    seal(&mut h, &[], &binding("m-1", b"body"));
    assert!(!h.contains_key(SEAL_HEADER));
    assert!(h.contains_key("tenant"));
}
