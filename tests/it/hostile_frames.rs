//! Hostile frames: messages whose headers nest thousands of levels deep, up to as deep as the
//! negotiated `frame_max` allows, against the agent binary (a crash is visible as an exit).
//!
//! For each depth: the agent stays up, the message lands in `<queue>.dead` with reason
//! `headers_unencodable` (without the deep header, with the cause in `x-agent-last-error`), and
//! the next message is handled. The same holds for flat headers that fill `frame_max`, whose
//! dead-letter copy must still fit in one frame.
//!
//! The hostile messages are published over a raw AMQP connection written here. lapin cannot
//! send them: its encoder recurses once per level too (the agent never needs to encode more
//! than the parser kept), and it would overflow in this test process before the agent saw
//! anything. Writing the frame by hand also lets the test fill `frame_max` to the byte.

use crate::common;

use std::time::Duration;

use common::procs::{AgentProcess, http};
use common::raw::{RawPublisher, content_header, short};
use common::{TestCtx, header_str};

const LONG: Duration = Duration::from_secs(60);

/// A headers table `{"deep": <levels arrays nested in each other>, "kept": "yes"}`, built level
/// by level without recursion (each level is `'A'`, its length, the next level).
fn deep_headers(levels: usize) -> Vec<u8> {
    let mut content = Vec::with_capacity(levels * 5 + 32);
    short(&mut content, "deep");
    for level in 1..=levels {
        content.push(b'A');
        let inner = u32::try_from((levels - level) * 5).unwrap();
        content.extend_from_slice(&inner.to_be_bytes());
    }
    with_kept(content)
}

/// A flat headers table of `entries` 100-byte strings, then `"kept": "yes"`.
fn wide_headers(entries: usize) -> Vec<u8> {
    let mut content = Vec::new();
    for i in 0..entries {
        short(&mut content, &format!("h{i:05}"));
        content.extend_from_slice(&[b'S', 0, 0, 0, 100]);
        content.extend_from_slice(&[b'x'; 100]);
    }
    with_kept(content)
}

/// The table of the entries in `content` followed by `"kept": "yes"`.
fn with_kept(mut content: Vec<u8>) -> Vec<u8> {
    short(&mut content, "kept");
    content.extend_from_slice(&[b'S', 0, 0, 0, 3]);
    content.extend_from_slice(b"yes");
    let mut table = u32::try_from(content.len()).unwrap().to_be_bytes().to_vec();
    table.extend_from_slice(&content);
    table
}

/// The deepest `deep_headers` whose content-header frame fits `frame_max`.
fn deepest_for(frame_max: u32, message_id: &str) -> usize {
    let overhead = content_header(&deep_headers(0), message_id, 0).len() + 8;
    (frame_max as usize - overhead) / 5
}

fn assert_alive(agent: &mut AgentProcess) {
    if let Some(status) = agent.child.try_wait().unwrap() {
        let log = agent.log_text();
        let tail = &log[log.len().saturating_sub(3000)..];
        panic!("the agent exited ({status}); log tail:\n{tail}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_headers_are_dead_lettered_and_the_agent_stays_up() {
    let ctx = TestCtx::new("hostile").await;
    ctx.declare().await;
    let queue = ctx.queue("event");
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let mut agent = AgentProcess::start(&ctx.write_config(), &log);
    ctx.publish_json("event", "warm-up", "ok").await;
    ctx.wait_records(1, LONG).await;

    let mut raw = RawPublisher::connect().await;
    let full = deepest_for(raw.frame_max, "deep-max");
    println!(
        "frame_max {} allows headers nested {full} levels deep",
        raw.frame_max
    );
    assert!(
        full > 10_000,
        "frame_max {} is unexpectedly small",
        raw.frame_max
    );
    let wide = (raw.frame_max as usize - 200) / 112;
    let depths = [
        ("deep-2000", 2_000),
        ("deep-10000", 10_000),
        ("deep-max", full),
        ("wide-max", 0),
    ];
    for (n, (id, levels)) in depths.into_iter().enumerate() {
        let headers = if levels == 0 {
            wide_headers(wide)
        } else {
            deep_headers(levels)
        };
        raw.publish(&queue, &headers, id, br#"{"id":"hostile"}"#)
            .await;

        let dead = ctx.dead_queue("event");
        let (c, d) = (&ctx, &dead);
        common::eventually(LONG, &format!("{id} dead-lettered"), || {
            assert_alive(&mut agent);
            async move { c.queue_len(d).await == 1 }
        })
        .await;
        let copies = ctx.drain_dead("event").await;
        assert_eq!(copies.len(), 1);
        let (props, body) = &copies[0];
        assert_eq!(props.message_id().as_ref().unwrap().as_str(), id);
        assert_eq!(body, br#"{"id":"hostile"}"#);
        assert_eq!(
            header_str(props, "x-agent-reason").as_deref(),
            Some("headers_unencodable")
        );
        let cause = header_str(props, "x-agent-last-error").unwrap();
        let copy_headers = props.headers().as_ref().unwrap().inner();
        if levels == 0 {
            // Too large for PHP, and its copy would not fit in one frame with the agent's
            // headers added: the largest headers are left out.
            assert!(cause.contains("max_headers_bytes"), "{cause}");
            assert!(cause.contains("left out of this copy: h"), "{cause}");
            assert!(
                copy_headers.len() < wide,
                "{} headers copied",
                copy_headers.len()
            );
        } else {
            assert!(cause.contains("max_header_depth"), "{cause}");
            assert!(cause.contains("left out of this copy: deep"), "{cause}");
            assert!(
                !copy_headers.contains_key("deep"),
                "the deep header is not copied"
            );
        }
        assert_eq!(header_str(props, "kept").as_deref(), Some("yes"));

        assert_alive(&mut agent);
        let ready = http(ctx.admin_port, "GET", "/readyz", None).await;
        assert_eq!(ready.map(|r| r.0), Some(200), "agent ready after {id}");
        let next = format!("after-{id}");
        ctx.publish_json("event", &next, "ok").await;
        ctx.wait_records(n + 2, LONG).await;
        assert!(ctx.records_by_id().contains_key(&next), "{next} handled");
        println!(
            "{id}: {levels} levels, {} header bytes: dead-lettered, agent up",
            headers.len()
        );
    }
    assert!(
        !agent.log_text().contains("overflowed its stack"),
        "no thread overflowed"
    );
}
