use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};

use super::*;

fn encoded(records: &[Record<'_>]) -> String {
    let mut out = Vec::new();
    for r in records {
        r.encode(&mut out);
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn records_round_trip_one_per_line() {
    let records = [
        Record::Start("a"),
        Record::Restart("b-1"),
        Record::Done("a"),
        Record::Crashes {
            key: "c:x",
            count: 3,
            at: 1_700_000_000,
        },
    ];
    let text = encoded(&records);
    assert_eq!(text, "S a\nR b-1\nD a\nC 3 1700000000 c:x\n");
    let parsed: Vec<_> = text.lines().filter_map(Record::parse).collect();
    assert_eq!(parsed, records);
}

#[test]
fn comments_and_damaged_lines_are_skipped() {
    for line in [
        "# amqp-agent in-flight journal v1",
        "",
        "S",
        "S ",
        "X a",
        "S a b",
        "C x 1 a",
        "C 1 a",
        "C 1 2 a b",
        "S \u{1b}[2J",
    ] {
        assert_eq!(Record::parse(line), None, "{line:?}");
    }
}

#[test]
fn started_but_not_done_counts_one_crash_per_key() {
    let mut ledger = Ledger::replay("S a\nS b\nD b\nS a\nR c\n# torn tail: S d");
    let crashed = ledger.count_crash(100);
    // `a` was in flight twice (two deliveries with the same id): still one crash.
    assert_eq!(crashed, vec![("a".into(), 1), ("c".into(), 1)]);
    assert!(ledger.idle());
    assert_eq!(ledger.crashes("a"), Some(Crashes { count: 1, at: 100 }));
    assert_eq!(ledger.crashes("b"), None);
}

#[test]
fn a_redelivery_is_a_suspect_then_poison_after_n_crashes() {
    let mut ledger = Ledger::default();
    // Crash 1: a fresh delivery in flight.
    assert_eq!(ledger.decide("m", false, 2), Begin::Handle);
    assert_eq!(ledger.start("m", false), Record::Start("m"));
    ledger.count_crash(10);
    // The broker redelivers it: handled again, alone (count 1 < 2).
    assert_eq!(ledger.decide("m", true, 2), Begin::Alone(1));
    assert_eq!(ledger.start("m", true), Record::Restart("m"));
    ledger.count_crash(20);
    // Next delivery: poison.
    assert_eq!(ledger.decide("m", true, 2), Begin::Poison(2));
    // A key without crashes, redelivered for another reason, is handled as usual.
    assert_eq!(ledger.decide("other", true, 2), Begin::Handle);
    // Threshold 0 turns the decision off.
    assert_eq!(ledger.decide("m", true, 0), Begin::Handle);
    // Threshold 1: the first redelivery after one crash is poison.
    assert_eq!(
        Ledger::replay("C 1 5 k\n").decide("k", true, 1),
        Begin::Poison(1)
    );
}

#[test]
fn a_fresh_delivery_starts_over() {
    // A retry copy, a replayed dead letter or a reused id: `redelivered` is false.
    let mut ledger = Ledger::replay("C 5 100 m\n");
    assert_eq!(ledger.decide("m", false, 2), Begin::Handle);
    ledger.start("m", false);
    assert_eq!(ledger.crashes("m"), None);
    // Replaying the journal gives the same answer: `S` forgets the count.
    let replayed = Ledger::replay("C 5 100 m\nS m\nD m\n");
    assert_eq!(replayed.crashes("m"), None);
    assert_eq!(replayed.decide("m", true, 2), Begin::Handle);
}

#[test]
fn a_clean_stop_counts_nothing() {
    let mut ledger = Ledger::replay("C 1 100 a\nS b\nR a\n");
    ledger.forget_in_flight();
    assert!(ledger.count_crash(200).is_empty());
    assert_eq!(ledger.crashes("a"), Some(Crashes { count: 1, at: 100 }));
}

#[test]
fn the_snapshot_replays_to_the_same_ledger() {
    let mut ledger = Ledger::replay("S a\nS a\nS b\nR c\n");
    ledger.count_crash(50);
    ledger.start("a", true);
    ledger.start("d", false);
    ledger.start("d", false);
    let mut out = Vec::new();
    ledger.snapshot(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text, "C 1 50 a\nC 1 50 b\nC 1 50 c\nR a\nR d\nR d\n",
        "counts first, in-flight as R (keeps counts)"
    );
    assert_eq!(Ledger::replay(&text), ledger);
}

#[test]
fn counts_expire_and_are_bounded() {
    let mut ledger = Ledger::replay("C 1 100 old\nC 1 5000 new\n");
    ledger.prune(100 + EXPIRY_SECS + 1);
    assert_eq!(ledger.crashes("old"), None);
    assert!(ledger.crashes("new").is_some());

    let mut text = String::new();
    for i in 0..MAX_COUNTS + 10 {
        text.push_str(&format!("C 1 {} k{i}\n", 1_000 + i));
    }
    let mut ledger = Ledger::replay(&text);
    ledger.prune(2_000);
    assert_eq!(ledger.crashes.len(), MAX_COUNTS);
    assert_eq!(ledger.crashes("k9"), None, "the oldest go first");
    assert!(ledger.crashes("k10").is_some());
}

#[test]
fn keys_are_journal_tokens() {
    assert_eq!(key(Some("order-42"), "rk", None, b"x"), "order-42");
    let spaced = key(Some("has space"), "rk", None, b"x");
    assert!(spaced.starts_with("h:") && valid_key(&spaced), "{spaced}");
    let long = "x".repeat(256);
    assert!(key(Some(&long), "rk", None, b"x").starts_with("h:"));
    assert!(valid_key(&key(Some("line\nbreak"), "rk", None, b"")));
}

#[test]
fn a_message_without_id_gets_a_stable_key_from_routing_key_headers_and_body() {
    let mut headers = FieldTable::default();
    headers.insert("b".into(), AMQPValue::LongString(LongString::from("1")));
    headers.insert("a".into(), AMQPValue::LongLongInt(7));
    let base = key(None, "rk", Some(&headers), b"body");
    assert!(base.starts_with("b:") && valid_key(&base), "{base}");
    assert_eq!(key(Some(""), "rk", Some(&headers), b"body"), base);
    assert_ne!(key(None, "rk2", Some(&headers), b"body"), base);
    assert_ne!(key(None, "rk", Some(&headers), b"body2"), base);
    assert_ne!(key(None, "rk", None, b"body"), base);
}

#[test]
fn deep_headers_are_hashed_without_deep_recursion() {
    let mut value = AMQPValue::Boolean(true);
    for _ in 0..100_000 {
        value = AMQPValue::FieldArray(FieldArray::from(vec![value]));
    }
    let mut headers = FieldTable::default();
    headers.insert("deep".into(), value);
    let k = key(None, "rk", Some(&headers), b"");
    assert!(valid_key(&k));
    // Dropping 100,000 nested arrays recurses in lapin's types; keep it off this test's stack.
    std::mem::forget(headers);
}

#[test]
fn the_poison_verdict_names_the_crashes() {
    match verdict(2) {
        Verdict::Permanent { reason, detail, .. } => {
            assert_eq!(reason, "poison");
            assert_eq!(detail, "in flight during 2 agent crashes");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reused_id_stays_in_flight_until_its_last_delivery_is_done() {
    // Two deliveries of `a` in flight; one done: the other still counts if the process dies.
    let mut ledger = Ledger::replay("S a\nS a\nD a\n");
    assert_eq!(ledger.count_crash(100), vec![("a".into(), 1)]);
    // Both done: nothing in flight, and the crash counted before stays until a fresh start.
    let mut ledger = Ledger::replay("C 1 100 a\nR a\nR a\nD a\nD a\n");
    assert!(ledger.idle());
    assert!(ledger.count_crash(200).is_empty());
    assert_eq!(ledger.crashes("a"), Some(Crashes { count: 1, at: 100 }));
    // A fresh start of `a` forgets its crashes; a start of another key does not.
    let ledger = Ledger::replay("C 2 100 a\nC 1 100 b\nS b\nD b\n");
    assert_eq!(ledger.crashes("a"), Some(Crashes { count: 2, at: 100 }));
    assert_eq!(ledger.crashes("b"), None);
}
