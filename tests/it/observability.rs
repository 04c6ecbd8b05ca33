//! Traces reach an OTLP receiver with the right parent chain; metrics count what was published;
//! readiness follows the broker link; logs carry the message's identity.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestCtx;
use common::procs::{AgentProcess, TcpProxy, http};
use lapin::BasicProperties;

const WAIT: Duration = Duration::from_secs(30);
use lapin::types::{AMQPValue, FieldTable, LongString};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_from_publisher_through_the_agent_to_php_across_retries() {
    let (otlp_port, spans) = common::otlp::receiver().await;
    let ctx = TestCtx::new("trace").await;
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{otlp_port}"),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
        ("OTEL_SERVICE_NAME", "amqp-agent-test".to_owned()),
    ];
    let mut agent = AgentProcess::start_with(&ctx.write_config(), &log, &env, &[]);
    ctx.wait_ready().await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let publisher_span = "00f067aa0ba902b7";
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from(format!(
            "00-{trace_id}-{publisher_span}-01"
        ))),
    );
    let body = serde_json::json!({"id": "traced", "behave": "fail-until:2"}).to_string();
    ctx.publish(
        "event",
        body.as_bytes(),
        BasicProperties::default()
            .with_message_id("traced".into())
            .with_headers(headers),
    )
    .await;
    common::eventually(LONG, "two attempts", || async {
        ctx.records_by_id()
            .get("traced")
            .is_some_and(|r| r.len() == 2)
    })
    .await;
    // SIGTERM drains and flushes the batch exporter before exit.
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(30)).code(), Some(0));
    common::eventually(LONG, "spans exported", || async {
        spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name.ends_with(" process"))
            .count()
            >= 2
    })
    .await;

    let spans = spans.lock().unwrap().clone();
    let hex_of = |b: &[u8]| hex::encode(b);
    let in_trace: Vec<&Span> = spans
        .iter()
        .filter(|s| hex_of(&s.trace_id) == trace_id)
        .collect();
    let process: Vec<&Span> = in_trace
        .iter()
        .copied()
        .filter(|s| s.name.ends_with(" process"))
        .collect();
    let fastcgi: Vec<&Span> = in_trace
        .iter()
        .copied()
        .filter(|s| s.name == "FastCGI POST")
        .collect();
    assert_eq!(
        process.len(),
        2,
        "one process span per attempt, both in the publisher's trace"
    );
    assert_eq!(fastcgi.len(), 2, "one FastCGI client span per attempt");
    let by_id: HashMap<String, &Span> = in_trace.iter().map(|s| (hex_of(&s.span_id), *s)).collect();
    // Attempt 1 is the publisher's child; attempt 2 continues from attempt 1.
    let first = process
        .iter()
        .find(|s| hex_of(&s.parent_span_id) == publisher_span)
        .expect("first attempt is a child of the publisher span");
    let second = process.iter().find(|s| s.span_id != first.span_id).unwrap();
    assert_eq!(
        hex_of(&second.parent_span_id),
        hex_of(&first.span_id),
        "the retry stays in the trace"
    );
    for f in &fastcgi {
        let parent = by_id
            .get(&hex_of(&f.parent_span_id))
            .expect("FastCGI span's parent is in the trace");
        assert!(parent.name.ends_with(" process"));
        assert_eq!(f.kind, 3, "SPAN_KIND_CLIENT");
    }
    // PHP received a traceparent of the same trace whose parent is that attempt's FastCGI span.
    let fastcgi_ids: Vec<String> = fastcgi.iter().map(|s| hex_of(&s.span_id)).collect();
    for record in &ctx.records_by_id()["traced"] {
        let tp = record["params"]["HTTP_TRACEPARENT"]
            .as_str()
            .expect("PHP got a traceparent");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts[1], trace_id);
        assert!(
            fastcgi_ids.contains(&parts[2].to_owned()),
            "{tp} is not a FastCGI span"
        );
    }
    // Outcome and status are on the spans; the failed attempt is marked as an error.
    let attr = |s: &Span, key: &str| {
        s.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
            .map(|v| format!("{v:?}"))
    };
    let outcomes: Vec<String> = process.iter().filter_map(|s| attr(s, "outcome")).collect();
    assert!(
        outcomes.iter().any(|o| o.contains("retry")) && outcomes.iter().any(|o| o.contains("ack")),
        "{outcomes:?}"
    );
    assert!(
        fastcgi
            .iter()
            .any(|s| attr(s, "http.response.status_code").is_some_and(|v| v.contains("500")))
    );
    assert!(
        first.status.as_ref().is_some_and(|st| st.code == 2),
        "failed attempt has error status"
    );
}

fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_what_was_published_and_readiness_follows_the_broker() {
    let mut ctx = TestCtx::new("metrics").await;
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    ctx.amqp_url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let _agent = AgentProcess::start(&ctx.write_config(), &log);
    let port = ctx.admin_port;
    common::eventually(LONG, "ready", || async {
        http(port, "GET", "/readyz", None)
            .await
            .is_some_and(|(s, _)| s == 200)
    })
    .await;
    assert_eq!(http(port, "GET", "/healthz", None).await.unwrap().0, 200);

    for i in 0..30 {
        ctx.publish_json("event", &format!("ok-{i}"), "ok").await;
    }
    for i in 0..5 {
        ctx.publish_json("command", &format!("gone-{i}"), "status:404")
            .await;
    }
    for i in 0..3 {
        ctx.publish_json("event", &format!("flaky-{i}"), "fail-until:2")
            .await;
    }
    let scrape = || async {
        http(port, "GET", "/metrics", None)
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    common::eventually(LONG, "all settled", || async {
        let m = scrape().await;
        metric(&m, "amqp_agent_messages_acked_total", "event") == 33.0
            && metric(&m, "amqp_agent_messages_dead_lettered_total", "command") == 5.0
    })
    .await;
    let m = scrape().await;
    assert_eq!(
        metric(
            &m,
            "amqp_agent_messages_received_total",
            "subject=\"event\""
        ),
        36.0,
        "30 + 3 + 3 retries"
    );
    // 36 event deliveries were acked (33 handled, 3 after their retry copy was stored), in at
    // least one frame and never more frames than deliveries.
    let frames = metric(&m, "amqp_agent_ack_frames_total", "subject=\"event\"");
    assert!((1.0..=36.0).contains(&frames), "{frames} ack frames");
    assert_eq!(
        metric(
            &m,
            "amqp_agent_messages_received_total",
            "subject=\"command\""
        ),
        5.0
    );
    assert_eq!(
        metric(
            &m,
            "amqp_agent_messages_retried_total",
            "reason=\"http_status\""
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "amqp_agent_messages_dead_lettered_total",
            "reason=\"rejected\""
        ),
        5.0
    );
    assert_eq!(
        metric(&m, "amqp_agent_fpm_responses_total", "status=\"404\""),
        5.0
    );
    assert_eq!(
        metric(&m, "amqp_agent_fpm_responses_total", "status=\"500\""),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "amqp_agent_fpm_request_duration_seconds_count",
            "subject=\"event\""
        ),
        36.0
    );
    assert_eq!(metric(&m, "amqp_agent_pool_size", "subject=\"event\""), 4.0);
    assert_eq!(metric(&m, "amqp_agent_in_flight", "subject=\"event\""), 0.0);

    let (code, status) = http(port, "GET", "/status", None).await.unwrap();
    assert_eq!(code, 200);
    let doc: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(doc["subjects"]["event"]["acked"], 33);
    assert_eq!(doc["subjects"]["command"]["dead_lettered"], 5);
    assert_eq!(doc["ready"], true);
    assert!(
        !status.contains("guest") && !status.contains(common::SECRET),
        "no secrets in /status"
    );

    proxy.cut();
    common::eventually(
        LONG,
        "not ready while the broker is unreachable",
        || async {
            http(port, "GET", "/readyz", None)
                .await
                .is_some_and(|(s, _)| s == 503)
        },
    )
    .await;
    let (_, why) = http(port, "GET", "/readyz", None).await.unwrap();
    assert!(why.contains("not connected"), "{why}");
    proxy.restore();
    common::eventually(LONG, "ready again", || async {
        http(port, "GET", "/readyz", None)
            .await
            .is_some_and(|(s, _)| s == 200)
    })
    .await;
    let m = scrape().await;
    assert!(
        metric(&m, "amqp_agent_reconnects_total", "") >= 2.0,
        "both subjects reconnected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_logs_carry_subject_message_id_attempt_and_trace_id() {
    let ctx = TestCtx::new("jsonlog").await;
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let _agent =
        AgentProcess::start_with(&ctx.write_config(), &log, &[], &["--log-format", "json"]);
    ctx.wait_ready().await;
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )),
    );
    let body = serde_json::json!({"id": "logged", "behave": "fail-until:2"}).to_string();
    ctx.publish(
        "command",
        body.as_bytes(),
        BasicProperties::default()
            .with_message_id("logged".into())
            .with_headers(headers),
    )
    .await;
    ctx.wait_status("the first attempt retried", |s| {
        s["subjects"]["command"]["retried"] == 1
    })
    .await;
    // The retry decision's line: the one with the next attempt's number.
    let line = _agent
        .log_text()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON log line"))
        .find(|l| l["next_attempt"] == 2)
        .expect("a line for the retry");
    let span = &line["span"];
    assert_eq!(span["subject"], "command");
    assert_eq!(span["message_id"], "logged");
    assert_eq!(span["attempt"], 1);
    assert_eq!(span["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert!(
        !_agent.log_text().contains("guest:guest"),
        "the AMQP password never reaches the logs"
    );
}

/// An OTLP/gRPC receiver (the collector's default protocol).
struct GrpcSink(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for GrpcSink
{
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let mut sink = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                sink.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traces_also_export_over_grpc() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(GrpcSink(spans.clone())))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);

    let ctx = TestCtx::new("grpc").await;
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
    ];
    let mut agent = AgentProcess::start_with(&ctx.write_config(), &log, &env, &[]);
    ctx.wait_ready().await;
    ctx.publish_json("command", "over-grpc", "ok").await;
    common::eventually(LONG, "handled", || async {
        ctx.records_by_id().contains_key("over-grpc")
    })
    .await;
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(30)).code(), Some(0));
    common::eventually(LONG, "spans over gRPC", || async {
        let spans = spans.lock().unwrap();
        spans.iter().any(|s| s.name.ends_with(" process"))
            && spans.iter().any(|s| s.name == "FastCGI POST")
    })
    .await;
}

/// Long-wait detection (issue #25, item 2): messages that waited past `wait_threshold` mark the
/// subject (`/status`, gauge, one episode counted), and one that waited less ends the episode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_wait_is_detected_once_and_ends() {
    let mut ctx = TestCtx::new("long-wait").await;
    ctx.set("subjects.event.wait_threshold", "60s");
    let agent = ctx.start_agent().await;
    let long_wait = |agent: &amqp_agent::agent::Agent| {
        serde_json::to_value(agent.handle().status()).unwrap()["subjects"]["event"]["long_wait"]
            == true
    };
    let old = amqp_agent::contract::unix_now() - 120;
    for i in 0..3 {
        let id = format!("old-{i}");
        let props = BasicProperties::default()
            .with_message_id(id.as_str().into())
            .with_timestamp(old);
        let body = serde_json::json!({"id": id, "behave": "ok"}).to_string();
        ctx.publish("event", body.as_bytes(), props).await;
    }
    common::eventually(WAIT, "three old messages handled", || async {
        agent.stats()["event"].acked == 3
    })
    .await;
    assert!(long_wait(&agent));
    let m = agent.handle().metrics().encode();
    assert_eq!(
        common::metric_sum(
            &m,
            "amqp_agent_long_wait_episodes_total",
            &[("subject", "event")]
        ),
        1.0,
        "one episode for three long waits"
    );
    assert_eq!(
        common::metric_sum(&m, "amqp_agent_long_wait", &[("subject", "event")]),
        1.0
    );
    let props = BasicProperties::default()
        .with_message_id("fresh".into())
        .with_timestamp(amqp_agent::contract::unix_now());
    let body = serde_json::json!({"id": "fresh", "behave": "ok"}).to_string();
    ctx.publish("event", body.as_bytes(), props).await;
    common::eventually(WAIT, "the episode ends", || async { !long_wait(&agent) }).await;
    let m = agent.handle().metrics().encode();
    assert_eq!(
        common::metric_sum(&m, "amqp_agent_long_wait", &[("subject", "event")]),
        0.0
    );
    agent.stop().await;
}

/// The overview's queue depths and oldest wait (#25): a message waiting in a delay queue and
/// two in the dead-letter queue are counted in `/status` (`delayed`, `dead`), read from the
/// broker every `fpm.status_interval`, for a fixed pool too; a message published 30 s ago is the
/// last minute's oldest handed over (`wait_s_last_minute.max`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_the_delay_and_dead_letter_queues() {
    let mut ctx = TestCtx::new("obs-depths").await;
    ctx.retry_toml = "[retry]\ndelays = [\"60s\"]\nmax_attempts = 3\n".to_owned();
    ctx.set("fpm.status_interval", "200ms");
    ctx.declare().await;
    let agent = ctx.start_agent().await;
    ctx.publish_json("event", "waits", "status:503").await;
    ctx.publish_json("event", "dead-1", "status:422").await;
    ctx.publish_json("event", "dead-2", "status:422").await;
    common::eventually(Duration::from_secs(30), "1 delayed and 2 dead", || async {
        let doc = serde_json::to_value(agent.handle().status()).unwrap();
        let s = &doc["subjects"]["event"];
        s["delayed"] == 1 && s["dead"] == 2 && s["queue_depth"] == 0
    })
    .await;
    // A message published 30 s ago (its AMQP timestamp) is the oldest handed over this minute.
    let then = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 30;
    let props = BasicProperties::default()
        .with_message_id("old".into())
        .with_timestamp(then);
    ctx.publish("event", br#"{"id":"old","behave":"ok"}"#, props)
        .await;
    common::eventually(
        Duration::from_secs(30),
        "the old message's wait",
        || async {
            let doc = serde_json::to_value(agent.handle().status()).unwrap();
            let max = doc["subjects"]["event"]["wait_s_last_minute"]["max"].as_f64();
            max.is_some_and(|m| (29.0..=40.0).contains(&m))
        },
    )
    .await;
    assert_eq!(ctx.queue_len(&ctx.dead_queue("event")).await, 2);
    assert_eq!(
        ctx.queue_len(&ctx.delay_queue("event", Duration::from_secs(60)))
            .await,
        1
    );
    agent.stop().await;
}
