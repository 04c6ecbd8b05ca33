//! At the byte edges: messages that RabbitMQ accepts but that a client library would clean or
//! refuse, published frame by frame (`common::raw`), and params at FastCGI's record limits.
//! Each must be handled or dead-lettered with a reason, never cost a connection, and never
//! stall the messages behind it.

use crate::common;

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};

use common::raw::{RawPublisher, entry, flag, long_string, short_bytes, table};
use common::{TestCtx, header_str};

const WAIT: Duration = Duration::from_secs(60);

/// A JSON body for the recorder: `{"id": id, "behave": behave}`.
fn body(id: &str, behave: &str) -> Vec<u8> {
    serde_json::json!({"id": id, "behave": behave})
        .to_string()
        .into_bytes()
}

/// Waits until every message of `ids` was recorded by PHP.
async fn wait_handled(ctx: &TestCtx, ids: &[&str]) {
    common::eventually(WAIT, &format!("{ids:?} handled"), || async {
        let records = ctx.records_by_id();
        ids.iter().all(|id| records.contains_key(*id))
    })
    .await;
}

/// Takes `n` dead letters (waiting for them) and returns them.
async fn wait_dead(ctx: &TestCtx, subject: &str, n: usize) -> Vec<(BasicProperties, Vec<u8>)> {
    let mut dead = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while dead.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} dead letters",
            dead.len()
        );
        let more = ctx.drain_dead(subject).await;
        if more.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        dead.extend(more);
    }
    dead
}

fn id_of(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// Raw properties: flags, then message_id (if given) and the rest in spec order.
fn props_with(
    message_id: &[u8],
    extra_flag: u16,
    before_id: &[u8],
    after_id: &[u8],
) -> (u16, Vec<u8>) {
    let mut out = before_id.to_vec();
    short_bytes(&mut out, message_id);
    out.extend_from_slice(after_id);
    (flag::MESSAGE_ID | extra_flag, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_that_are_not_utf8_never_stall_the_subject() {
    let ctx = TestCtx::new("not-utf8").await;
    ctx.declare().await;
    let queue = ctx.queue("event");
    let mut raw = RawPublisher::connect().await;
    // message_id ff fe.
    let (flags, props) = props_with(&[0xff, 0xfe], 0, &[], &[]);
    raw.publish_raw(&queue, flags, &props, &body("bad-id", "ok"))
        .await
        .unwrap();
    // A Latin-1 `type` (comes after message_id and timestamp in the list).
    let mut after = Vec::new();
    short_bytes(&mut after, b"caf\xe9");
    let (flags, props) = props_with(b"bad-type", flag::TYPE, &[], &after);
    raw.publish_raw(&queue, flags, &props, &body("bad-type", "ok"))
        .await
        .unwrap();
    // A Latin-1 header name.
    let headers = table(&[entry(b"k\xe9y", b'S', &long_string(b"v"))]);
    let (flags, props) = props_with(b"bad-header", flag::HEADERS, &headers, &[]);
    raw.publish_raw(&queue, flags, &props, &body("bad-header", "ok"))
        .await
        .unwrap();
    // A Latin-1 `app_id`: PHP never sees it, so the message is handled.
    let mut after = Vec::new();
    short_bytes(&mut after, b"\xe9app");
    let (flags, props) = props_with(b"bad-app-id", flag::APP_ID, &[], &after);
    raw.publish_raw(&queue, flags, &props, &body("bad-app-id", "ok"))
        .await
        .unwrap();
    for i in 0..3 {
        ctx.publish_json("event", &format!("after-{i}"), "ok").await;
    }

    let agent = ctx.start_agent().await;
    wait_handled(&ctx, &["after-0", "after-1", "after-2", "bad-app-id"]).await;
    let dead = wait_dead(&ctx, "event", 3).await;
    let mut ids: Vec<String> = dead.iter().map(|(_, b)| id_of(b)).collect();
    ids.sort();
    assert_eq!(ids, ["bad-header", "bad-id", "bad-type"]);
    for (props, body) in &dead {
        let id = id_of(body);
        assert_eq!(
            header_str(props, "x-agent-reason").as_deref(),
            Some("malformed_properties"),
            "{id}"
        );
        let error = header_str(props, "x-agent-last-error").unwrap();
        assert!(error.contains("not UTF-8"), "{id}: {error}");
        let h = props.headers().as_ref().unwrap().inner();
        match id.as_str() {
            "bad-id" => {
                assert!(error.contains("fffe"), "{error}");
                let Some(AMQPValue::FieldTable(raw)) = h.get("x-agent-not-utf8") else {
                    panic!("bad-id: the original bytes are kept: {h:?}")
                };
                assert_eq!(
                    raw.inner().get("message_id"),
                    Some(&AMQPValue::LongString(LongString::from(vec![0xff, 0xfe])))
                );
            }
            "bad-type" => {
                let Some(AMQPValue::FieldTable(raw)) = h.get("x-agent-not-utf8") else {
                    panic!("bad-type: the original bytes are kept: {h:?}")
                };
                assert_eq!(
                    raw.inner().get("type"),
                    Some(&AMQPValue::LongString(LongString::from(&b"caf\xe9"[..])))
                );
                assert_eq!(props.message_id().as_ref().unwrap().as_str(), "bad-type");
            }
            _ => assert!(h.contains_key("x-agent-not-utf8-headers"), "{h:?}"),
        }
    }
    assert!(
        !ctx.records_by_id().contains_key("bad-id"),
        "PHP never saw it"
    );
    let stats = agent.stats()["event"];
    assert_eq!(
        stats.consumer_starts, 1,
        "no connection was lost to a message"
    );
    assert_eq!(ctx.queue_len(&queue).await, 0);
    agent.stop().await;
}

/// The header entry the proxy below corrupts: `corrupt-me`, a long string.
const CORRUPT_ME: &[u8] = b"\x0acorrupt-meS";

/// Turns the type of the `corrupt-me` header into `Z`, a field type no parser knows: a content
/// header that the broker would never deliver, and that the agent's AMQP client cannot parse.
fn corrupt(payload: &mut [u8]) -> bool {
    let Some(at) = payload
        .windows(CORRUPT_ME.len())
        .position(|w| w == CORRUPT_ME)
    else {
        return false;
    };
    payload[at + CORRUPT_ME.len() - 1] = b'Z';
    true
}

/// #20: a content header that cannot be parsed (here: corrupted on its way to the agent, as no
/// frame RabbitMQ accepts is one) is dead-lettered as `malformed_properties` with its property
/// bytes, and costs no connection: the messages behind it are handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_header_that_cannot_be_parsed_is_dead_lettered_with_its_bytes() {
    let mut ctx = TestCtx::new("unparsed").await;
    let proxy = common::procs::TcpProxy::rewriting("127.0.0.1:5672", corrupt).await;
    ctx.amqp_url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    ctx.declare().await;
    let mut headers = FieldTable::default();
    headers.insert("corrupt-me".into(), AMQPValue::LongString("yes".into()));
    let props = BasicProperties::default()
        .with_message_id("unparsed".into())
        .with_content_type("application/json".into())
        .with_headers(headers);
    let mut expected = lapin::protocol::basic::gen_properties(&props)(Vec::new().into())
        .unwrap()
        .write;
    assert!(corrupt(&mut expected));
    ctx.publish("event", &body("unparsed", "ok"), props).await;
    for i in 0..3 {
        ctx.publish_json("event", &format!("after-{i}"), "ok").await;
    }

    let agent = ctx.start_agent().await;
    wait_handled(&ctx, &["after-0", "after-1", "after-2"]).await;
    let dead = wait_dead(&ctx, "event", 1).await;
    let (props, body) = &dead[0];
    assert_eq!(id_of(body), "unparsed", "the body is kept");
    assert_eq!(
        header_str(props, "x-agent-reason").as_deref(),
        Some("malformed_properties")
    );
    let error = header_str(props, "x-agent-last-error").unwrap();
    assert!(error.contains("could not be parsed"), "{error}");
    let h = props.headers().as_ref().unwrap().inner();
    assert_eq!(
        h.get("x-agent-raw-properties"),
        Some(&AMQPValue::ByteArray(expected.into())),
        "the property bytes as received"
    );
    assert!(
        !h.keys().any(|k| k.as_str().starts_with('\u{FFFD}')),
        "the client's marker is not copied: {h:?}"
    );
    assert!(proxy.rewrites() >= 1, "the proxy corrupted the header");
    assert!(
        !ctx.records_by_id().contains_key("unparsed"),
        "PHP never saw it"
    );
    assert_eq!(
        agent.stats()["event"].consumer_starts,
        1,
        "no connection was lost to the message"
    );
    assert_eq!(ctx.queue_len(&ctx.queue("event")).await, 0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_header_of_frame_max_payload_is_handled() {
    let ctx = TestCtx::new("frame-fudge").await;
    ctx.declare().await;
    let queue = ctx.queue("event");
    let mut raw = RawPublisher::connect().await;
    let frame_max = raw.frame_max as usize;
    // Payloads of frame_max - 4 and frame_max (RabbitMQ accepts up to frame_max + 8 in all):
    // the frame is 4 and 8 bytes over what the original lapin took.
    for (id, payload) in [("fudge-4", frame_max - 4), ("fudge-0", frame_max)] {
        let mut after = Vec::new();
        short_bytes(&mut after, id.as_bytes());
        // content header payload: 12 (class, weight, size) + 2 (flags) + headers + id
        let fixed = 12 + 2 + 4 + entry(b"pad", b'S', &long_string(b"")).len() + after.len();
        let pad = vec![b'x'; payload - fixed];
        let headers = table(&[entry(b"pad", b'S', &long_string(&pad))]);
        let mut props = headers.clone();
        props.extend_from_slice(&after);
        raw.publish_raw(
            &queue,
            flag::HEADERS | flag::MESSAGE_ID,
            &props,
            &body(id, "ok"),
        )
        .await
        .unwrap_or_else(|e| panic!("{id}: broker refused: {e}"));
    }
    ctx.publish_json("event", "behind", "ok").await;
    let agent = ctx.start_agent().await;
    wait_handled(&ctx, &["behind"]).await;
    // 131 KB of headers is over limits.max_headers_bytes: dead-lettered with that reason.
    let dead = wait_dead(&ctx, "event", 2).await;
    for (props, _) in &dead {
        assert_eq!(
            header_str(props, "x-agent-reason").as_deref(),
            Some("headers_unencodable")
        );
    }
    assert_eq!(agent.stats()["event"].consumer_starts, 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_of_any_size_up_to_the_limit_reach_php_also_on_retries() {
    let mut ctx = TestCtx::new("params-size").await;
    ctx.pool_size = 2;
    let agent = ctx.start_agent().await;
    let sizes = [3_000usize, 4_000, 4_090, 8_192, 30_000, 64_000];
    for size in sizes {
        let mut headers = FieldTable::default();
        headers.insert(
            "big".into(),
            AMQPValue::LongString(LongString::from(vec![b'h'; size])),
        );
        let id = format!("size-{size}");
        // The first attempt fails: the retry copy adds the agent's headers to the request.
        let props = BasicProperties::default()
            .with_message_id(id.as_str().into())
            .with_headers(headers);
        ctx.publish("event", &body(&id, "fail-until:2"), props)
            .await;
    }
    common::eventually(WAIT, "every size handled on its second attempt", || async {
        let records = ctx.records_by_id();
        sizes.iter().all(|s| {
            records
                .get(&format!("size-{s}"))
                .is_some_and(|r| r.len() == 2)
        })
    })
    .await;
    for size in sizes {
        let records = &ctx.records_by_id()[&format!("size-{size}")];
        for record in records {
            let json = record["params"]["HTTP_X_AGENT_HEADERS"].as_str().unwrap();
            let headers: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(headers["big"].as_str().unwrap().len(), size);
            assert_eq!(record["sig_ok"], true, "size {size}");
        }
    }
    assert!(ctx.drain_dead("event").await.is_empty());
    agent.stop().await;
}

/// Creates (once) a broker user other than guest, as a publisher with its own user would have.
fn publisher_user() -> &'static str {
    const USER: &str = "amqp-agent-test-publisher";
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let run = |args: &[&str]| {
            let out = std::process::Command::new("rabbitmqctl")
                .args(args)
                .output()
                .expect("rabbitmqctl runs");
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        let err = run(&["add_user", USER, USER]);
        assert!(err.is_empty() || err.contains("already exists"), "{err}");
        run(&["set_permissions", "-p", "/", USER, ".*", ".*", ".*"]);
    });
    USER
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_id_of_another_broker_user_is_retried_once_not_for_ever() {
    let ctx = TestCtx::new("user-id").await;
    let user = publisher_user();
    let agent = ctx.start_agent().await;
    let url = format!("amqp://{user}:{user}@127.0.0.1:5672/%2f");
    let (_conn, channel) = common::confirm_channel(&url).await;
    let props = BasicProperties::default()
        .with_message_id("uid".into())
        .with_user_id(user.into());
    channel
        .basic_publish(
            "".into(),
            ctx.queue("event").as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            &body("uid", "fail-until:2"),
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    ctx.publish_json("event", "behind", "ok").await;
    common::eventually(WAIT, "uid handled on attempt 2", || async {
        ctx.records_by_id().get("uid").is_some_and(|r| r.len() == 2)
    })
    .await;
    wait_handled(&ctx, &["behind"]).await;
    let records = &ctx.records_by_id()["uid"];
    let attempts: Vec<&str> = records
        .iter()
        .map(|r| r["params"]["HTTP_X_AGENT_ATTEMPT"].as_str().unwrap())
        .collect();
    assert_eq!(attempts, ["1", "2"]);
    let headers: serde_json::Value = serde_json::from_str(
        records[1]["params"]["HTTP_X_AGENT_HEADERS"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        headers["x-agent-user-id"], user,
        "the original user_id travels as a header"
    );
    let stats = agent.stats()["event"];
    assert_eq!(stats.consumer_starts, 1, "no restart: {stats:?}");
    assert_eq!(stats.retried, 1);
    agent.stop().await;
}

/// A header table of one array of `n` zero LongLongInts: 9 bytes each on the wire, 2 in JSON,
/// so a content header near `frame_max` still encodes to JSON within the limits.
fn zeros(n: usize) -> Vec<u8> {
    let mut items = Vec::with_capacity(n * 9);
    for _ in 0..n {
        items.push(b'l');
        items.extend_from_slice(&0i64.to_be_bytes());
    }
    let mut value = u32::try_from(items.len()).unwrap().to_be_bytes().to_vec();
    value.extend_from_slice(&items);
    table(&[entry(b"nums", b'A', &value)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_copy_at_the_frame_limit_never_closes_the_connection() {
    let mut ctx = TestCtx::new("copy-fit").await;
    ctx.set("limits.max_headers_bytes", 65_500);
    ctx.declare().await;
    let queue = ctx.queue("event");
    let mut raw = RawPublisher::connect().await;
    let frame_max = raw.frame_max as usize;
    // Content headers 40 and 3,000 bytes under frame_max: the full retry copy (the agent's
    // headers, the trace, room for x-death) is over it; the second leaves room for a lean one.
    for (id, room) in [("tight-40", 40usize), ("tight-3000", 3_000)] {
        let mut after = Vec::new();
        short_bytes(&mut after, id.as_bytes());
        let fixed = 8 + 12 + 2 + zeros(0).len() + after.len();
        let n = (frame_max - room - fixed) / 9;
        let mut props = zeros(n);
        props.extend_from_slice(&after);
        raw.publish_raw(
            &queue,
            flag::HEADERS | flag::MESSAGE_ID,
            &props,
            &body(id, "fail-until:2"),
        )
        .await
        .unwrap();
    }
    ctx.publish_json("event", "behind", "ok").await;
    let agent = ctx.start_agent().await;
    wait_handled(&ctx, &["behind", "tight-40", "tight-3000"]).await;
    // Each ran once, failed, and was either retried (a copy that fits) or dead-lettered by a
    // copy that fits; none ran again at attempt 1.
    let mut settled = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut dead = Vec::new();
    while settled < 2 {
        assert!(tokio::time::Instant::now() < deadline, "both settled");
        dead.extend(ctx.drain_dead("event").await);
        let records = ctx.records_by_id();
        settled = ["tight-40", "tight-3000"]
            .iter()
            .filter(|id| {
                let runs = records.get(**id).map_or(0, Vec::len);
                runs == 2 || dead.iter().any(|(_, b)| id_of(b) == **id)
            })
            .count();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let records = ctx.records_by_id();
    for id in ["tight-40", "tight-3000"] {
        let attempts: Vec<&str> = records[id]
            .iter()
            .map(|r| r["params"]["HTTP_X_AGENT_ATTEMPT"].as_str().unwrap())
            .collect();
        assert!(
            attempts == ["1"] || attempts == ["1", "2"],
            "{id}: attempts {attempts:?}"
        );
    }
    assert_eq!(
        records["tight-3000"].len(),
        2,
        "3,000 bytes leave room for a lean retry copy"
    );
    for (props, body) in &dead {
        assert_eq!(
            header_str(props, "x-agent-reason").as_deref(),
            Some("copy_refused"),
            "{}",
            id_of(body)
        );
    }
    assert_eq!(
        agent.stats()["event"].consumer_starts,
        1,
        "no connection lost"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_killed_before_replying_on_a_kept_alive_connection_runs_once_per_attempt() {
    let mut ctx = TestCtx::new("once-per-attempt").await;
    // One worker: the second message goes out on the connection the first one kept alive.
    ctx.pool_size = 1;
    let agent = ctx.start_agent().await;
    ctx.publish_json("event", "warm", "ok").await;
    wait_handled(&ctx, &["warm"]).await;
    ctx.publish_json("event", "killed", "kill-silently").await;
    let dead = wait_dead(&ctx, "event", 1).await;
    assert_eq!(id_of(&dead[0].1), "killed");
    assert_eq!(
        header_str(&dead[0].0, "x-agent-reason").as_deref(),
        Some("max_attempts")
    );
    let attempts: Vec<String> = ctx.records_by_id()["killed"]
        .iter()
        .map(|r| {
            r["params"]["HTTP_X_AGENT_ATTEMPT"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(attempts, ["1", "2", "3"], "one run per attempt");
    agent.stop().await;
}

/// The property list of one generated case: flags and the encoded values, in spec order.
struct Case {
    name: String,
    flags: u16,
    props: Vec<u8>,
    body: Vec<u8>,
    /// PHP should see it (else it is dead-lettered with a reason).
    handled: bool,
}

/// Every property with empty, maximal (255 bytes), odd and non-UTF-8 values, and every
/// field-table value type, each as the only odd thing of a message whose message id names it.
fn generated_cases() -> Vec<Case> {
    // (flag, name, whether PHP reads it: a non-UTF-8 value is then dead-lettered)
    let shorts: [(u16, &str, bool); 9] = [
        (flag::CONTENT_TYPE, "content_type", true),
        (flag::CONTENT_ENCODING, "content_encoding", false),
        (flag::CORRELATION_ID, "correlation_id", true),
        (flag::REPLY_TO, "reply_to", false),
        (flag::EXPIRATION, "expiration", false),
        (flag::TYPE, "type", true),
        (flag::APP_ID, "app_id", false),
        (flag::CLUSTER_ID, "cluster_id", false),
        (flag::USER_ID, "user_id", false),
    ];
    let values: [(&str, Vec<u8>, bool); 5] = [
        ("empty", Vec::new(), true),
        ("max", vec![b'a'; 255], true),
        ("controls", b"a\r\nb\0c\x1b[31m".to_vec(), true),
        ("utf8", "caf\u{e9} \u{1F600}".as_bytes().to_vec(), true),
        ("latin1", b"caf\xe9".to_vec(), false),
    ];
    let mut cases = Vec::new();
    for (bit, prop, php_reads) in shorts {
        for (kind, value, utf8) in &values {
            // RabbitMQ checks these two itself (expiration must be a number, user_id the
            // publishing user) and refuses other values: a_user_id_of_another… covers user_id.
            if prop == "expiration" || prop == "user_id" {
                continue;
            }
            let name = format!("gen-{prop}-{kind}");
            let mut props = Vec::new();
            let mut id = Vec::new();
            short_bytes(&mut id, name.as_bytes());
            let before_id = bit > flag::MESSAGE_ID;
            let mut value_bytes = Vec::new();
            short_bytes(&mut value_bytes, value);
            if before_id {
                props.extend_from_slice(&value_bytes);
                props.extend_from_slice(&id);
            } else {
                props.extend_from_slice(&id);
                props.extend_from_slice(&value_bytes);
            }
            cases.push(Case {
                handled: *utf8 || !php_reads,
                flags: bit | flag::MESSAGE_ID,
                props,
                body: body(&name, "ok"),
                name,
            });
        }
    }
    // Every field-table value type lapin and RabbitMQ both take.
    let types: [(&str, u8, Vec<u8>); 17] = [
        ("bool", b't', vec![1]),
        ("i8", b'b', vec![0x80]),
        ("u8", b'B', vec![0xff]),
        ("i16", b's', vec![0x80, 0]),
        ("u16", b'u', vec![0xff, 0xff]),
        ("i32", b'I', i32::MIN.to_be_bytes().to_vec()),
        ("u32", b'i', u32::MAX.to_be_bytes().to_vec()),
        ("i64", b'l', i64::MIN.to_be_bytes().to_vec()),
        ("f32", b'f', 1.5f32.to_be_bytes().to_vec()),
        ("f64", b'd', f64::MAX.to_be_bytes().to_vec()),
        ("decimal", b'D', vec![2, 0, 0, 0x30, 0x39]),
        (
            "long-string-binary",
            b'S',
            long_string(&[0, 0xff, 0xfe, b'\n']),
        ),
        ("timestamp", b'T', u64::MAX.to_be_bytes().to_vec()),
        ("void", b'V', Vec::new()),
        ("bytes", b'x', long_string(&[0xde, 0xad, 0xbe, 0xef])),
        ("array", b'A', {
            let items = [vec![b'I'], 7i32.to_be_bytes().to_vec(), vec![b'V']].concat();
            long_string(&items)
        }),
        ("table", b'F', table(&[entry(b"inner", b't', &[0])])),
    ];
    for (kind, tag, value) in types {
        let name = format!("gen-header-{kind}");
        let mut props = table(&[entry(b"h", tag, &value)]);
        short_bytes(&mut props, name.as_bytes());
        cases.push(Case {
            flags: flag::HEADERS | flag::MESSAGE_ID,
            props,
            body: body(&name, "ok"),
            name,
            handled: true,
        });
    }
    // Odd encodings RabbitMQ accepts: a reserved property-flag bit, a boolean byte other than
    // 0 or 1, a decimal with a scale beyond any number's digits.
    let odd: [(&str, u16, Vec<u8>); 3] = [
        ("flag-reserved-bit", 1 << 1, Vec::new()),
        (
            "header-bool-7",
            flag::HEADERS,
            table(&[entry(b"h", b't', &[7])]),
        ),
        (
            "header-decimal-scale-200",
            flag::HEADERS,
            table(&[entry(b"h", b'D', &[200, 0, 0, 0, 1])]),
        ),
    ];
    for (kind, bits, mut props) in odd {
        let name = format!("gen-{kind}");
        short_bytes(&mut props, name.as_bytes());
        cases.push(Case {
            flags: bits | flag::MESSAGE_ID,
            props,
            body: body(&name, "ok"),
            name,
            handled: true,
        });
    }
    // Empty and non-UTF-8 header names, a body that is not JSON, an empty body.
    for (kind, key, handled) in [
        ("key-empty", &b""[..], true),
        ("key-latin1", &b"\xe9"[..], false),
    ] {
        let name = format!("gen-header-{kind}");
        let mut props = table(&[entry(key, b'S', &long_string(b"v"))]);
        short_bytes(&mut props, name.as_bytes());
        cases.push(Case {
            flags: flag::HEADERS | flag::MESSAGE_ID,
            props,
            body: body(&name, "ok"),
            name,
            handled,
        });
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_edge_cases_are_each_handled_or_dead_lettered_and_the_subject_flows() {
    let ctx = TestCtx::new("generated").await;
    ctx.declare().await;
    let queue = ctx.queue("event");
    let mut raw = RawPublisher::connect().await;
    let cases = generated_cases();
    let mut behind = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        raw.publish_raw(&queue, case.flags, &case.props, &case.body)
            .await
            .unwrap_or_else(|e| panic!("{}: broker refused: {e}", case.name));
        // An ordinary message behind each case.
        let id = format!("behind-{i}");
        ctx.publish_json("event", &id, "ok").await;
        behind.push(id);
    }
    let agent = ctx.start_agent().await;
    let expected_dead: Vec<&str> = cases
        .iter()
        .filter(|c| !c.handled)
        .map(|c| c.name.as_str())
        .collect();
    let expected_handled: Vec<&str> = cases
        .iter()
        .filter(|c| c.handled)
        .map(|c| c.name.as_str())
        .chain(behind.iter().map(String::as_str))
        .collect();
    wait_handled(&ctx, &expected_handled).await;
    let dead = wait_dead(&ctx, "event", expected_dead.len()).await;
    let mut dead_ids: Vec<String> = dead.iter().map(|(_, b)| id_of(b)).collect();
    dead_ids.sort();
    let mut want: Vec<String> = expected_dead.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(dead_ids, want);
    for (props, body) in &dead {
        assert_eq!(
            header_str(props, "x-agent-reason").as_deref(),
            Some("malformed_properties"),
            "{}",
            id_of(body)
        );
    }
    let records = ctx.records_by_id();
    for id in &expected_handled {
        assert_eq!(records[*id].len(), 1, "{id} handled once");
    }
    assert_eq!(
        agent.stats()["event"].consumer_starts,
        1,
        "no connection lost"
    );
    assert_eq!(ctx.queue_len(&queue).await, 0);
    eprintln!(
        "generated: {} cases, {} handled, {} dead-lettered, {} ordinary messages behind them",
        cases.len(),
        expected_handled.len() - behind.len(),
        expected_dead.len(),
        behind.len()
    );
    agent.stop().await;
}

/// Peak resident memory of process `pid` (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

/// Case 7: memory follows the agent's own `limits.max_body_bytes`, not the broker's
/// `max_message_size`. A full prefetch window (16) of 8 MB bodies over a 64 KiB limit used to be
/// received whole (128 MB at once) before the limit was checked; now one oversized body is held at
/// a time (`broker::gate`), the others wait without their bytes. Each is still dead-lettered with
/// every byte, and the ordinary messages behind them are handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_held_one_at_a_time() {
    const BIG: usize = 8_000_000;
    const N: u8 = 16;
    let mut ctx = TestCtx::new("edges-oversized").await;
    ctx.pool_size = 8; // × prefetch_per_worker 2: a window of 16
    ctx.set("limits.max_body_bytes", 65_536);
    ctx.declare().await;
    for i in 0..N {
        let props = BasicProperties::default().with_message_id(format!("big-{i}").into());
        ctx.publish("event", &vec![b'a' + i; BIG], props).await;
    }
    let behind = ["behind-1", "behind-2", "behind-3"];
    for id in behind {
        ctx.publish_json("event", id, "ok").await;
    }
    let config = ctx.write_config();
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let mut agent = common::procs::AgentProcess::start(&config, &log);
    common::wait_ready(ctx.admin_port, WAIT).await; // it declared the dead-letter queue

    let dead_queue = ctx.dead_queue("event");
    common::eventually(Duration::from_secs(120), "16 dead letters", || async {
        ctx.queue_len(&dead_queue).await == u32::from(N)
    })
    .await;
    wait_handled(&ctx, &behind).await;
    let peak = peak_rss(agent.child.id());
    let metrics = common::metrics(ctx.admin_port).await.unwrap_or_default();
    let deferred = common::metric_sum(&metrics, "amqp_agent_body_deferred_total", &[]);
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(30)).success());

    let dead = ctx.drain_dead("event").await;
    assert_eq!(dead.len(), usize::from(N));
    let mut seen = Vec::new();
    for (props, body) in &dead {
        let id = props.message_id().as_ref().unwrap().to_string();
        let i: u8 = id.strip_prefix("big-").unwrap().parse().unwrap();
        assert_eq!(
            header_str(props, "x-agent-reason").as_deref(),
            Some("body_too_large"),
            "{id}"
        );
        assert!(
            body.len() == BIG && body.iter().all(|b| *b == b'a' + i),
            "{id}: the dead letter keeps every byte"
        );
        seen.push(i);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..N).collect::<Vec<_>>());
    eprintln!(
        "oversized: peak RSS {:.1} MiB for {N} × {BIG} bytes in a window of 16; {deferred} deferred",
        peak as f64 / f64::from(1 << 20)
    );
    // Received whole, the window alone is 128 MB; one body at a time (with its dead-letter copy
    // being encoded) stays far below.
    assert!(
        peak < 96 << 20,
        "peak RSS {peak} bytes: more than one oversized body was held at once"
    );
    assert!(deferred > 0.0, "the others waited without their bytes");
}

/// `limits.memory_budget` holds the bodies' bytes, not the prefetch window (`broker::gate`): with
/// a budget of 1 MiB (512 KiB per subject) and a window of at least 32 deliveries, 24 bodies of
/// 200 KB cannot all be held at once; those over the share arrive without their bytes and go
/// back to the queue unread. Each is still handled exactly once, on its first attempt, and none
/// is dead-lettered. `/status` and the metrics show the bodies held, never over the share, and
/// none once all are handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_memory_budget_wait_unread_and_are_each_handled_once() {
    const N: usize = 24;
    const PAD: usize = 200_000;
    let mut ctx = TestCtx::new("edges-budget").await;
    ctx.pool_size = 4;
    ctx.set("limits.memory_budget", 1_048_576);
    ctx.declare().await;
    let ids: Vec<String> = (0..N).map(|i| format!("budget-{i}")).collect();
    for id in &ids {
        // Each held for a while by its worker: /status is read while bodies are held.
        let body = serde_json::json!({"id": id, "behave": "sleep:100", "pad": "p".repeat(PAD)});
        let props = BasicProperties::default().with_message_id(id.as_str().into());
        ctx.publish("event", body.to_string().as_bytes(), props)
            .await;
    }
    let config = ctx.write_config();
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let mut agent = common::procs::AgentProcess::start(&config, &log);
    common::wait_ready(ctx.admin_port, WAIT).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    // `/status` shows the subject's held body bytes (the gate's count, the one its consumer
    // channel counts with), never over its share, until every body has reached PHP.
    let share: u32 = 1_048_576 / 2;
    let deadline = std::time::Instant::now() + WAIT;
    let mut most = 0;
    loop {
        if let Some(doc) = common::status(ctx.admin_port).await {
            let event = &doc["subjects"]["event"];
            assert_eq!(event["body_bytes_share"], share, "{event}");
            let held = event["body_bytes_held"].as_u64().expect("body_bytes_held");
            assert!(
                held <= u64::from(share),
                "{held} bytes held, over the share"
            );
            most = most.max(held);
        }
        let records = ctx.records_by_id();
        if most >= PAD as u64 && refs.iter().all(|id| records.contains_key(*id)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bodies held seen: {most} bytes at most"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    common::eventually(WAIT, "the queue empty, no body held", || async {
        ctx.queue_len(&ctx.queue("event")).await == 0
            && common::status(ctx.admin_port)
                .await
                .is_some_and(|doc| doc["subjects"]["event"]["body_bytes_held"] == 0)
    })
    .await;
    let metrics = common::metrics(ctx.admin_port).await.unwrap_or_default();
    let deferred = common::metric_sum(&metrics, "amqp_agent_body_deferred_total", &[]);
    assert_eq!(
        common::metric_sum(&metrics, "amqp_agent_body_bytes_share", &[]),
        f64::from(share)
    );
    assert!(
        metrics.contains("amqp_agent_body_bytes_held{subject=\"event\"} 0"),
        "{metrics}"
    );
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(30)).success());

    let records = ctx.records_by_id();
    for id in &ids {
        let recs = &records[id.as_str()];
        assert_eq!(recs.len(), 1, "{id} handled once: {recs:?}");
        assert_eq!(
            recs[0]["params"]["HTTP_X_AGENT_ATTEMPT"], "1",
            "{id}: no attempt used by the wait"
        );
    }
    assert!(
        ctx.drain_dead("event").await.is_empty(),
        "nothing dead-lettered"
    );
    eprintln!(
        "memory budget: {N} bodies of {PAD} bytes, {deferred} deferred, at most {most} bytes held"
    );
    assert!(
        deferred > 0.0,
        "24 × 200 KB in a window of 32 or more: some waited for room in the 512 KiB share"
    );
}

/// The encodings a parser could choke on never reach the agent: RabbitMQ 3.10 decodes every
/// published content header and refuses these (`INTERNAL_ERROR`, or `PRECONDITION_FAILED` for a
/// delivery mode it does not know), so no frame it delivers fails lapin's parser. If a broker
/// version starts accepting one, this fails and the case must join `generated_cases`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_encodings_no_parser_could_read_are_refused_by_the_broker() {
    let ctx = TestCtx::new("edges-refused").await;
    ctx.declare().await;
    let queue = ctx.queue("event");
    let with_id = |mut props: Vec<u8>, name: &str| {
        short_bytes(&mut props, name.as_bytes());
        props
    };
    let array_of_unknown = long_string(b"Z");
    let mut padded = entry(b"h", b't', &[1]);
    padded.extend_from_slice(&[0xff, 0xff]);
    let padded = [
        u32::try_from(padded.len()).unwrap().to_be_bytes().to_vec(),
        padded,
    ]
    .concat();
    let cases: Vec<(&str, u16, Vec<u8>)> = vec![
        (
            "header type Z",
            flag::HEADERS,
            table(&[entry(b"h", b'Z', &[])]),
        ),
        (
            "header type U",
            flag::HEADERS,
            table(&[entry(b"h", b'U', &[0, 1])]),
        ),
        (
            "header type c",
            flag::HEADERS,
            table(&[entry(b"h", b'c', &[1])]),
        ),
        (
            "array of type Z",
            flag::HEADERS,
            table(&[entry(b"h", b'A', &array_of_unknown)]),
        ),
        ("table with trailing bytes", flag::HEADERS, padded),
        ("property flags continued", 1, vec![0, 0]),
        ("bytes after the properties", 0, Vec::new()),
        ("delivery mode 7", flag::DELIVERY_MODE, vec![7]),
    ];
    for (name, bits, props) in cases {
        let mut props = with_id(props, "refused");
        if name == "bytes after the properties" {
            props.extend_from_slice(b"GARBAGE");
        }
        let mut raw = RawPublisher::connect().await;
        let refused = raw
            .publish_raw(&queue, bits | flag::MESSAGE_ID, &props, b"{}")
            .await;
        assert!(refused.is_err(), "{name}: the broker accepted it");
    }
    assert_eq!(ctx.queue_len(&queue).await, 0, "nothing was stored");
}

/// lapin's I/O loop, on its thread (the default, which the tests' and the bench's clients use)
/// and as a task (the agent's, vendor/lapin/PATCHES.md 7), keeps up with a sustained burst:
/// 20,000 publishes with up to 1,000 unconfirmed, every one confirmed. Both run under Tokio's
/// cooperative budget (`block_on`'s on the thread, the task's otherwise): once a round of reads
/// and writes has used it up, the socket answers `Pending` without asking the OS, and a loop
/// that never hands control back kept finding a new socket event, never read again, and spun
/// until lapin's heartbeat check closed the connection two minutes later (found by the bench,
/// whose publisher died that way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_io_loops_keep_up_with_a_sustained_burst() {
    const MESSAGES: usize = 20_000;
    const WINDOW: usize = 1_000;
    let _turn = common::turn::shared().await;
    for as_task in [false, true] {
        let props = lapin::ConnectionProperties::default();
        let props = if as_task {
            props.with_io_loop_task()
        } else {
            props
        };
        let conn = lapin::Connection::connect(common::AMQP_URL, props)
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .unwrap();
        // Routed nowhere: the broker confirms and drops them, nothing to clean up.
        let nowhere = format!("amqp-agent-test-burst-{}", uuid::Uuid::new_v4());
        let burst = async {
            let mut pending = std::collections::VecDeque::with_capacity(WINDOW);
            for _ in 0..MESSAGES {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        nowhere.as_str().into(),
                        lapin::options::BasicPublishOptions::default(),
                        b"x",
                        lapin::BasicProperties::default(),
                    )
                    .await
                    .unwrap();
                pending.push_back(confirm);
                if pending.len() >= WINDOW {
                    assert!(pending.pop_front().unwrap().await.unwrap().is_ack());
                }
            }
            for confirm in pending {
                assert!(confirm.await.unwrap().is_ack());
            }
        };
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(60), burst)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{MESSAGES} publishes (I/O loop as a task: {as_task}) not confirmed within 60 s"
                )
            });
        println!(
            "EDGE burst, I/O loop as a task: {as_task}: {MESSAGES} confirmed in {:?}",
            started.elapsed()
        );
    }
}

/// A connection outlives more than `channel_max` channels closed by the broker. The agent's
/// depth task reads its queues every `fpm.status_interval` (2 s) on the consumer's connection;
/// when one of them is missing (an operator deleted the dead-letter queue, say), the broker
/// closes that channel (404) and the next read opens another. lapin kept the number of every
/// channel the broker closed poisoned, and channel numbers wrap at `channel_max` (2,047 here):
/// after the wrap every new channel took a poisoned number and its `channel.open` was dropped
/// unsent, so the depths (the autoscaler's backlog, `/status`'s dead letters) read 0 for good,
/// about 68 minutes after the queue went missing; each failed open also left its channel in
/// the connection's map, and 2,047 later no channel could be opened at all
/// (`ChannelsLimitReached`, which this test hit without the fix; vendor/lapin/PATCHES.md 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_outlives_channel_max_channels_closed_by_the_broker() {
    let ctx = TestCtx::new("edge-channels").await;
    ctx.declare().await;
    let conn = lapin::Connection::connect(
        common::AMQP_URL,
        lapin::ConnectionProperties::default().with_io_loop_task(),
    )
    .await
    .unwrap();
    let channel_max = usize::from(conn.configuration().channel_max());
    assert!(
        (1..=4096).contains(&channel_max),
        "channel_max {channel_max}"
    );
    let missing = format!("amqp-agent-test-missing-{}", uuid::Uuid::new_v4());
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let queue = ctx.queue("event");
    let read = |name: String| {
        let conn = &conn;
        async move {
            let channel = conn.create_channel().await?;
            channel
                .queue_declare(name.as_str().into(), passive, FieldTable::default())
                .await
                .map(|q| q.message_count())
        }
    };
    // Past the wrap, twice over: every number has been closed by the broker at least once.
    for i in 0..channel_max * 2 + 10 {
        let refused = read(missing.clone()).await;
        assert!(refused.is_err(), "read {i} of a missing queue succeeded");
    }
    ctx.publish_json("event", "after-the-wrap", "ok").await;
    let after = read(queue.clone()).await;
    assert!(
        matches!(after, Ok(1)),
        "a channel opened after the wrap reads the queue: {after:?}"
    );
    assert!(conn.status().connected(), "the connection stays up");
}
