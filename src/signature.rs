//! Request signing: proves to PHP that a FastCGI request came from the agent.
//!
//! Format of `HTTP_X_AGENT_SIGNATURE`: `t=<unix seconds>,v1=<hex>[,v1=…],v2=<hex>[,v2=…]`: every
//! `v1` first, one per configured secret, then every `v2`, one per secret, in secret order, so that
//! PHP keeps verifying during a secret rotation.
//!
//! - `v2` (current) is HMAC-SHA256(secret, `"amqp-agent.v2"` followed, for each field, by its
//!   length as a 4-byte big-endian integer and its bytes). The fields, in order: `t` (decimal),
//!   subject, message id, attempt (decimal), routing key, exchange, original content type,
//!   lowercase hex SHA-256 of the `HTTP_X_AGENT_HEADERS` value, body. Every value is the exact
//!   param value sent. The length prefixes make the encoding unambiguous.
//! - `v1` (legacy) is HMAC-SHA256(secret, `"<t>.<subject>.<message_id>.<body>"`). It is
//!   ambiguous (id `a` + body `b.c` signs like id `a.b` + body `c`) and covers neither the route
//!   nor the headers; receivers accept it only when told to, while they move over.
//!
//! The known-answer vectors shared with the PHP receivers live in `tests/vectors/signature.json`.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Domain separation prefix of the `v2` message.
const V2_PREFIX: &[u8] = b"amqp-agent.v2";

/// What a request's signature covers (besides the timestamp): the param values as sent.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    /// `HTTP_X_AGENT_SUBJECT`.
    pub subject: &'a str,
    /// `HTTP_X_AGENT_MESSAGE_ID`.
    pub message_id: &'a str,
    /// `HTTP_X_AGENT_ATTEMPT`.
    pub attempt: u32,
    /// `HTTP_X_AGENT_ROUTING_KEY`.
    pub routing_key: &'a str,
    /// `HTTP_X_AGENT_EXCHANGE`.
    pub exchange: &'a str,
    /// `HTTP_X_AGENT_CONTENT_TYPE`: the original AMQP content type, empty when none.
    pub content_type: &'a str,
    /// `HTTP_X_AGENT_HEADERS`.
    pub headers_json: &'a str,
    /// The request body.
    pub body: &'a [u8],
}

/// Builds the signature header value for one request: `v2` per secret, preceded by `v1` per
/// secret when `with_v1` (`fpm.signature_v1`, for receivers older than `v2`).
#[must_use]
pub fn sign(secrets: &[String], unix_time: u64, fields: &Signed<'_>, with_v1: bool) -> String {
    Signer::new(secrets, with_v1).sign(unix_time, fields)
}

/// The signing keys of one subject, keyed once: an HMAC keyed with a secret has already
/// hashed its inner and outer key blocks, so each request clones that state instead of hashing
/// them again (two SHA-256 blocks per value). Its `Debug` shows how many keys, never a key.
#[derive(Clone)]
pub struct Signer {
    keys: Vec<Hmac<Sha256>>,
    with_v1: bool,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("keys", &self.keys.len())
            .field("with_v1", &self.with_v1)
            .finish()
    }
}

impl Signer {
    /// The keys of `secrets`, in order; `with_v1` adds the legacy `v1` values.
    #[must_use]
    pub fn new(secrets: &[String], with_v1: bool) -> Self {
        Self {
            keys: secrets.iter().map(|s| keyed(s.as_bytes())).collect(),
            with_v1,
        }
    }

    /// True when there is no secret: requests go unsigned.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The signature header value for one request (the module's format).
    #[must_use]
    pub fn sign(&self, unix_time: u64, fields: &Signed<'_>) -> String {
        let values = self.keys.len() * if self.with_v1 { 2 } else { 1 };
        let mut out = String::with_capacity(24 + values * 68);
        out.push_str("t=");
        out.push_str(itoa::Buffer::new().format(unix_time));
        if self.with_v1 {
            for key in &self.keys {
                out.push_str(",v1=");
                push_hex(
                    &mut out,
                    &v1(key.clone(), unix_time, fields)
                        .finalize()
                        .into_bytes()
                        .into(),
                );
            }
        }
        let headers_digest = headers_digest(fields);
        for key in &self.keys {
            out.push_str(",v2=");
            push_hex(
                &mut out,
                &v2(key.clone(), unix_time, fields, &headers_digest)
                    .finalize()
                    .into_bytes()
                    .into(),
            );
        }
        out
    }
}

/// Appends a SHA-256 digest as lowercase hex, without the `String` that `hex::encode` builds a
/// `char` at a time (~2,000 instructions per value, twice per message).
fn push_hex(out: &mut String, digest: &[u8; 32]) {
    let mut text = [0u8; 64];
    hex::encode_to_slice(digest, &mut text).expect("64 bytes hold 32 in hex");
    out.push_str(std::str::from_utf8(&text).expect("hex digits are ASCII"));
}

/// The `v2` field for the headers: lowercase hex SHA-256 of `HTTP_X_AGENT_HEADERS`, the same
/// for every secret.
fn headers_digest(f: &Signed<'_>) -> [u8; 64] {
    let mut digest = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(f.headers_json.as_bytes()), &mut digest)
        .expect("64 bytes hold 32 in hex");
    digest
}

/// Verifies a signature header against any of `secrets`, within `tolerance_secs` of `now`.
///
/// A `v2` value is always accepted; a `v1` value only with `accept_v1` (a receiver still moving
/// over). The agent does not need this at run time; it is the reference the PHP receivers follow
/// and what the tests use.
#[must_use]
pub fn verify(
    header: &str,
    secrets: &[String],
    now: u64,
    tolerance_secs: u64,
    fields: &Signed<'_>,
    accept_v1: bool,
) -> bool {
    let mut timestamp = None;
    let mut v1s = Vec::new();
    let mut v2s = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some(("v1", v)) if accept_v1 => v1s.extend(hex::decode(v).ok()),
            Some(("v2", v)) => v2s.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let Some(t) = timestamp else { return false };
    if t.abs_diff(now) > tolerance_secs {
        return false;
    }
    let headers_digest = headers_digest(fields);
    secrets.iter().any(|secret| {
        let key = keyed(secret.as_bytes());
        let m2 = v2(key.clone(), t, fields, &headers_digest);
        v2s.iter().any(|c| m2.clone().verify_slice(c).is_ok()) || {
            let m1 = v1(key, t, fields);
            v1s.iter().any(|c| m1.clone().verify_slice(c).is_ok())
        }
    })
}

fn keyed(secret: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC accepts any key length")
}

/// `m`: keyed with the secret, nothing hashed yet.
fn v1(mut m: Hmac<Sha256>, unix_time: u64, f: &Signed<'_>) -> Hmac<Sha256> {
    m.update(itoa::Buffer::new().format(unix_time).as_bytes());
    m.update(b".");
    m.update(f.subject.as_bytes());
    m.update(b".");
    m.update(f.message_id.as_bytes());
    m.update(b".");
    m.update(f.body);
    m
}

/// `m`: keyed with the secret, nothing hashed yet; `headers_digest`: lowercase hex SHA-256 of
/// `f.headers_json`.
fn v2(mut m: Hmac<Sha256>, unix_time: u64, f: &Signed<'_>, headers_digest: &[u8]) -> Hmac<Sha256> {
    m.update(V2_PREFIX);
    let (mut t, mut attempt) = (itoa::Buffer::new(), itoa::Buffer::new());
    let fields: [&[u8]; 9] = [
        t.format(unix_time).as_bytes(),
        f.subject.as_bytes(),
        f.message_id.as_bytes(),
        attempt.format(f.attempt).as_bytes(),
        f.routing_key.as_bytes(),
        f.exchange.as_bytes(),
        f.content_type.as_bytes(),
        headers_digest,
        f.body,
    ];
    for field in fields {
        length_prefixed(&mut m, field);
    }
    m
}

/// Feeds `field` into `m` as a 4-byte big-endian length and the bytes.
pub(crate) fn length_prefixed(m: &mut Hmac<Sha256>, field: &[u8]) {
    // Bodies and header JSON are capped far below 4 GiB by the limits; saturate regardless.
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    m.update(&len.to_be_bytes());
    m.update(field);
}

#[cfg(test)]
mod tests;
