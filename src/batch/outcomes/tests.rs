use super::*;

const HEAD: &str = "Status: 200 OK\r\nX-Agent-Batch: 2\r\nContent-Type: text/plain\r\n\r\n";
const NONCE: &str = "6f1c0a9e2b7d4c3f8e5a1b2c3d4e5f60";

/// A reply body as PHP writes it: each line of `text` with the nonce in front, and an outcome
/// line (`<index> <verb> …`) preceded by that entry's `start` line.
fn r(text: &str) -> String {
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let first = line.split(' ').next().unwrap_or_default();
        if !first.is_empty() && first.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("{NONCE} {first} start\n"));
        }
        out.push_str(&format!("{NONCE} {line}"));
    }
    out
}

fn new_reader(indices: impl IntoIterator<Item = usize>) -> Reader {
    Reader::new(indices, true, NONCE)
}

/// Feeds `reply` in chunks of `chunk` bytes; returns the verdicts, the first error, and the reader.
fn read(
    indices: std::ops::Range<usize>,
    reply: &[u8],
    chunk: usize,
) -> (Vec<(usize, Verdict)>, Option<ProtocolError>, Reader) {
    let mut reader = new_reader(indices);
    let mut got = Vec::new();
    let mut error = None;
    for part in reply.chunks(chunk.max(1)) {
        if let Err(e) = reader.feed(part, &mut |i, v| got.push((i, v))) {
            error = Some(e);
            break;
        }
    }
    (got, error, reader)
}

fn kinds(got: &[(usize, Verdict)]) -> Vec<(usize, &'static str)> {
    got.iter()
        .map(|(i, v)| {
            (
                *i,
                match v {
                    Verdict::Success => "ack",
                    Verdict::Transient { .. } => "retry",
                    Verdict::Permanent { .. } => "reject",
                },
            )
        })
        .collect()
}

#[test]
fn outcomes_arrive_whatever_the_record_boundaries() {
    let reply = format!(
        "{HEAD}{}",
        r(
            "0 ack\n1 retry 503 30 stock service down\n2 reject 422 not JSON\n3 retry 500 - boom\r\n4 ack\ndone 5\n"
        )
    );
    for chunk in 1..=reply.len() {
        let (got, error, mut reader) = read(0..5, reply.as_bytes(), chunk);
        assert_eq!(error, None, "chunk {chunk}");
        assert_eq!(
            kinds(&got),
            [
                (0, "ack"),
                (1, "retry"),
                (2, "reject"),
                (3, "retry"),
                (4, "ack")
            ],
            "chunk {chunk}"
        );
        assert_eq!(reader.finish(), None);
    }
    let (got, _, _) = read(0..5, reply.as_bytes(), 7);
    assert!(matches!(
        &got[1].1,
        Verdict::Transient { status: Some(503), retry_after: Some(d), detail, .. }
            if *d == Duration::from_secs(30) && detail.contains("stock service down")
    ));
    assert!(matches!(
        &got[2].1,
        Verdict::Permanent { reason: "rejected", status: Some(422), detail } if detail.contains("not JSON")
    ));
    assert!(matches!(
        &got[3].1,
        Verdict::Transient {
            status: Some(500),
            retry_after: None,
            ..
        }
    ));
}

#[test]
fn each_outcome_is_emitted_as_soon_as_its_line_is_complete() {
    let mut reader = new_reader(0..3);
    let mut got = Vec::new();
    let mut feed = |reader: &mut Reader, s: &str| {
        reader.feed(s.as_bytes(), &mut |i, _| got.push(i)).unwrap();
        got.clone()
    };
    assert_eq!(
        feed(&mut reader, "Status: 200\r\nX-Agent-Batch: 2\r\n"),
        Vec::<usize>::new()
    );
    assert_eq!(
        feed(&mut reader, &format!("\r\n{NONCE} 0 start\n{NONCE} 0 a")),
        Vec::<usize>::new()
    );
    assert_eq!(reader.running(), Some(0));
    assert_eq!(
        feed(&mut reader, &format!("ck\n{NONCE} 1 start\n{NONCE} 1 ack")),
        vec![0]
    );
    assert_eq!(feed(&mut reader, "\n"), vec![0, 1]);
    assert_eq!(reader.running(), None);
    assert_eq!(reader.pending().collect::<Vec<_>>(), vec![2]);
}

#[test]
fn a_line_cut_mid_way_leaves_its_entry_without_an_outcome() {
    let reply = format!("{HEAD}{}", r("0 ack\n1 ack\n2 re"));
    let (got, error, mut reader) = read(0..4, reply.as_bytes(), 5);
    assert_eq!(error, None);
    assert_eq!(kinds(&got), [(0, "ack"), (1, "ack")]);
    assert_eq!(reader.pending().collect::<Vec<_>>(), vec![2, 3]);
    // PHP said it started entry 2: the one it was running when the reply ended.
    assert_eq!(reader.running(), Some(2));
    // A clean end anyway (PHP exited after the head): the rest is a malformed reply.
    assert!(matches!(reader.finish(), Some(Failure::Incomplete(d)) if d.contains("2 of 4")));
    assert!(reader.answered(1) && !reader.answered(2));
}

#[test]
fn a_duplicate_or_unknown_index_is_a_protocol_error() {
    for (reply, want) in [
        (
            r("0 ack\n1 ack\n0 ack\n2 ack\n"),
            "entry 0 was answered already",
        ),
        (r("0 ack\n7 ack\n1 ack\n"), "unknown entry index 7"),
        (r("0 ack\n-1 ack\n"), "not an outcome line"),
        // Found by the batch_reply fuzz target: `str::parse` took `+1` for entry 1.
        (r("0 ack\n+1 ack\n"), "not an outcome line"),
        (r("0 ack\n01 ack\n"), "not an outcome line"),
        (r("0 ack\n1 ack\n2 ack\ndone +3\n"), "bad trailer"),
        (r("0 ack\nhello from a handler\n"), "not an outcome line"),
        (r("0 ack\n1 retry 422 - wrong verb\n"), "not a retry status"),
        (r("0 ack\n1 reject 503 wrong verb\n"), "not a reject status"),
        (r("0 ack\n1 retry 503 soon\n"), "bad Retry-After"),
        (r("0 ack\n1 nope\n"), "unknown outcome"),
        (r("0 ack\ndone 3\n"), "trailer before an outcome"),
        (r("0 ack\n1 ack\n2 ack\ndone 4\n"), "trailer says 4"),
        // An outcome only for the entry PHP started, one entry at a time.
        (
            format!("{}{NONCE} 1 ack\n", r("0 ack\n")),
            "which PHP did not start",
        ),
        (
            format!("{}{NONCE} 1 start\n{NONCE} 2 start\n", r("0 ack\n")),
            "entry 2 started while entry 1 has no outcome",
        ),
        // Output a handler leaked (PHP flushes its buffers on exit): no nonce, no outcome.
        (
            format!("{}1 ack\n2 ack\n", r("0 ack\n")),
            "without the request's nonce",
        ),
        (
            format!("{}{} 1 ack\n", r("0 ack\n"), "0".repeat(32)),
            "without the request's nonce",
        ),
    ] {
        let reply = format!("{HEAD}{reply}");
        let (got, error, mut reader) = read(0..3, reply.as_bytes(), 3);
        let error = error.unwrap_or_else(|| panic!("no error for {reply:?}"));
        assert!(error.0.contains(want), "{error} for {reply:?}");
        // What came before the error stays settled; nothing after it is read.
        assert_eq!(got.first().map(|g| g.0), Some(0), "{reply:?}");
        assert!(
            reader
                .feed(format!("{NONCE} 2 ack\n").as_bytes(), &mut |_, _| panic!(
                    "read after an error"
                ))
                .is_err()
        );
        assert!(matches!(reader.finish(), Some(Failure::Protocol(_))));
    }
}

#[test]
fn handler_output_after_exit_acks_nothing() {
    // The case: a handler printed `1 ack\n2 ack\n` and exited; PHP flushed it.
    let reply = format!("{HEAD}{NONCE} 0 start\n1 ack\n2 ack\n");
    let (got, error, reader) = read(0..3, reply.as_bytes(), 7);
    assert!(got.is_empty(), "{got:?}");
    assert!(error.is_some());
    assert_eq!(reader.running(), Some(0), "PHP was running entry 0");
}

#[test]
fn a_reason_that_is_not_utf8_is_replaced_not_an_error() {
    // A reason cut inside a character (é is C3 A9) and a stray byte: entry 1 keeps its verdict,
    // entry 2 still gets its own.
    let mut reply = format!("{HEAD}{}", r("0 ack\n")).into_bytes();
    reply.extend_from_slice(format!("{NONCE} 1 start\n{NONCE} 1 reject 422 bad ").as_bytes());
    reply.extend_from_slice(b"\xff byte ");
    reply.extend_from_slice(b"caf\xc3\n");
    reply.extend_from_slice(r("2 ack\ndone 3\n").as_bytes());
    let (got, error, mut reader) = read(0..3, &reply, 5);
    assert_eq!(error, None);
    assert_eq!(kinds(&got), [(0, "ack"), (1, "reject"), (2, "ack")]);
    assert!(matches!(
        &got[1].1,
        Verdict::Permanent { detail, .. } if detail.contains("bad \u{fffd} byte caf\u{fffd}")
    ));
    assert_eq!(reader.finish(), None);
}

#[test]
fn an_outcome_after_the_trailer_or_the_end_is_a_protocol_error() {
    let reply = format!("{HEAD}{}", r("0 ack\ndone 1\n0 ack\n"));
    let (_, error, _) = read(0..1, reply.as_bytes(), 4);
    assert!(error.unwrap().0.contains("after the `done` trailer"));

    let reply = format!("{HEAD}{}", r("0 ack\n"));
    let (got, error, mut reader) = read(0..2, reply.as_bytes(), 4);
    assert_eq!((got.len(), error), (1, None));
    assert!(matches!(reader.finish(), Some(Failure::Incomplete(_))));
    let late = reader.feed(r("1 ack\n").as_bytes(), &mut |_, _| {
        panic!("outcome after the end")
    });
    assert!(late.unwrap_err().0.contains("after the end of the request"));
    assert!(!reader.answered(1));
}

#[test]
fn an_endless_line_or_head_is_a_protocol_error() {
    let long = format!(
        "{HEAD}{}",
        r(&format!("0 retry 500 - {}", "x".repeat(MAX_LINE)))
    );
    let (_, error, _) = read(0..1, long.as_bytes(), 100);
    assert!(error.unwrap().0.contains("longer than"));
    let head = "X-Pad: ".to_owned() + &"y".repeat(MAX_HEAD + 10);
    let (_, error, _) = read(0..1, head.as_bytes(), 1000);
    assert!(error.unwrap().0.contains("head too long"));
}

#[test]
fn a_reply_that_is_not_a_batch_reply_judges_every_entry() {
    // A PHP fatal error before any outcome: 500, every entry retried.
    let (got, error, mut reader) = read(
        0..3,
        b"Status: 500 Internal Server Error\r\n\r\n<b>Fatal</b>",
        4,
    );
    assert!(got.is_empty() && error.is_none());
    let Some(Failure::Whole(v)) = reader.finish() else {
        panic!()
    };
    assert!(
        matches!(v, Verdict::Transient { status: Some(500), counts: true, ref detail, .. } if detail.contains("Fatal"))
    );
    // A refused signature: as for one message (the secrets differ, no attempt used).
    let (_, _, mut reader) = read(0..3, b"Status: 401\r\n\r\ninvalid signature\n", 4);
    let Some(Failure::Whole(v)) = reader.finish() else {
        panic!()
    };
    assert!(matches!(
        v,
        Verdict::Transient {
            status: Some(401),
            counts: false,
            ..
        }
    ));
    // Another refusal: as for one message.
    let (_, _, mut reader) = read(0..3, b"Status: 403\r\n\r\nforbidden\n", 4);
    let Some(Failure::Whole(v)) = reader.finish() else {
        panic!()
    };
    assert!(matches!(
        v,
        Verdict::Permanent {
            status: Some(403),
            ..
        }
    ));
    // A receiver of format 1: not this version's reply, never an ack for the entries.
    let (_, _, mut reader) = read(0..3, b"Status: 200\r\nX-Agent-Batch: 1\r\n\r\n0 ack\n", 4);
    assert!(matches!(
        reader.finish(),
        Some(Failure::Whole(Verdict::Transient {
            reason: "fpm_malformed_reply",
            ..
        }))
    ));
    // A receiver that does not know batches and acks: never an ack for the entries.
    let (_, _, mut reader) = read(0..3, b"Status: 200\r\nX-Agent-Ack: 1\r\n\r\nok\n", 4);
    let Some(Failure::Whole(v)) = reader.finish() else {
        panic!()
    };
    assert!(matches!(
        v,
        Verdict::Transient {
            reason: "fpm_malformed_reply",
            ..
        }
    ));
    // Nothing at all.
    let (_, _, mut reader) = read(0..3, b"", 4);
    assert!(matches!(reader.finish(), Some(Failure::Incomplete(d)) if d == "empty reply"));
}

#[test]
fn only_expected_indices_count_and_a_skipped_one_is_unknown() {
    // Entry 1 was settled before the request (over the limits): PHP never saw it.
    let mut reader = new_reader([0, 2]);
    let mut got = Vec::new();
    let reply = format!("{HEAD}{}", r("0 ack\n2 ack\ndone 2\n"));
    reader
        .feed(reply.as_bytes(), &mut |i, _| got.push(i))
        .unwrap();
    assert_eq!(got, vec![0, 2]);
    assert_eq!(reader.finish(), None);
    let mut reader = new_reader([0, 2]);
    let reply = format!("{HEAD}{}", r("1 ack\n"));
    assert!(
        reader
            .feed(reply.as_bytes(), &mut |_, _| {})
            .unwrap_err()
            .0
            .contains("unknown entry index 1")
    );
}

#[test]
fn the_reply_status_is_known_once_the_head_is_read() {
    let mut reader = new_reader(0..1);
    assert_eq!(reader.status(), None);
    reader
        .feed(b"Status: 200\r\nX-Agent-Batch: 2\r\n\r\n", &mut |_, _| {})
        .unwrap();
    assert_eq!(reader.status(), Some(200));
    let (_, _, reader) = read(0..1, b"Status: 503\r\n\r\n", 2);
    assert_eq!(reader.status(), Some(503));
}
