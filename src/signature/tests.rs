use serde_json::Value;

use super::*;

/// The known-answer vectors shared with the PHP receivers' tests.
const VECTORS: &str = include_str!("../../tests/vectors/signature.json");

struct Case {
    name: String,
    secrets: Vec<String>,
    t: u64,
    subject: String,
    message_id: String,
    attempt: u32,
    routing_key: String,
    exchange: String,
    content_type: String,
    headers_json: String,
    body: Vec<u8>,
    signature: String,
}

impl Case {
    fn fields(&self) -> Signed<'_> {
        Signed {
            subject: &self.subject,
            message_id: &self.message_id,
            attempt: self.attempt,
            routing_key: &self.routing_key,
            exchange: &self.exchange,
            content_type: &self.content_type,
            headers_json: &self.headers_json,
            body: &self.body,
        }
    }
}

fn cases() -> Vec<Case> {
    let doc: Value = serde_json::from_str(VECTORS).expect("vectors are JSON");
    let s = |c: &Value, k: &str| c[k].as_str().unwrap_or_else(|| panic!("{k}")).to_owned();
    let cases: Vec<Case> = doc["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            name: s(c, "name"),
            secrets: c["secrets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect(),
            t: c["t"].as_u64().unwrap(),
            subject: s(c, "subject"),
            message_id: s(c, "message_id"),
            attempt: u32::try_from(c["attempt"].as_u64().unwrap()).unwrap(),
            routing_key: s(c, "routing_key"),
            exchange: s(c, "exchange"),
            content_type: s(c, "content_type"),
            headers_json: s(c, "headers_json"),
            body: hex::decode(s(c, "body_hex")).unwrap(),
            signature: s(c, "signature"),
        })
        .collect();
    assert!(cases.len() >= 5, "the vector file lost cases");
    cases
}

#[test]
fn signs_every_known_answer_vector_exactly() {
    for case in cases() {
        assert_eq!(
            sign(&case.secrets, case.t, &case.fields(), true),
            case.signature,
            "vector `{}`",
            case.name
        );
    }
}

/// Without `fpm.signature_v1` (the default) the header is the vector's without its `v1` values.
#[test]
fn signs_without_v1_by_default_as_the_vector_less_its_v1_values() {
    for case in cases() {
        let without_v1: Vec<&str> = case
            .signature
            .split(',')
            .filter(|part| !part.starts_with("v1="))
            .collect();
        assert!(
            case.signature.split(',').any(|p| p.starts_with("v1=")),
            "vector `{}` has v1 values",
            case.name
        );
        let signed = sign(&case.secrets, case.t, &case.fields(), false);
        assert_eq!(signed, without_v1.join(","), "vector `{}`", case.name);
        assert!(
            verify(&signed, &case.secrets, case.t, 300, &case.fields(), false),
            "vector `{}`",
            case.name
        );
    }
}

#[test]
fn verifies_every_vector_with_v2_and_each_secret_alone() {
    for case in cases() {
        for secret in &case.secrets {
            let one = vec![secret.clone()];
            assert!(
                verify(&case.signature, &one, case.t, 300, &case.fields(), false),
                "vector `{}`",
                case.name
            );
        }
        assert!(!verify(
            &case.signature,
            &["not-a-secret".to_owned()],
            case.t,
            300,
            &case.fields(),
            true
        ));
    }
}

#[test]
fn v1_alone_is_accepted_only_when_asked() {
    for case in cases() {
        let v1_only: String = case
            .signature
            .split(',')
            .filter(|p| !p.starts_with("v2="))
            .collect::<Vec<_>>()
            .join(",");
        let f = case.fields();
        assert!(!verify(&v1_only, &case.secrets, case.t, 300, &f, false));
        assert!(verify(&v1_only, &case.secrets, case.t, 300, &f, true));
    }
}

#[test]
fn v2_rejects_every_tampered_field_and_stale_timestamps() {
    let case = &cases()[1];
    let (sig, s, t) = (&case.signature, &case.secrets, case.t);
    let f = case.fields();
    assert!(verify(sig, s, t, 300, &f, false));
    let body = b"tampered".to_vec();
    let tampered = [
        Signed {
            subject: "event",
            ..f
        },
        Signed {
            message_id: "cmd-43",
            ..f
        },
        Signed { attempt: 4, ..f },
        Signed {
            routing_key: "orders.cancel",
            ..f
        },
        Signed {
            exchange: "other",
            ..f
        },
        Signed {
            content_type: "multipart/form-data",
            ..f
        },
        Signed {
            headers_json: r#"{"tenant":"evil","n":[1,2]}"#,
            ..f
        },
        Signed { body: &body, ..f },
    ];
    for (i, changed) in tampered.iter().enumerate() {
        assert!(!verify(sig, s, t, 300, changed, false), "field {i}");
    }
    assert!(verify(sig, s, t + 300, 300, &f, false));
    assert!(!verify(sig, s, t + 301, 300, &f, false));
    assert!(!verify(sig, s, t - 301, 300, &f, false));
    // Another timestamp in the header invalidates every MAC.
    let moved = sig.replacen(&format!("t={t}"), &format!("t={}", t + 1), 1);
    assert!(!verify(&moved, s, t, 300, &f, true));
    assert!(!verify("v2=00", s, t, 300, &f, true));
}

#[test]
fn v2_tells_apart_what_v1_confuses() {
    // Vectors 2 and 3: id `a` + body `b.c` and id `a.b` + body `c` share one v1 but not v2.
    let all = cases();
    let (a, b) = (&all[2], &all[3]);
    let v1 = |s: &str| s.split(',').nth(1).unwrap().to_owned();
    assert_eq!(v1(&a.signature), v1(&b.signature));
    assert!(!verify(
        &a.signature,
        &a.secrets,
        a.t,
        300,
        &b.fields(),
        false
    ));
    assert!(!verify(
        &b.signature,
        &b.secrets,
        b.t,
        300,
        &a.fields(),
        false
    ));
}

#[test]
fn signature_decimals_are_what_to_string_writes() {
    for n in [
        0,
        7,
        9,
        10,
        99,
        100,
        1_733_500_000,
        u64::from(u32::MAX),
        u64::MAX,
    ] {
        assert_eq!(itoa::Buffer::new().format(n), n.to_string(), "{n}");
    }
}

/// One `Signer` keyed once signs every request of a subject: the same value for every vector,
/// request after request (its cloned key state is not used up), and its `Debug` shows no key.
#[test]
fn a_signer_keyed_once_signs_every_request_like_the_vectors() {
    for case in cases() {
        let signer = Signer::new(&case.secrets, true);
        for _ in 0..3 {
            assert_eq!(
                signer.sign(case.t, &case.fields()),
                case.signature,
                "vector `{}`",
                case.name
            );
        }
        assert_eq!(
            format!("{signer:?}"),
            format!("Signer {{ keys: {}, with_v1: true }}", case.secrets.len())
        );
    }
}
