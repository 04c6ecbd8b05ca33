//! Batch replies (`batch::outcomes::Reader`, then `batch::retry::unsettled`, as the batch worker
//! uses them): whatever PHP writes, in whatever chunks, the reader never panics; every verdict is
//! for an entry of the request, at most one each; an entry is acked only for a
//! `<nonce> <index> ack` line of a reply that said `X-Agent-Batch: 2`, never for a line without
//! the request's nonce (a handler's own output); and once the request ended, every entry has
//! exactly one fate, the ones without a line never `Success`, and at most one of them (the entry
//! PHP was running) uses an attempt.
#![no_main]

use std::collections::BTreeMap;

use amqp_agent::batch::outcomes::Reader;
use amqp_agent::batch::retry::{Fate, unsettled};
use amqp_agent::outcome::Verdict;
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

/// The nonce of every fuzzed request.
const NONCE: &str = "0123456789abcdef0123456789abcdef";

#[derive(Debug, Arbitrary)]
enum Line<'a> {
    Start(u8),
    Ack(u8),
    /// An outcome line without the nonce (what a handler could print).
    Bare(u8),
    Retry(u8, u16, Option<u32>, &'a str),
    Reject(u8, u16, &'a str),
    Done(u8),
    Text(&'a str),
    Bytes(&'a [u8]),
}

#[derive(Debug, Arbitrary)]
enum Reply<'a> {
    /// Any bytes at all.
    Raw(&'a [u8]),
    /// A CGI head (with or without `X-Agent-Batch: 2`) and outcome-shaped lines.
    Shaped {
        status: Option<u16>,
        batch_header: bool,
        extra_header: &'a str,
        crlf: bool,
        lines: Vec<Line<'a>>,
    },
}

#[derive(Debug, Arbitrary)]
struct Case<'a> {
    indices: Vec<u8>,
    require_ack: bool,
    reply: Reply<'a>,
    /// Chunk size of the stdout feed (0 = all at once).
    chunk: u8,
    /// Fed after the request ended.
    late: &'a [u8],
}

fn render(reply: &Reply<'_>) -> Vec<u8> {
    let (status, batch_header, extra, crlf, lines) = match reply {
        Reply::Raw(bytes) => return bytes.to_vec(),
        Reply::Shaped {
            status,
            batch_header,
            extra_header,
            crlf,
            lines,
        } => (status, batch_header, extra_header, crlf, lines),
    };
    let eol: &[u8] = if *crlf { b"\r\n" } else { b"\n" };
    let mut out = Vec::new();
    if let Some(s) = status {
        out.extend_from_slice(format!("Status: {s} X").as_bytes());
        out.extend_from_slice(eol);
    }
    if *batch_header {
        out.extend_from_slice(b"X-Agent-Batch: 2");
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(extra.as_bytes());
    out.extend_from_slice(eol);
    out.extend_from_slice(eol);
    for line in lines {
        let n = format!("{NONCE} ");
        match line {
            Line::Start(i) => out.extend_from_slice(format!("{n}{i} start").as_bytes()),
            Line::Ack(i) => out.extend_from_slice(format!("{n}{i} ack").as_bytes()),
            Line::Bare(i) => out.extend_from_slice(format!("{i} ack").as_bytes()),
            Line::Retry(i, s, after, why) => {
                let after = after.map_or("-".to_owned(), |a| a.to_string());
                out.extend_from_slice(format!("{n}{i} retry {s} {after} {why}").as_bytes());
            }
            Line::Reject(i, s, why) => {
                out.extend_from_slice(format!("{n}{i} reject {s} {why}").as_bytes());
            }
            Line::Done(c) => out.extend_from_slice(format!("{n}done {c}").as_bytes()),
            Line::Text(t) => out.extend_from_slice(t.as_bytes()),
            Line::Bytes(b) => out.extend_from_slice(b),
        }
        out.push(b'\n');
    }
    out
}

/// True when `stdout` holds a line that is exactly `<nonce> <index> ack` (a trailing CR or
/// spaces allowed) after a head that carries `X-Agent-Batch: 2`, and an earlier line
/// `<nonce> <index> start`.
fn acked_by_a_line(stdout: &[u8], index: usize) -> bool {
    let lower = stdout.to_ascii_lowercase();
    let has_header = lower
        .split(|b| *b == b'\n')
        .any(|l| l.trim_ascii() == b"x-agent-batch: 2" || l.trim_ascii() == b"x-agent-batch:2");
    let start = format!("{NONCE} {index} start");
    let want = format!("{NONCE} {index} ack");
    let lines: Vec<&[u8]> = stdout.split(|b| *b == b'\n').collect();
    let Some(acked) = lines
        .iter()
        .position(|l| l.trim_ascii_end() == want.as_bytes())
    else {
        return false;
    };
    has_header
        && lines[..acked]
            .iter()
            .any(|l| l.trim_ascii_end() == start.as_bytes())
}

fuzz_target!(|case: Case<'_>| {
    let expected: std::collections::BTreeSet<usize> =
        case.indices.iter().map(|i| usize::from(*i)).collect();
    let stdout = render(&case.reply);
    let mut reader = Reader::new(expected.iter().copied(), case.require_ack, NONCE);
    let mut verdicts: BTreeMap<usize, Verdict> = BTreeMap::new();
    let chunk = if case.chunk == 0 {
        stdout.len().max(1)
    } else {
        usize::from(case.chunk)
    };
    for piece in stdout.chunks(chunk) {
        let fed = reader.feed(piece, &mut |i, verdict| {
            assert!(
                expected.contains(&i),
                "verdict for entry {i}, not in the request"
            );
            assert!(
                verdicts.insert(i, verdict).is_none(),
                "two verdicts for entry {i}"
            );
        });
        if fed.is_err() {
            // The worker stops reading at the first protocol error; the error is sticky.
            let again = format!("{NONCE} 0 ack\n");
            assert!(
                reader
                    .feed(again.as_bytes(), &mut |i, _| panic!(
                        "verdict {i} after an error"
                    ))
                    .is_err()
            );
            break;
        }
    }
    for (i, verdict) in &verdicts {
        assert!(reader.answered(*i));
        if matches!(verdict, Verdict::Success) {
            assert!(
                acked_by_a_line(&stdout, *i),
                "entry {i} acked without an `{i} ack` line in a batch reply: {:?}",
                String::from_utf8_lossy(&stdout)
            );
        }
    }
    let failure = reader.finish();
    match &failure {
        None => assert_eq!(
            verdicts.len(),
            expected.len(),
            "no failure, yet entries without a verdict"
        ),
        Some(failure) => {
            let running = reader.running();
            if let Some(i) = running {
                assert!(expected.contains(&i) && !reader.answered(i));
            }
            let rest = unsettled(
                expected.iter().copied(),
                |i| reader.answered(i),
                running,
                failure,
            );
            let mut counted = 0;
            for (i, fate) in &rest {
                if let Fate::Settle(verdict) = fate {
                    assert!(
                        !matches!(verdict, Verdict::Success),
                        "entry {i} without an outcome line would be acked"
                    );
                    if matches!(
                        verdict,
                        Verdict::Transient { counts: true, .. } | Verdict::Permanent { .. }
                    ) {
                        counted += 1;
                        assert_eq!(
                            Some(*i),
                            running,
                            "entry {i} blamed, PHP was not running it"
                        );
                    }
                }
                assert!(!verdicts.contains_key(i), "entry {i} settled twice");
            }
            assert!(
                counted <= 1,
                "{counted} entries used an attempt for one failure"
            );
            assert_eq!(verdicts.len() + rest.len(), expected.len());
        }
    }
    if !case.late.is_empty() {
        assert!(
            reader
                .feed(case.late, &mut |i, _| panic!("verdict {i} after the end"))
                .is_err(),
            "output after the end of the request is an error"
        );
    }
});
