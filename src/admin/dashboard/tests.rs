use std::collections::BTreeMap;

use super::pages;
use crate::agent::{Status, SubjectStatus};
use crate::fpm_status::{BusyChild, ChildLast, StatusState};
use crate::upstreams::UpstreamStatus;

const HOSTILE: [&str; 3] = [
    "<script>alert(1)</script>",
    "\"><img src=x onerror=alert(2)>",
    "'><svg onload=alert(3)>",
];

fn subject(queue: &str) -> SubjectStatus {
    SubjectStatus {
        queue: queue.to_owned(),
        target_pool_size: 2,
        pool_mode: "fixed",
        min_pool_size: 1,
        max_pool_size: 8,
        queue_depth: None,
        idle: 2,
        connection: "connected",
        node: None,
        rate_limit: Some(HOSTILE[1].to_owned()),
        long_wait: false,
        pinned: false,
        batch_auto: None,
        runtime_ms_last_minute: None,
        wait_s_last_minute: None,
        body_bytes_held: 0,
        body_bytes_share: 0,
        state: "paused",
        operator_paused: true,
        paused_until: Some("2030-01-01T00:00:00Z".to_owned()),
        paused_until_unix: Some(1_893_456_000),
        stats: crate::stats::SubjectStats::default().snapshot(),
    }
}

fn status(text: &str) -> Status {
    status_named(text, text)
}

/// Subject names are `event` and `command` (the config allows no other): `name` may be one.
fn status_named(name: &str, text: &str) -> Status {
    let mut fpm = StatusState::empty(text.to_owned(), "ok");
    fpm.error = Some(text.to_owned());
    fpm.busy = vec![BusyChild {
        pid: 7,
        duration_ms: 60_000,
        uri: text.to_owned(),
        state: text.to_owned(),
    }];
    fpm.children = vec![ChildLast {
        pid: 7,
        requests: 1,
        last_request_memory: 2048,
        last_request_cpu: 0.5,
    }];
    let upstream = UpstreamStatus {
        address: text.to_owned(),
        health: "up",
        down_for_ms: None,
        in_flight: 1,
        waiting: 0,
        idle_connections: 0,
        capacity: Some(4),
        contended: false,
        requests: 3,
        refused: 0,
        backlog_waits: 0,
        fpm: fpm.clone(),
    };
    Status {
        version: "test",
        uptime_seconds: 5,
        ready: false,
        subjects: BTreeMap::from([(name.to_owned(), subject(text))]),
        fpm,
        upstreams: vec![upstream],
    }
}

fn pages_of(status: &Status) -> [String; 5] {
    // The Dead letters page shows the filter of its address in its form.
    let text = status.fpm.address.clone();
    let query = pages::DeadPageQuery {
        subject: Some(text.clone()),
        reason: Some(text.clone()),
        status: Some(text.clone()),
        kind: Some(text.clone()),
        older_than: Some(text.clone()),
        grep: Some(text),
    };
    [
        pages::overview(status, |_| None),
        pages::metrics(status, 1024),
        pages::fpm(status, 1000),
        pages::actions(status),
        pages::dead_letters(status, &query),
    ]
}

#[test]
fn hostile_text_is_escaped_on_every_page() {
    for text in HOSTILE {
        for html in pages_of(&status(text)) {
            for needle in ["<script>alert", "<img", "<svg", "onerror=alert(2)>"] {
                assert!(!html.contains(needle), "{needle} unescaped in\n{html}");
            }
            assert!(
                html.contains("&lt;script&gt;")
                    || html.contains("&lt;img")
                    || html.contains("&lt;svg"),
                "the hostile text shows as text"
            );
            // The only scripts are the two assets; no inline script, no style attribute.
            assert_eq!(html.matches("<script").count(), 2, "{html}");
            // In real markup (escaped text has no `<`): no inline handler, no style attribute.
            for tag in html.split('<').skip(1).filter_map(|t| t.split('>').next()) {
                // Attribute names only: drop the quoted values (escaped text).
                let names: String = tag.split('"').step_by(2).collect();
                assert!(
                    !names.contains(" on") && !names.contains(" style"),
                    "<{tag}>"
                );
            }
        }
    }
}

#[test]
fn a_long_line_is_cut_and_says_so() {
    let long = "x".repeat(1 << 20);
    let [overview, metrics, fpm, actions, dead] = pages_of(&status_named("event", &long));
    for html in [&overview, &metrics, &fpm, &actions, &dead] {
        assert!(html.len() < 64 * 1024, "{} bytes", html.len());
    }
    // The queue name on the overview, the URI, address and error on the FPM page.
    assert!(overview.contains("… (1048576 bytes)"));
    assert_eq!(fpm.matches("… (1048576 bytes)").count(), 4, "{fpm}");
    // The five filter fields of the Dead letters page.
    assert_eq!(dead.matches("… (1048576 bytes)").count(), 5, "{dead}");
    // A cut never splits a character.
    let wide = "é".repeat(1000);
    assert!(pages::shown(&wide).starts_with(&"é".repeat(150)));
}

#[test]
fn invalid_utf8_arrives_replaced_and_renders_as_text() {
    let text = String::from_utf8_lossy(b"bad \xff\xfe <b>bytes</b>").into_owned();
    let html = pages::overview(&status(&text), |_| None);
    assert!(
        html.contains("bad \u{fffd}\u{fffd} &lt;b&gt;bytes&lt;/b&gt;"),
        "{html}"
    );
}

#[test]
fn a_timed_pause_shows_until_when() {
    let s = subject("q");
    assert_eq!(pages::state_text(&s), "paused until 2030-01-01T00:00:00Z");
    let row = pages::row(&s, None);
    assert!(row.contains(&("state", "paused until 2030-01-01T00:00:00Z".to_owned())));
}

#[test]
fn slow_requests_are_marked() {
    let html = pages::fpm(&status("u"), 1000);
    assert!(html.contains("data-slow=\"true\""), "{html}");
    assert!(html.contains("<span class=\"slow\">slow</span>"), "{html}");
    let html = pages::fpm(&status("u"), 120_000);
    assert!(!html.contains("data-slow=\"true\""), "{html}");
}
