//! Request signatures: `verify` on any header string never panics, and sign → verify holds:
//! a signature verifies with every secret it was made with and within the time window only,
//! and not for other signed fields.
#![no_main]

use amqp_agent::signature::{sign, verify};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Case<'a> {
    /// Any header a client could send.
    header: &'a str,
    secrets: Vec<String>,
    time: u64,
    now: u64,
    tolerance: u64,
    subject: &'a str,
    message_id: &'a str,
    body: &'a [u8],
    /// Fields of a second message, checked not to verify with the first one's signature.
    other: (&'a str, &'a str, &'a [u8]),
    /// A secret checked not to verify unless it is one of `secrets`.
    stranger: String,
}

fuzz_target!(|c: Case<'_>| {
    let _ = verify(
        c.header,
        &c.secrets,
        c.now,
        c.tolerance,
        c.subject,
        c.message_id,
        c.body,
    );

    let header = sign(&c.secrets, c.time, c.subject, c.message_id, c.body);
    let check = |secrets: &[String], now, tolerance, (subject, id, body): (&str, &str, &[u8])| {
        verify(&header, secrets, now, tolerance, subject, id, body)
    };
    let fields = (c.subject, c.message_id, c.body);
    for secret in &c.secrets {
        let one = std::slice::from_ref(secret);
        assert!(check(one, c.time, 0, fields), "{header}");
        let within = c.tolerance.min(u64::MAX - c.time);
        assert!(check(one, c.time + within, c.tolerance, fields));
        if let Some(late) = c
            .time
            .checked_add(c.tolerance)
            .and_then(|t| t.checked_add(1))
        {
            assert!(!check(one, late, c.tolerance, fields));
        }
        // v1 signs "<t>.<subject>.<id>.<body>": fields that join to the same text sign alike
        // (issue 11, item 7; v2 fixes this). Any other change must fail.
        if v1_text(fields) != v1_text(c.other) {
            assert!(!check(one, c.time, 0, c.other), "{:?} verified", c.other);
        }
    }
    if !c.secrets.iter().any(|s| same_hmac_key(s, &c.stranger)) {
        assert!(!check(&[c.stranger], c.time, 0, fields));
    }
    if c.secrets.is_empty() {
        assert_eq!(header, format!("t={}", c.time));
    }
});

fn v1_text((subject, id, body): (&str, &str, &[u8])) -> Vec<u8> {
    [subject.as_bytes(), id.as_bytes(), body].join(&b"."[..])
}

/// HMAC pads keys shorter than its 64-byte block with zeros, so `k` and `k\0` are one key (the
/// fuzzer found this). Longer keys are hashed first; a key equal to another's hash is left out.
fn same_hmac_key(a: &str, b: &str) -> bool {
    a == b
        || (a.len() <= 64 && b.len() <= 64 && a.trim_end_matches('\0') == b.trim_end_matches('\0'))
}
