//! The admin listener under abuse: a flood of idle connections, slow loris, commands without
//! the token and from browsers — against the real binary, RabbitMQ and php-fpm.

use crate::common;

use std::time::{Duration, Instant};

use common::procs::{AgentProcess, agent_cli, http, http_raw as raw};
use common::{ADMIN_TOKEN, TestCtx};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LONG: Duration = Duration::from_secs(60);

/// Starts the agent binary with `ctx`'s config and a log file of its own.
fn start(ctx: &TestCtx) -> AgentProcess {
    let config = ctx.write_config();
    let log = common::fpm()
        .dir
        .join(format!("{}-{}.log", ctx.id, uuid::Uuid::new_v4().simple()));
    AgentProcess::start(&config, &log)
}

/// A POST with the given extra header lines (each ending in CRLF).
async fn post(port: u16, path: &str, headers: &str) -> (u16, String) {
    raw(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await
    .expect("admin API answers")
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

async fn paused(port: u16, subject: &str) -> bool {
    let (_, body) = http(port, "GET", "/status", None).await.unwrap();
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    doc["subjects"][subject]["paused"] == true
}

/// Waits until `/status` shows `subject` paused (`true`) or consuming again (`false`): a command
/// is answered once the agent recorded it, and the subject's consumer follows a moment later.
async fn wait_paused(port: u16, subject: &str, paused: bool) {
    let what = format!("{subject} paused: {paused}");
    common::wait_status(port, &what, common::WAIT, |s| {
        s["subjects"][subject]["paused"] == paused
    })
    .await;
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The test process holds the client side of every connection: make room for them.
fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur < want {
        lim.rlim_cur = want.min(lim.rlim_max);
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }
    assert!(
        lim.rlim_cur >= want,
        "RLIMIT_NOFILE hard limit {} is below {want}",
        lim.rlim_max
    );
}

/// How many of `streams` the agent has closed (or answered), by a non-blocking read.
fn closed_by_peer(streams: &[std::net::TcpStream]) -> usize {
    use std::io::Read as _;
    streams
        .iter()
        .filter(|s| {
            !matches!((&**s).read(&mut [0u8; 256]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_idle_connections_do_not_starve_the_agent() {
    raise_fd_limit(4096);
    let mut ctx = TestCtx::new("adminflood").await;
    ctx.admin_toml
        .push_str("max_connections = 64\nheader_timeout = \"10s\"\n");
    let agent = start(&ctx);
    ctx.wait_ready().await;
    let port = ctx.admin_port;
    let pid = agent.child.id();
    let before = open_fds(pid);

    let idle = tokio::task::spawn_blocking(move || {
        (0..2000)
            .map(|_| {
                let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    // Everything over the cap is closed at once (each newer connection closes the oldest idle
    // one); the agent holds at most 64 of them.
    common::eventually(LONG, "1,936 connections over the cap closed", || async {
        closed_by_peer(&idle) >= 2000 - 64
    })
    .await;
    let during = open_fds(pid);
    println!("agent fds: {before} before, {during} with 2,000 idle admin connections");
    assert!(
        during <= before + 64 + 8,
        "the agent holds {during} fds with 2,000 idle admin connections (was {before})"
    );
    // A probe over the cap closes the oldest idle connection and is answered at once.
    let started = Instant::now();
    let probe = http(port, "GET", "/healthz", None).await;
    assert!(
        started.elapsed() < Duration::from_secs(2) && matches!(probe, Some((200, _))),
        "a probe during the flood is answered at once: {probe:?} after {:?}",
        started.elapsed()
    );

    // Messages still flow while every idle socket is held open by this test.
    ctx.publish_json("event", "flood-1", "ok").await;
    common::eventually(LONG, "php-fpm handled the message", || async {
        ctx.records_by_id().contains_key("flood-1")
    })
    .await;
    // Each held connection is closed header_timeout after its own accept, so the last ones
    // may close a little after the first: wait for all of them, with a deadline.
    common::eventually(
        Duration::from_secs(30),
        "every idle connection closed",
        || async { closed_by_peer(&idle) == 2000 },
    )
    .await;
    assert!(
        !agent.log_text().contains("Too many open files"),
        "{}",
        agent.log_text()
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_need_the_token_and_browsers_are_refused() {
    let ctx = TestCtx::new("admintoken").await;
    let agent = start(&ctx);
    ctx.wait_ready().await;
    let port = ctx.admin_port;
    let pause = "/subjects/event/pause";

    let (code, body) = post(port, pause, "").await;
    assert_eq!(code, 401, "{body}");
    let (code, _) = post(port, pause, &bearer("test-admin-token-wrong-one")).await;
    assert_eq!(code, 401);
    // With the right token but from a browser (an Origin header): refused.
    let origin = format!("{}Origin: http://127.0.0.1:{port}\r\n", bearer(ADMIN_TOKEN));
    let (code, body) = post(port, pause, &origin).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("Origin"), "{body}");
    assert!(
        !paused(port, "event").await,
        "no refused command got through"
    );
    // Reads too, from a browser; without Origin they are open.
    let (code, _) = raw(
        port,
        "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(code, 403);
    assert_eq!(http(port, "GET", "/readyz", None).await.unwrap().0, 200);
    // A body over the limit, or one without a length.
    let big = format!(
        "POST {pause} HTTP/1.1\r\nHost: 127.0.0.1\r\n{}Content-Length: 100000\r\nConnection: close\r\n\r\n",
        bearer(ADMIN_TOKEN)
    );
    let (code, _) = raw(port, &big).await.unwrap();
    assert_eq!(code, 413);

    let (code, body) = post(port, pause, &bearer(ADMIN_TOKEN)).await;
    assert_eq!((code, body.as_str()), (200, "event: paused\n"));
    wait_paused(port, "event", true).await;
    // The CLI sends admin.token from the same config.
    let config = ctx.write_config();
    let (code, out) = agent_cli(&["--config", config.to_str().unwrap(), "resume", "event"]);
    assert_eq!(code, 0, "{out}");
    wait_paused(port, "event", false).await;
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_token_commands_are_refused_unless_explicitly_opened() {
    let mut ctx = TestCtx::new("adminnotoken").await;
    ctx.admin_toml = String::new();
    let config = ctx.write_config();
    let (code, out) = agent_cli(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("refuses every command"), "{out}");
    let agent = start(&ctx);
    ctx.wait_ready().await;
    let (code, body) = post(ctx.admin_port, "/subjects/event/pause", "").await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("admin.token is not set"), "{body}");
    let (code, out) = agent_cli(&["--config", config.to_str().unwrap(), "pause", "event"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("admin.token is not set"), "{out}");
    assert!(!paused(ctx.admin_port, "event").await);
    drop(agent);

    // The development opt-out, on loopback.
    ctx.admin_toml = "allow_unauthenticated_commands = true\n".to_owned();
    let config = ctx.write_config();
    let (code, out) = agent_cli(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("development only"), "{out}");
    let agent = start(&ctx);
    ctx.wait_ready().await;
    let (code, body) = post(ctx.admin_port, "/subjects/event/pause", "").await;
    assert_eq!(code, 200, "{body}");
    wait_paused(ctx.admin_port, "event", true).await;
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_loris_is_closed_after_the_header_timeout() {
    let mut ctx = TestCtx::new("adminloris").await;
    ctx.admin_toml.push_str("header_timeout = \"1s\"\n");
    let agent = start(&ctx);
    ctx.wait_ready().await;
    let mut stream = TcpStream::connect(("127.0.0.1", ctx.admin_port))
        .await
        .unwrap();
    let opened = Instant::now();
    stream
        .write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    // Trickle one header line every 100 ms, never the blank line that ends the head.
    let mut trickle = tokio::time::interval(Duration::from_millis(100));
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            tokio::select! {
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // hyper may answer 408 before closing
                },
                _ = trickle.tick() => {
                    if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    let after = opened.elapsed();
    println!("slow loris closed after {after:?}");
    assert!(
        closed.is_ok(),
        "a slow-loris connection was still open after 15 s"
    );
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "closed after {after:?}, header_timeout is 1 s"
    );
    // The listener serves on.
    assert_eq!(
        http(ctx.admin_port, "GET", "/healthz", None)
            .await
            .unwrap()
            .0,
        200
    );
    drop(agent);
}

/// GET with a `Host` header of the caller's choice: (status, body).
async fn get_with_host(port: u16, path: &str, host: &str) -> (u16, String) {
    raw(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await
    .expect("admin API answers")
}

/// DNS rebinding: a page on `evil.example` whose name now resolves to the agent reaches it
/// with `Host: evil.example` and no `Origin` on a simple GET (issue #22, hole 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_host_is_refused_on_every_route() {
    let mut ctx = TestCtx::new("adminhost").await;
    ctx.admin_toml
        .push_str("allowed_hosts = [\"agent.internal\", \"Admin.Example.\"]\n");
    let agent = start(&ctx);
    ctx.wait_ready().await;
    let port = ctx.admin_port;
    for path in ["/healthz", "/readyz", "/metrics", "/status"] {
        for host in [
            "evil.example",
            &format!("evil.example:{port}"),
            "127.0.0.1.evil.example",
        ] {
            let (code, body) = get_with_host(port, path, host).await;
            assert_eq!(code, 403, "{path} with Host {host}: {body}");
        }
        for host in [
            format!("127.0.0.1:{port}"),
            "127.0.0.1".to_owned(),
            format!("localhost:{port}"),
            format!("agent.internal:{port}"),
            "admin.example".to_owned(),
        ] {
            let (code, body) = get_with_host(port, path, &host).await;
            assert_eq!(code, 200, "{path} with Host {host}: {body}");
        }
    }
    // Commands too, with the right token.
    let (code, body) = raw(
        port,
        &format!(
            "POST /subjects/event/pause HTTP/1.1\r\nHost: evil.example\r\n{}Content-Length: 0\r\nConnection: close\r\n\r\n",
            bearer(ADMIN_TOKEN)
        ),
    )
    .await
    .unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(!paused(port, "event").await);
    drop(agent);
}

/// FPM's status page lists each busy child's request URI with its query string; on a pool the
/// web app shares, that is another request's `?token=…` (issue #22, hole 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_shows_request_uris_without_their_query_unless_the_token_is_given() {
    let mut ctx = TestCtx::new("adminquery").await;
    let fpm = common::procs::PrivateFpm::start_with("adminquery", 2, Some("/fpm-status"));
    ctx.fpm_port = fpm.port;
    ctx.fpm_extra = "status_path = \"/fpm-status\"\nstatus_interval = \"200ms\"\n".to_owned();
    let agent = start(&ctx);
    ctx.wait_ready().await;
    let port = ctx.admin_port;
    // A web request on the same pool, as nginx would send it: the query in QUERY_STRING.
    let script = ctx.script.display().to_string();
    let uri = format!("/t/{}/web?token=s3cret-reset", ctx.id);
    let web = tokio::spawn(async move {
        let body = serde_json::json!({"id": "web", "behave": "sleep:4000"}).to_string();
        let mut client = amqp_agent::fastcgi::FpmClient::new(
            amqp_agent::config::FpmAddress::Tcp(format!("127.0.0.1:{}", fpm.port)),
            Duration::from_secs(20),
            1 << 20,
        );
        let params: Vec<(&'static str, std::borrow::Cow<'_, str>)> = vec![
            ("REQUEST_METHOD", "POST".into()),
            ("SCRIPT_FILENAME", script.into()),
            ("SCRIPT_NAME", "/recorder.php".into()),
            ("REQUEST_URI", uri.into()),
            ("QUERY_STRING", "token=s3cret-reset".into()),
            ("CONTENT_TYPE", "application/json".into()),
            ("CONTENT_LENGTH", body.len().to_string().into()),
        ];
        let reply = client.request(&params, body.as_bytes()).await;
        (reply.is_ok(), fpm)
    });
    let busy_uris = |doc: &serde_json::Value| -> Vec<String> {
        let mut uris: Vec<String> = doc["fpm"]["busy"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["uri"].as_str().map(str::to_owned))
            .collect();
        for u in doc["upstreams"].as_array().into_iter().flatten() {
            uris.extend(
                u["fpm"]["busy"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["uri"].as_str().map(str::to_owned)),
            );
        }
        uris
    };
    let deadline = Instant::now() + LONG;
    let with_token = loop {
        let (_, body) = http(port, "GET", "/status", Some(ADMIN_TOKEN))
            .await
            .unwrap();
        let uris = busy_uris(&serde_json::from_str(&body).unwrap());
        if uris.iter().any(|u| u.contains("recorder.php")) {
            break uris;
        }
        assert!(
            Instant::now() < deadline,
            "no busy child in /status: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        with_token.iter().any(|u| u.contains("?token=s3cret-reset")),
        "the operator sees the query: {with_token:?}"
    );
    let (code, body) = http(port, "GET", "/status", None).await.unwrap();
    assert_eq!(code, 200);
    let open = busy_uris(&serde_json::from_str(&body).unwrap());
    assert!(open.iter().any(|u| u.contains("recorder.php")), "{open:?}");
    assert!(!body.contains("s3cret"), "{body}");
    let (_, body) = http(port, "GET", "/status", Some("test-admin-token-wrong-one"))
        .await
        .unwrap();
    assert!(
        !body.contains("s3cret"),
        "a wrong token sees no query: {body}"
    );
    let (answered, _fpm) = web.await.unwrap();
    assert!(answered, "the web request was answered");
    drop(agent);
}

/// 64 idle connections (the default `admin.max_connections`) and then some: liveness and
/// readiness probes still answer at once (issue #22, hole 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_answers_while_the_connection_cap_is_held_by_idle_connections() {
    raise_fd_limit(1024);
    let ctx = TestCtx::new("adminprobe").await;
    let agent = start(&ctx);
    ctx.wait_ready().await;
    let port = ctx.admin_port;
    let mut idle = Vec::new();
    for wave in 0..3 {
        idle.extend(
            tokio::task::spawn_blocking(move || {
                (0..80)
                    .map(|_| {
                        let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                        s.set_nonblocking(true).unwrap();
                        s
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap(),
        );
        for path in ["/healthz", "/readyz"] {
            let started = Instant::now();
            let answer = http(port, "GET", path, None).await;
            assert!(
                matches!(answer, Some((200, _))) && started.elapsed() < Duration::from_secs(2),
                "wave {wave}: {path} answered {answer:?} after {:?} with {} idle connections",
                started.elapsed(),
                idle.len()
            );
        }
    }
    drop(idle);
    drop(agent);
}

/// A timed pause (`pause --for`) shows `paused_until`, survives a reload (SIGHUP) and ends by
/// itself; a later resume ends one early. Bad durations are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_pause_survives_sighup_and_ends_by_itself() {
    let ctx = TestCtx::new("adminpausefor").await;
    let config = ctx.write_config();
    let agent = start(&ctx);
    ctx.wait_ready().await;
    let port = ctx.admin_port;
    let config_arg = config.to_str().unwrap();

    for bad in ["0s", "8d", "soon"] {
        let (code, body) = post(
            port,
            &format!("/subjects/event/pause?for={bad}"),
            &bearer(ADMIN_TOKEN),
        )
        .await;
        assert_eq!(code, 400, "{bad}: {body}");
    }
    let (code, out) = agent_cli(&["--config", config_arg, "pause", "event", "--for", "8s"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("paused for 8s"), "{out}");
    let doc = ctx
        .wait_status("event paused until", |d| {
            d["subjects"]["event"]["paused_until"].is_string()
        })
        .await;
    assert_eq!(doc["subjects"]["event"]["state"], "paused");
    assert_eq!(doc["subjects"]["command"]["state"], "consuming");
    let (_, table) = agent_cli(&["--config", config_arg, "status"]);
    assert!(table.contains("paused until "), "{table}");

    // A reload keeps it (checked while the pause still has a second to run).
    let until = doc["subjects"]["event"]["paused_until_unix"]
        .as_u64()
        .unwrap();
    agent.signal(libc::SIGHUP);
    common::eventually(LONG, "the reload logged", || async {
        agent.log_text().contains("Configuration reloaded")
    })
    .await;
    let doc = common::status(port).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now + 1 < until,
        "the reload took the whole pause: cannot tell"
    );
    assert_eq!(
        doc["subjects"]["event"]["paused_until_unix"], until,
        "{doc}"
    );
    assert_eq!(doc["subjects"]["event"]["state"], "paused", "{doc}");
    // It ends by itself.
    ctx.wait_status("event consuming again", |d| {
        d["subjects"]["event"]["state"] == "consuming"
            && d["subjects"]["event"]["paused_until"].is_null()
    })
    .await;
    ctx.wait_ready().await;

    // A resume ends a timed pause early, and its timer then changes nothing.
    let (code, _) = post(port, "/subjects/event/pause?for=1h", &bearer(ADMIN_TOKEN)).await;
    assert_eq!(code, 200);
    ctx.wait_status("paused for an hour", |d| {
        d["subjects"]["event"]["operator_paused"] == true
    })
    .await;
    let (code, _) = post(port, "/subjects/event/resume", &bearer(ADMIN_TOKEN)).await;
    assert_eq!(code, 200);
    ctx.wait_ready().await;
}

/// The dashboard's own commands (a same-origin `Origin`) pass with the token; another site's,
/// or a `Sec-Fetch-Site: cross-site`, are refused even with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboards_origin_passes_and_other_sites_do_not() {
    let ctx = TestCtx::new("adminorigin").await;
    let _agent = start(&ctx);
    ctx.wait_ready().await;
    let port = ctx.admin_port;
    let send = |origin: String, extra: &'static str| async move {
        raw(
            port,
            &format!(
                "POST /subjects/command/pause HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: {origin}\r\n{extra}{}Content-Length: 0\r\nConnection: close\r\n\r\n",
                bearer(ADMIN_TOKEN)
            ),
        )
        .await
        .unwrap()
    };
    let (code, body) = send(format!("http://evil.example:{port}"), "").await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = send(
        format!("http://127.0.0.1:{port}"),
        "Sec-Fetch-Site: cross-site\r\n",
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(!paused(port, "command").await);
    let (code, body) = send(
        format!("http://127.0.0.1:{port}"),
        "Sec-Fetch-Site: same-origin\r\n",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("paused"), "{body}");
    // Without the token, the same-origin page is read-only.
    let (code, _) = raw(
        port,
        &format!("POST /subjects/command/resume HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(code, 401);
    // Every answer carries the CSP; the dashboard is served.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let head = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("<h1>subjects</h1>"), "{head}");
    assert!(head.contains("frame-ancestors 'none'"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
}

/// `GET /fleet` of the agent on `port`.
async fn fleet_doc(port: u16) -> serde_json::Value {
    let (_, body) = http(port, "GET", "/fleet", None).await.unwrap();
    serde_json::from_str(&body).unwrap()
}

/// A reachable agent `id` in a `/fleet` document.
fn lists(doc: &serde_json::Value, id: &str) -> bool {
    doc["agents"]
        .as_array()
        .is_some_and(|a| a.iter().any(|m| m["agent"] == id && m["reachable"] == true))
}

/// The fleet (#25 item 3): two agents with `admin.fleet` on see each other over the broker; B's
/// admin API pauses a subject of A and A answers; a command signed with another secret is
/// refused (not carried out, not answered), a replayed one and a stale one are refused with an
/// answer saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_sees_every_agent_and_one_pauses_a_subject_of_another() {
    use amqp_agent::broker::fleet::{DIRECT, SIGNATURE};
    use amqp_agent::fleet::{Action, Command, kind, sign};
    use lapin::options::{
        BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::{AMQPValue, FieldTable, LongString};

    const SECRET: &str = "fleet-secret-of-this-test-0123";
    let mut ctxs = Vec::new();
    for name in ["fleet-a", "fleet-b"] {
        let mut ctx = TestCtx::new(name).await;
        ctx.set("admin.fleet", true);
        ctx.set("admin.fleet_interval", "1s");
        ctx.set("admin.fleet_secret", SECRET);
        ctx.declare().await;
        ctxs.push(ctx);
    }
    let (a_ctx, b_ctx) = (&ctxs[0], &ctxs[1]);
    let mut a = start(a_ctx);
    let mut b = start(b_ctx);
    let (a_port, b_port) = (a_ctx.admin_port, b_ctx.admin_port);
    common::wait_ready(a_port, LONG).await;
    common::wait_ready(b_port, LONG).await;
    let a_id = fleet_doc(a_port).await["me"].as_str().unwrap().to_owned();
    let b_id = fleet_doc(b_port).await["me"].as_str().unwrap().to_owned();
    common::eventually(LONG, "each agent lists both", || async {
        let (da, db) = (fleet_doc(a_port).await, fleet_doc(b_port).await);
        lists(&da, &a_id) && lists(&da, &b_id) && lists(&db, &a_id) && lists(&db, &b_id)
    })
    .await;
    let doc = fleet_doc(b_port).await;
    let member = doc["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["agent"] == a_id.as_str())
        .unwrap();
    assert_eq!(member["subjects"]["event"]["queue"], a_ctx.queue("event"));
    assert_eq!(member["pid"], a.child.id());

    // B pauses A's event subject for a minute, through B's admin API and the broker.
    let path = format!("/fleet/{a_id}/subjects/event/pause?for=60s");
    let (code, text) = post(b_port, &path, "").await;
    assert_eq!(code, 401, "a command needs the token: {text}");
    let (code, text) = post(b_port, &path, &bearer(ADMIN_TOKEN)).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("paused for 60s"), "{text}");
    assert!(paused(a_port, "event").await);
    let (_, status) = http(a_port, "GET", "/status", None).await.unwrap();
    assert!(status.contains("\"paused_until\":\"20"), "{status}");

    // Commands written by hand: a tester queue gets the replies.
    let (conn, channel) = common::confirm_channel(&a_ctx.amqp_url).await;
    let tester = format!("tester-{}", a_ctx.id);
    channel
        .queue_declare(
            tester.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            tester.as_str().into(),
            DIRECT.into(),
            tester.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut replies = channel
        .basic_consume(
            tester.as_str().into(),
            "tester".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let send = |body: Vec<u8>, signature: String| {
        let channel = channel.clone();
        let to = a_id.clone();
        async move {
            let mut headers = FieldTable::default();
            headers.insert(
                SIGNATURE.into(),
                AMQPValue::LongString(LongString::from(signature)),
            );
            channel
                .basic_publish(
                    DIRECT.into(),
                    to.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    lapin::BasicProperties::default()
                        .with_type(kind::COMMAND.into())
                        .with_headers(headers),
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    let now_ms = || {
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap()
    };
    let command = |id: &str, issued: u64, action: Action| {
        serde_json::to_vec(&Command {
            id: id.to_owned(),
            from: tester.clone(),
            to: a_id.clone(),
            issued_unix_ms: issued,
            action,
        })
        .unwrap()
    };
    let resume = command(
        "c-1",
        now_ms(),
        Action::Resume {
            subject: "event".into(),
        },
    );
    send(
        resume.clone(),
        sign(SECRET.as_bytes(), kind::COMMAND, &resume),
    )
    .await;
    let reply = next_reply(&mut replies).await;
    assert!(
        reply.ok && reply.command == "c-1" && reply.from == a_id,
        "{reply:?}"
    );
    assert!(!paused(a_port, "event").await);

    // The same command again: refused as a replay.
    send(
        resume.clone(),
        sign(SECRET.as_bytes(), kind::COMMAND, &resume),
    )
    .await;
    let reply = next_reply(&mut replies).await;
    assert!(!reply.ok && reply.message.contains("replayed"), "{reply:?}");

    // Signed with another secret: neither carried out nor answered. The next valid command,
    // behind it on A's queue, is answered first, and A's subject was never paused.
    let forged = command(
        "c-2",
        now_ms(),
        Action::Pause {
            subject: "event".into(),
            for_secs: None,
        },
    );
    send(
        forged.clone(),
        sign(b"not-the-fleet-secret-000", kind::COMMAND, &forged),
    )
    .await;
    let stale = command(
        "c-3",
        now_ms() - 120_000,
        Action::Pause {
            subject: "event".into(),
            for_secs: None,
        },
    );
    send(
        stale.clone(),
        sign(SECRET.as_bytes(), kind::COMMAND, &stale),
    )
    .await;
    let reply = next_reply(&mut replies).await;
    assert_eq!(
        reply.command, "c-3",
        "the forged command got no answer: {reply:?}"
    );
    assert!(!reply.ok && reply.message.contains("60 s"), "{reply:?}");
    assert!(
        !paused(a_port, "event").await,
        "neither the forged nor the stale command ran"
    );
    drop(conn);

    // A stopped agent stays listed, as unreachable, until it is forgotten.
    a.signal(libc::SIGTERM);
    assert!(a.wait_exit(LONG).success());
    common::eventually(LONG, "A shown unreachable on B", || async {
        let doc = fleet_doc(b_port).await;
        doc["agents"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["agent"] == a_id.as_str() && m["reachable"] == false)
        })
    })
    .await;
    b.signal(libc::SIGTERM);
    assert!(b.wait_exit(LONG).success());
}

/// The next fleet reply on the tester's consumer (10 s at most).
async fn next_reply(replies: &mut lapin::Consumer) -> amqp_agent::fleet::Reply {
    use futures_util::StreamExt as _;
    let delivery = tokio::time::timeout(Duration::from_secs(10), replies.next())
        .await
        .expect("a reply within 10 s")
        .unwrap()
        .unwrap();
    serde_json::from_slice(&delivery.data).unwrap()
}

/// A queue the depth task reads that goes missing (the dead-letter queue, deleted by an
/// operator) is read again only every 15 ticks of `fpm.status_interval`: the broker answers each
/// read of a missing queue by closing the channel, which lapin logs at ERROR ("Channel closed",
/// 404) and which costs the connection a channel number. Before, that was one ERROR line per
/// tick until the next dead letter declared the queue again. The queue's depth is read again
/// once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dead_letter_queue_is_read_again_only_after_its_recheck() {
    const TICKS: u64 = 10;
    let mut ctx = TestCtx::new("depth-missing").await;
    ctx.set("fpm.status_interval", "100ms");
    ctx.declare().await;
    let mut agent = start(&ctx);
    let port = ctx.admin_port;
    ctx.wait_status("consuming", |s| s["subjects"]["event"]["consuming"] == true)
        .await;
    let (code, _) = post(port, "/subjects/event/pause?for=1h", &bearer(ADMIN_TOKEN)).await;
    assert_eq!(code, 200);
    wait_paused(port, "event", true).await;
    let dead = ctx.dead_queue("event");
    ctx.delete_queue(&dead).await;
    let gone = Instant::now();
    // At least TICKS ticks with the queue missing: each message published to the paused queue
    // shows in `/status` only after a tick has read the depth.
    for k in 1..=TICKS {
        ctx.publish_json("event", &format!("tick-{k}"), "ok").await;
        ctx.wait_status(&format!("queue depth {k}"), |s| {
            s["subjects"]["event"]["queue_depth"] == k
        })
        .await;
    }
    let elapsed = gone.elapsed();
    let text = agent.log_text();
    let refused = text
        .lines()
        .filter(|l| l.contains("Channel closed") && l.contains(dead.as_str()))
        .count();
    // One read when it went missing, then one per recheck (15 ticks of 100 ms), at most.
    let bound = 2 + (elapsed.as_secs_f64() / 1.5) as usize;
    assert!(
        (1..=bound).contains(&refused),
        "{refused} reads of the missing queue in {elapsed:?} ({TICKS} ticks or more), at most {bound} expected:\n{text}"
    );
    assert!(text.contains("Queue not found"), "{text}");
    // Back: the next dead letter declares it again, and its depth shows after the recheck.
    let (code, _) = post(port, "/subjects/event/resume", &bearer(ADMIN_TOKEN)).await;
    assert_eq!(code, 200);
    ctx.publish_json("event", "to-dead", "status:422").await;
    ctx.wait_status("the dead-letter queue's depth", |s| {
        s["subjects"]["event"]["dead"] == 1
    })
    .await;
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(LONG).code(), Some(0));
}
