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

mod common;

use std::time::Duration;

use common::procs::{AgentProcess, http};
use common::{TestCtx, header_str};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LONG: Duration = Duration::from_secs(60);

/// A minimal AMQP 0-9-1 publisher: PLAIN login as guest, one channel in confirm mode.
struct RawPublisher {
    stream: TcpStream,
    frame_max: u32,
}

/// Appends a short string.
fn short(out: &mut Vec<u8>, s: &str) {
    out.push(u8::try_from(s.len()).unwrap());
    out.extend_from_slice(s.as_bytes());
}

impl RawPublisher {
    async fn connect() -> Self {
        let stream = TcpStream::connect("127.0.0.1:5672").await.unwrap();
        let mut p = Self {
            stream,
            frame_max: 0,
        };
        p.stream.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
        p.expect_method(0, 10, 10).await; // connection.start
        let mut start_ok = vec![0, 0, 0, 0]; // client-properties: empty table
        short(&mut start_ok, "PLAIN");
        let response = b"\0guest\0guest";
        start_ok.extend_from_slice(&u32::try_from(response.len()).unwrap().to_be_bytes());
        start_ok.extend_from_slice(response);
        short(&mut start_ok, "en_US");
        p.send_method(0, 10, 11, &start_ok).await;
        let tune = p.expect_method(0, 10, 30).await;
        p.frame_max = u32::from_be_bytes(tune[2..6].try_into().unwrap());
        let mut tune_ok = tune[..6].to_vec();
        tune_ok.extend_from_slice(&[0, 0]); // no heartbeats
        p.send_method(0, 10, 31, &tune_ok).await;
        let mut open = Vec::new();
        short(&mut open, "/");
        short(&mut open, "");
        open.push(0);
        p.send_method(0, 10, 40, &open).await;
        p.expect_method(0, 10, 41).await;
        p.send_method(1, 20, 10, &[0]).await; // channel.open
        p.expect_method(1, 20, 11).await;
        p.send_method(1, 85, 10, &[0]).await; // confirm.select
        p.expect_method(1, 85, 11).await;
        p
    }

    async fn send_frame(&mut self, kind: u8, channel: u16, payload: &[u8]) {
        let mut frame = vec![kind];
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(0xCE);
        self.stream.write_all(&frame).await.unwrap();
    }

    async fn send_method(&mut self, channel: u16, class: u16, method: u16, args: &[u8]) {
        let mut payload = class.to_be_bytes().to_vec();
        payload.extend_from_slice(&method.to_be_bytes());
        payload.extend_from_slice(args);
        self.send_frame(1, channel, &payload).await;
    }

    /// Reads frames until a method frame arrives; it must be `class.method` on `channel`.
    async fn expect_method(&mut self, channel: u16, class: u16, method: u16) -> Vec<u8> {
        loop {
            let mut head = [0u8; 7];
            self.stream.read_exact(&mut head).await.unwrap();
            let size = u32::from_be_bytes(head[3..7].try_into().unwrap()) as usize;
            let mut payload = vec![0u8; size + 1];
            self.stream.read_exact(&mut payload).await.unwrap();
            payload.pop();
            if head[0] != 1 {
                continue; // heartbeat
            }
            let got = (
                u16::from_be_bytes([head[1], head[2]]),
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            );
            assert_eq!(
                got,
                (channel, class, method),
                "unexpected method from RabbitMQ: {:?}",
                String::from_utf8_lossy(&payload)
            );
            return payload[4..].to_vec();
        }
    }

    /// Publishes to `queue` with `headers` (an encoded field table) and `message_id`, and waits
    /// for the broker's confirm.
    async fn publish(&mut self, queue: &str, headers: &[u8], message_id: &str, body: &[u8]) {
        let mut publish = vec![0, 0];
        short(&mut publish, "");
        short(&mut publish, queue);
        publish.push(0);
        self.send_method(1, 60, 40, &publish).await;
        let header = content_header(headers, message_id, body.len());
        assert!(
            header.len() + 8 <= self.frame_max as usize,
            "content header of {} bytes over frame_max {}",
            header.len() + 8,
            self.frame_max
        );
        self.send_frame(2, 1, &header).await;
        self.send_frame(3, 1, body).await;
        self.expect_method(1, 60, 80).await; // basic.ack
    }
}

/// The payload of a content-header frame: headers, delivery mode 2, message id.
fn content_header(headers: &[u8], message_id: &str, body_len: usize) -> Vec<u8> {
    let mut out = 60u16.to_be_bytes().to_vec();
    out.extend_from_slice(&[0, 0]); // weight
    out.extend_from_slice(&(body_len as u64).to_be_bytes());
    out.extend_from_slice(&((1u16 << 13) | (1 << 12) | (1 << 7)).to_be_bytes());
    out.extend_from_slice(headers);
    out.push(2);
    short(&mut out, message_id);
    out
}

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
