//! Request signatures: `verify` on any header string never panics, and sign → verify holds:
//! a signature verifies with every secret it was made with and within the time window only,
//! and not for any other field value (v2), nor with another secret.
#![no_main]

use amqp_agent::signature::{Signed, sign, verify};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary, PartialEq)]
struct Fields<'a> {
    subject: &'a str,
    message_id: &'a str,
    attempt: u32,
    routing_key: &'a str,
    exchange: &'a str,
    content_type: &'a str,
    headers_json: &'a str,
    body: &'a [u8],
}

impl Fields<'_> {
    fn signed(&self) -> Signed<'_> {
        Signed {
            subject: self.subject,
            message_id: self.message_id,
            attempt: self.attempt,
            routing_key: self.routing_key,
            exchange: self.exchange,
            content_type: self.content_type,
            headers_json: self.headers_json,
            body: self.body,
        }
    }

    /// What v1 signs besides the time: `<subject>.<message_id>.<body>`.
    fn v1_text(&self) -> Vec<u8> {
        [
            self.subject.as_bytes(),
            self.message_id.as_bytes(),
            self.body,
        ]
        .join(&b"."[..])
    }
}

#[derive(Debug, Arbitrary)]
struct Case<'a> {
    /// Any header a client could send.
    header: &'a str,
    secrets: Vec<String>,
    time: u64,
    now: u64,
    tolerance: u64,
    accept_v1: bool,
    fields: Fields<'a>,
    /// A second message, checked not to verify with the first one's signature.
    other: Fields<'a>,
    /// A secret checked not to verify unless it is one of `secrets`.
    stranger: String,
}

fuzz_target!(|c: Case<'_>| {
    // Three secrets show rotation; more only slow the target down (each costs a dozen HMACs).
    let secrets = &c.secrets[..c.secrets.len().min(3)];
    let fields = c.fields.signed();
    let _ = verify(
        c.header,
        &c.secrets,
        c.now,
        c.tolerance,
        &fields,
        c.accept_v1,
    );

    // With v1 (`fpm.signature_v1`), so that both versions are checked.
    let header = sign(secrets, c.time, &fields, true);
    let check = |secrets: &[String], now, tolerance, f: &Fields<'_>, accept_v1| {
        verify(&header, secrets, now, tolerance, &f.signed(), accept_v1)
    };
    for secret in secrets {
        let one = std::slice::from_ref(secret);
        for accept_v1 in [false, true] {
            assert!(check(one, c.time, 0, &c.fields, accept_v1), "{header}");
            let within = c.tolerance.min(u64::MAX - c.time);
            assert!(check(
                one,
                c.time + within,
                c.tolerance,
                &c.fields,
                accept_v1
            ));
            if let Some(late) = c
                .time
                .checked_add(c.tolerance)
                .and_then(|t| t.checked_add(1))
            {
                assert!(!check(one, late, c.tolerance, &c.fields, accept_v1));
            }
        }
        if c.other != c.fields {
            // v2 covers every field, unambiguously.
            assert!(
                !check(one, c.time, 0, &c.other, false),
                "{:?} verified",
                c.other
            );
            // v1 covers only subject, id and body, and joins them with dots (issue 11, item 7):
            // the legacy mode accepts what joins to the same text.
            if c.other.v1_text() != c.fields.v1_text() {
                assert!(
                    !check(one, c.time, 0, &c.other, true),
                    "{:?} verified",
                    c.other
                );
            }
        }
    }
    if !secrets.iter().any(|s| same_hmac_key(s, &c.stranger)) {
        assert!(!check(&[c.stranger], c.time, 0, &c.fields, true));
    }
    if secrets.is_empty() {
        assert_eq!(header, format!("t={}", c.time));
    }
});

/// HMAC pads keys shorter than its 64-byte block with zeros, so `k` and `k\0` are one key (the
/// fuzzer found this). Longer keys are hashed first; a key equal to another's hash is left out.
fn same_hmac_key(a: &str, b: &str) -> bool {
    a == b
        || (a.len() <= 64 && b.len() <= 64 && a.trim_end_matches('\0') == b.trim_end_matches('\0'))
}
