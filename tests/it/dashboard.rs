//! The web dashboard in a real browser: Debian's chromium, driven by Playwright
//! (`tests/dashboard/drive.mjs`), against the agent binary on the real RabbitMQ and a php-fpm
//! pool with its status page. `scripts/test` installs chromium and playwright-core.
//!
//! What it shows: the overview lists every subject with the numbers `/status` has; a queue
//! name and a request URI holding markup render as text and run nothing (no dialog, no console
//! error, no CSP violation); a subject paused from the page for a few seconds (the token typed
//! in) shows "paused until …", consumes nothing meanwhile and resumes by itself; on the Dead
//! letters page, a filter on reason selects 3 of 10 dead letters and replays them (the queue
//! counts read over AMQP agree), and a body holding markup, invalid UTF-8 or a megabyte on one
//! line shows as text. Screenshots
//! of every page go to `target/dashboard/` (linked from docs/dashboard.md).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::procs::{AgentProcess, PrivateFpm, http};
use common::{ADMIN_TOKEN, TestCtx, WAIT, eventually};
use serde_json::Value;

const HOSTILE: &str = "<script>alert(1)</script>\"><img src=x onerror=alert(2)>";
/// The trace of a dead letter.
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
/// The start of a dead letter's body.
const BODY_MARKUP: &str = "<script>alert(5)</script>\"><img src=x onerror=alert(6)>";

fn driver_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_in_chromium() {
    assert!(
        chromium().exists() && driver_dir().join("node_modules/playwright-core").exists(),
        "chromium or playwright-core missing: run scripts/test (it installs both), or \
         `apt-get install chromium` and `npm ci` in tests/dashboard"
    );
    let fpm = PrivateFpm::start_with("dash", 6, Some("/fpm-status"));
    let mut ctx = TestCtx::new("dash").await;
    ctx.fpm_port = fpm.port;
    // FPM's status page shows SCRIPT_NAME: a front controller at `/<script>alert(3)</script>.php`
    // under the document root (a directory `<script>alert(3)<` holding `script>.php`).
    let root = common::fpm().dir.join(format!("dash-root-{}", ctx.id));
    std::fs::create_dir_all(root.join("<script>alert(3)<")).unwrap();
    let script = root.join("<script>alert(3)<").join("script>.php");
    std::fs::copy(driver_dir().join("app.php"), &script).unwrap();
    ctx.script = script;
    ctx.pool_size = 2;
    ctx.fpm_extra =
        "status_path = \"/fpm-status\"\nstatus_interval = \"200ms\"\nslow_after = \"700ms\"\n"
            .to_owned();
    // A body over this is dead-lettered as `body_too_large` without PHP (the third reason).
    ctx.set("limits.max_body_bytes", 2048);
    ctx.set(
        "admin.trace_url",
        "http://traces.invalid/trace/{trace_id}?from=agent",
    );
    let hostile_queue = format!("t.{}.{HOSTILE}", ctx.id);
    ctx.set("subjects.command.queue", hostile_queue.as_str());
    ctx.set("fpm.document_root", root.to_str().unwrap());
    let config = ctx.write_config();
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let agent = AgentProcess::start(&config, &log);
    ctx.wait_ready().await;

    // Some traffic on both subjects, then a quiet agent whose numbers hold still.
    for i in 0..4 {
        ctx.publish_json("event", &format!("e{i}"), "ok").await;
        ctx.publish_json_to("", &hostile_queue, &format!("c{i}"), "ok")
            .await;
    }
    let port = ctx.admin_port;
    eventually(WAIT, "8 messages acked", || async move {
        let Some((200, body)) = http(port, "GET", "/status", None).await else {
            return false;
        };
        let doc: Value = serde_json::from_str(&body).unwrap();
        ["event", "command"]
            .iter()
            .all(|s| doc["subjects"][s]["acked"] == 4 && doc["subjects"][s]["in_flight"] == 0)
    })
    .await;

    // Ten dead letters with three reasons: 3 rejected (404, fixed by the time they are
    // replayed), 4 max_attempts (503 three times), 3 body_too_large whose bodies hold markup,
    // invalid UTF-8 and a megabyte on one line.
    let dead = ctx.dead_queue("event");
    for i in 0..3 {
        let token = format!("{}-{i}", ctx.id);
        ctx.publish_json(
            "event",
            &format!("rejected-{i}"),
            &format!("reject-once:{token}"),
        )
        .await;
    }
    for i in 0..4 {
        // The first carries its publisher's trace context: the page links its trace id.
        let mut headers = lapin::types::FieldTable::default();
        if i == 0 {
            headers.insert(
                "traceparent".into(),
                lapin::types::AMQPValue::LongString(
                    format!("00-{TRACE_ID}-b7ad6b7169203331-01").into(),
                ),
            );
        }
        let id = format!("failing-{i}");
        let body = serde_json::json!({"id": id, "behave": "status:503"}).to_string();
        let props = lapin::BasicProperties::default()
            .with_message_id(id.as_str().into())
            .with_delivery_mode(2)
            .with_headers(headers);
        ctx.publish("event", body.as_bytes(), props).await;
    }
    let padding = "x".repeat(3000);
    let bodies: [(&str, Vec<u8>); 3] = [
        ("big-script", format!("{BODY_MARKUP}{padding}").into_bytes()),
        (
            "big-binary",
            [b"\xff\xfe<b>not utf-8</b>".as_slice(), padding.as_bytes()].concat(),
        ),
        ("big-line", vec![b'A'; 1 << 20]),
    ];
    for (id, body) in bodies {
        let props = lapin::BasicProperties::default()
            .with_message_id(id.into())
            .with_content_type("text/html".into())
            .with_delivery_mode(2);
        ctx.publish("event", &body, props).await;
    }
    eventually(WAIT, "10 dead letters", || async {
        ctx.queue_len(&dead).await == 10
    })
    .await;

    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard");
    let run = Command::new("node")
        .arg(driver_dir().join("drive.mjs"))
        .env("BASE", format!("http://127.0.0.1:{port}"))
        .env("TOKEN", ADMIN_TOKEN)
        .env("OUT", &out)
        .env("AGENT_BIN", env!("CARGO_BIN_EXE_amqp-agent"))
        .env("CONFIG", &config)
        .env("HOSTILE", &hostile_queue)
        .env("BODY_MARKUP", BODY_MARKUP)
        .env("CHROMIUM", chromium())
        .output()
        .expect("node runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "the browser run failed:\n{stderr}\nagent log:\n{}",
        agent.log_text()
    );
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();

    // The overview's numbers are /status's (taken on the quiet agent just before the page).
    let before = &result["status_before"]["subjects"];
    let rows = result["overview"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        let name = row["subject"].as_str().unwrap();
        let s = &before[name];
        let cell = |f: &str| row["cells"][f].as_str().unwrap().to_owned();
        for field in [
            "pool_size",
            "target_pool_size",
            "busy",
            "idle",
            "in_flight",
            "received",
            "acked",
        ] {
            let want = match field {
                "target_pool_size" => s["target_pool_size"].to_string(),
                f => s[f].to_string(),
            };
            assert_eq!(cell(field), want, "{name}.{field}: page vs /status");
        }
        assert_eq!(cell("queue"), s["queue"].as_str().unwrap());
        assert_eq!(cell("pool_mode"), s["pool_mode"].as_str().unwrap());
        assert_eq!(
            cell("min_max"),
            format!("{}–{}", s["min_pool_size"], s["max_pool_size"])
        );
        assert_eq!(cell("state"), "consuming");
        assert_eq!(row["state"], s["state"]);
        // FPM runtime p50 / p99 over the last minute: both subjects had requests in it.
        let q = &s["runtime_ms_last_minute"];
        assert!(q["n"].as_u64().unwrap() >= 4, "{name}: {q}");
        assert!(
            q["p50"].as_f64().unwrap() <= q["p99"].as_f64().unwrap(),
            "{q}"
        );
        assert!(
            q["p99"].as_f64().unwrap() <= q["max"].as_f64().unwrap(),
            "{q}"
        );
        let shown = cell("runtime_quantiles");
        assert!(
            shown.contains(" / ") && shown.ends_with(" ms"),
            "{name}: {shown}"
        );
    }
    assert_eq!(result["dialogs"], serde_json::json!([]));
    assert_eq!(result["console_errors"], serde_json::json!([]));
    assert!(
        result["paused_text"]
            .as_str()
            .unwrap()
            .starts_with("paused until ")
    );
    for shot in [
        "overview",
        "metrics",
        "fpm",
        "actions",
        "overview-paused",
        "dead-letters",
        "dead-letter",
        "dead-letters-replayed",
    ] {
        assert!(out.join(format!("{shot}.png")).exists(), "{shot}.png");
    }

    // The reason filter selected the 3 rejected of the 10; the page replayed them. Over AMQP:
    // 7 still dead, none waiting in the subject's queue (the 3 were handled: acked, not
    // dead-lettered again).
    assert_eq!(result["dead"]["listed"], 10);
    assert_eq!(
        result["dead"]["trace_link"],
        serde_json::json!([
            TRACE_ID,
            format!("http://traces.invalid/trace/{TRACE_ID}?from=agent")
        ])
    );
    assert_eq!(
        result["dead"]["filtered"],
        serde_json::json!(["rejected", "rejected", "rejected"])
    );
    assert!(
        result["dead"]["replay_text"]
            .as_str()
            .unwrap()
            .starts_with("Replayed 3 message(s); 7 left"),
        "{}",
        result["dead"]["replay_text"]
    );
    eventually(WAIT, "7 dead letters and an empty queue", || async {
        ctx.queue_len(&dead).await == 7 && ctx.queue_len(&ctx.queue("event")).await == 0
    })
    .await;
    let doc = ctx
        .wait_status("the 3 replays handled", |doc| {
            doc["subjects"]["event"]["in_flight"] == 0
        })
        .await;
    assert_eq!(doc["subjects"]["event"]["dead_lettered"], 10);
    // The admin API behind the page: the token is needed to read dead letters too.
    for (method, path) in [
        ("GET", "/dead-letters/event"),
        ("GET", "/dead-letters/event/message?key=0123456789abcdef"),
        (
            "POST",
            "/dead-letters/event/discard?reason=nothing-has-this",
        ),
        ("GET", "/dead-letter-jobs/0123456789abcdef"),
    ] {
        let (code, _) = http(port, method, path, None).await.unwrap();
        assert_eq!(code, 401, "{method} {path} without the token");
    }
    let (code, body) = http(
        port,
        "GET",
        "/dead-letters/event?status=6xx",
        Some(ADMIN_TOKEN),
    )
    .await
    .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("status"), "{body}");
    let (code, body) = http(
        port,
        "GET",
        "/dead-letters/event?reason=max_attempts",
        Some(ADMIN_TOKEN),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (page["total"].as_u64(), page["matched"].as_u64()),
        (Some(7), Some(4))
    );
    assert_eq!(page["complete"], true);
    assert_eq!(
        result["dead"]["acked_after"].as_u64().unwrap(),
        result["dead"]["acked_before"].as_u64().unwrap() + 3
    );
    drop(fpm);
}

/// The fleet (#25 item 3) in a real browser: two agent binaries with `admin.fleet` on; agent B's
/// Fleet page lists both agents and both subjects of each, pauses A's `event` subject for a
/// minute over the broker (A's `/status` says so, and B's page after its refresh), and resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_page_in_chromium() {
    assert!(
        chromium().exists() && driver_dir().join("node_modules/playwright-core").exists(),
        "chromium or playwright-core missing: run scripts/test"
    );
    let mut agents = Vec::new();
    let mut ctxs = Vec::new();
    for name in ["dash-fleet-a", "dash-fleet-b"] {
        let mut ctx = TestCtx::new(name).await;
        ctx.set("admin.fleet", true);
        ctx.set("admin.fleet_interval", "1s");
        ctx.set("admin.fleet_secret", "fleet-secret-of-the-browser-test");
        ctx.declare().await;
        let config = ctx.write_config();
        let log = common::fpm().dir.join(format!("{}.log", ctx.id));
        agents.push(AgentProcess::start(&config, &log));
        ctx.wait_ready().await;
        ctxs.push(ctx);
    }
    let id_of = |port: u16| async move {
        let (_, body) = http(port, "GET", "/fleet", None).await.unwrap();
        let doc: Value = serde_json::from_str(&body).unwrap();
        doc["me"].as_str().unwrap().to_owned()
    };
    let (a_port, b_port) = (ctxs[0].admin_port, ctxs[1].admin_port);
    let (a_id, b_id) = (id_of(a_port).await, id_of(b_port).await);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard");
    let run = Command::new("node")
        .arg(driver_dir().join("fleet.mjs"))
        .env("BASE", format!("http://127.0.0.1:{b_port}"))
        .env("A_BASE", format!("http://127.0.0.1:{a_port}"))
        .env("A_ID", &a_id)
        .env("B_ID", &b_id)
        .env("TOKEN", ADMIN_TOKEN)
        .env("OUT", &out)
        .env("CHROMIUM", chromium())
        .output()
        .expect("node runs");
    assert!(
        run.status.success(),
        "the browser run failed:\n{}\nagent A log:\n{}\nagent B log:\n{}",
        String::from_utf8_lossy(&run.stderr),
        agents[0].log_text(),
        agents[1].log_text()
    );
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("fleet-result.json")).unwrap())
            .unwrap();
    assert!(
        result["pause_answer"]
            .as_str()
            .unwrap()
            .contains("event: paused for 60s"),
        "{result}"
    );
    assert!(
        result["state_text"]
            .as_str()
            .unwrap()
            .starts_with("paused until 20"),
        "{result}"
    );
    assert_eq!(result["resumed"], true);
    assert_eq!(result["compared_with_status"], true);
    assert_eq!(result["console_errors"], serde_json::json!([]));
    assert!(out.join("fleet.png").exists());
    for mut agent in agents {
        agent.signal(libc::SIGTERM);
        assert!(agent.wait_exit(WAIT).success());
    }
}
