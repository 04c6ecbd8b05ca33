use std::time::Duration;

use super::*;

fn head(status: u16, acked: bool) -> ReplyHead {
    ReplyHead {
        status,
        acked,
        retry_after: None,
        accepts_batches: None,
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        delays: vec![Duration::from_secs(1), Duration::from_secs(5)],
        max_attempts: 3,
        max_retry_after: Duration::from_secs(60),
        extra_queues: true,
    }
}

#[test]
fn parses_status_ack_and_retry_after() {
    let h = parse_head(
        b"Status: 503 Service Unavailable\r\nRetry-After: 7\r\nX-Agent-Ack: 1\r\n\r\nbody",
    )
    .unwrap();
    assert_eq!(h.status, 503);
    assert!(h.acked);
    assert_eq!(h.retry_after, Some(Duration::from_secs(7)));
    assert_eq!(h.accepts_batches, None);
}

/// `X-Agent-Accepts-Batches` (any case) gives its version; a value that is not a number none.
#[test]
fn parses_the_batch_acceptance_header() {
    let h = parse_head(b"X-Agent-Ack: 1\r\nx-agent-accepts-BATCHES:  2 \r\n\r\nok").unwrap();
    assert_eq!(h.accepts_batches, Some(2));
    assert!(h.acked);
    let h = parse_head(b"X-Agent-Accepts-Batches: yes\n\nok").unwrap();
    assert_eq!(h.accepts_batches, None);
    let h = parse_head(b"X-Agent-Accepts-Batches: 3\n\nok").unwrap();
    assert_eq!(
        h.accepts_batches,
        Some(3),
        "the version is kept; the agent compares it"
    );
}

#[test]
fn missing_status_means_200() {
    let h =
        parse_head(b"Content-type: text/html; charset=UTF-8\r\nx-agent-ack: 1\r\n\r\n").unwrap();
    assert_eq!(h, head(200, true));
    let h = parse_head(b"X-Agent-Ack: 0\n\nok").unwrap();
    assert_eq!(h, head(200, false));
}

#[test]
fn rejects_replies_without_a_head_or_with_a_bad_status() {
    assert!(parse_head(b"Fatal error: oops").is_err());
    assert!(parse_head(b"").is_err());
    assert!(parse_head(b"Status: abc\r\n\r\n").is_err());
}

#[test]
fn outcome_table() {
    let none = String::new;
    assert_eq!(
        classify_reply(&head(200, true), true, none),
        Verdict::Success
    );
    assert_eq!(
        classify_reply(&head(204, false), false, none),
        Verdict::Success
    );
    for status in [200, 202] {
        assert!(matches!(
            classify_reply(&head(status, false), true, none),
            Verdict::Transient {
                reason: "no_ack_header",
                ..
            }
        ));
    }
    for status in [408, 425, 429, 500, 502, 503, 599] {
        assert!(
            matches!(
                classify_reply(&head(status, true), true, none),
                Verdict::Transient { counts: true, .. }
            ),
            "{status}"
        );
    }
    for status in [400, 403, 404, 409, 422] {
        assert!(
            matches!(
                classify_reply(&head(status, true), true, none),
                Verdict::Permanent { .. }
            ),
            "{status}"
        );
    }
    // A refused signature is the configuration's fault: no attempt used, never dead-lettered.
    let refused = classify_reply(&head(401, false), true, none);
    assert!(
        matches!(
            refused,
            Verdict::Transient {
                reason: SIGNATURE_REJECTED,
                counts: false,
                ..
            }
        ),
        "{refused:?}"
    );
    let policy = RetryPolicy {
        delays: vec![Duration::from_secs(1)],
        max_attempts: 1,
        max_retry_after: Duration::from_secs(60),
        extra_queues: true,
    };
    assert!(matches!(
        policy.decide(&refused, 1),
        Decision::Retry {
            next_attempt: 1,
            ..
        }
    ));
    assert!(matches!(
        classify_reply(&head(302, true), true, none),
        Verdict::Transient { .. }
    ));
}

fn transient(counts: bool, retry_after: Option<Duration>) -> Verdict {
    Verdict::Transient {
        reason: "x",
        detail: String::new(),
        status: None,
        retry_after,
        counts,
    }
}

#[test]
fn retries_follow_the_schedule_then_dead_letter() {
    let p = policy();
    assert_eq!(p.decide(&Verdict::Success, 1), Decision::Ack);
    assert_eq!(
        p.decide(&transient(true, None), 1),
        Decision::Retry {
            delay: Duration::from_secs(1),
            next_attempt: 2
        }
    );
    assert_eq!(
        p.decide(&transient(true, None), 2),
        Decision::Retry {
            delay: Duration::from_secs(5),
            next_attempt: 3
        }
    );
    assert_eq!(
        p.decide(&transient(true, None), 3),
        Decision::DeadLetter {
            reason: "max_attempts"
        }
    );
    let permanent = Verdict::Permanent {
        reason: "rejected",
        detail: String::new(),
        status: Some(404),
    };
    assert_eq!(
        p.decide(&permanent, 1),
        Decision::DeadLetter { reason: "rejected" }
    );
}

#[test]
fn last_delay_repeats_and_retry_after_is_honoured_within_the_cap() {
    let p = RetryPolicy {
        max_attempts: 10,
        ..policy()
    };
    assert_eq!(p.delay_after(7), Duration::from_secs(5));
    // Retry-After: 30 rounds up to the 32 s bucket (never shorter than asked).
    let d = p.decide(&transient(true, Some(Duration::from_secs(30))), 1);
    assert_eq!(
        d,
        Decision::Retry {
            delay: Duration::from_secs(32),
            next_attempt: 2
        }
    );
    let d = p.decide(&transient(true, Some(Duration::from_secs(3600))), 1);
    assert_eq!(
        d,
        Decision::Retry {
            delay: Duration::from_secs(60),
            next_attempt: 2
        }
    );
}

#[test]
fn unreachable_fpm_does_not_use_up_attempts() {
    let p = policy();
    assert_eq!(
        p.decide(&transient(false, None), 3),
        Decision::Retry {
            delay: Duration::from_secs(5),
            next_attempt: 3
        }
    );
}

#[test]
fn retry_after_uses_a_bounded_set_of_delays() {
    let p = policy();
    let secs = |n| Duration::from_secs(n);
    assert_eq!(p.retry_after_bucket(secs(3)), secs(4));
    assert_eq!(
        p.retry_after_bucket(secs(5)),
        secs(5),
        "a scheduled delay fits exactly"
    );
    assert_eq!(
        p.retry_after_bucket(secs(33)),
        secs(60),
        "capped by max_retry_after"
    );
    let mut seen = std::collections::BTreeSet::new();
    for n in 0..10_000 {
        seen.insert(p.retry_after_bucket(Duration::from_millis(n * 7)));
    }
    assert!(seen.len() <= 8, "{seen:?}");
    let fixed = RetryPolicy {
        extra_queues: false,
        ..policy()
    };
    assert_eq!(fixed.retry_after_bucket(secs(3)), secs(5));
    assert_eq!(
        fixed.retry_after_bucket(secs(30)),
        secs(5),
        "the largest scheduled delay"
    );
}

/// Single replies and batch replies end their CGI head by one rule: the first blank line, of
/// either kind (issue #20, case 8: `parse_head` preferred a later `\r\n\r\n`).
#[test]
fn the_head_ends_at_the_first_blank_line_of_either_kind() {
    let reply = b"Status: 500\n\nStatus: 200\r\n\r\nbody";
    assert_eq!(parse_head(reply).unwrap().status, 500);
    assert_eq!(head_end(reply), Some(13));
    assert_eq!(head_end(b"Status: 200\r\n\r\nx\n\n"), Some(15));
    assert_eq!(head_end(b"Status: 200\r\n"), None);
}

#[test]
fn an_html_page_is_quoted_by_its_title_and_plain_text_as_it_is() {
    let page = "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"UTF-8\" />\n\
        <TITLE>\n  Environment variable not found: &quot;AGENT_SIGNING_SECRET&quot;. (500 Internal Server Error)\n</title>\
        <style>body { color: red }</style></head><body>…</body></html>";
    assert_eq!(
        reply_text(page),
        "HTML page: Environment variable not found: \"AGENT_SIGNING_SECRET\". (500 Internal Server Error)"
    );
    assert_eq!(
        reply_text("  <html><body>Oops</body></html>"),
        "HTML page without a title"
    );
    assert_eq!(
        reply_text("<!doctype html><title>An Error Occurred: Internal Server Error</title>"),
        "HTML page: An Error Occurred: Internal Server Error"
    );
    // The packages' own answers, and any other text, pass unchanged.
    for text in [
        "amqp-agent: signing secret not configured\n",
        "LogicException: <html> in a message",
        "",
        "é<title>x</title>",
    ] {
        assert_eq!(reply_text(text), text);
    }
}

/// The packages' own configuration answer (`503 amqp-agent: …`) pauses like a 401; any other
/// 503, or one with Retry-After, is an ordinary retry.
#[test]
fn a_package_configuration_fault_uses_no_attempt() {
    let none = || String::new();
    let head = |retry| ReplyHead {
        status: 503,
        acked: false,
        retry_after: retry,
        accepts_batches: None,
    };
    let reply = b"Status: 503\r\nContent-Type: text/plain\r\n\r\namqp-agent: signing secret not configured\n";
    let v = classify_full_reply(&head(None), reply, true, none);
    assert!(
        matches!(
            v,
            Verdict::Transient {
                reason: RECEIVER_MISCONFIGURED,
                counts: false,
                ..
            }
        ),
        "{v:?}"
    );
    assert!(pauses_subject(&v));
    let other = b"Status: 503\r\n\r\nbusy\n";
    let v = classify_full_reply(&head(None), other, true, none);
    assert!(matches!(
        v,
        Verdict::Transient {
            reason: "http_status",
            counts: true,
            ..
        }
    ));
    assert!(!pauses_subject(&v));
    let v = classify_full_reply(&head(Some(Duration::from_secs(5))), reply, true, none);
    assert!(matches!(v, Verdict::Transient { counts: true, .. }));
}
