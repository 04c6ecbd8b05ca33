//! The framework apps under tests/apps, served by the shared php-fpm pool: copied with the
//! repository's PHP packages to the pool's directory (same layout, so their relative autoloading
//! holds), published to with the app's own bus, and their handlers' records read back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;

use amqp_agent::config::Config;

use super::{AMQP_URL, TestCtx, copy_tree, eventually, fpm, header_str, set_key};

static COPIED: OnceLock<()> = OnceLock::new();

/// The copy of `tests/apps/<name>` the pool serves.
pub fn app_dir(name: &str) -> PathBuf {
    let dir = &fpm().dir;
    COPIED.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        copy_tree(&root.join("php"), &dir.join("php"));
        for app in ["symfony", "laravel"] {
            copy_tree(
                &root.join("tests/apps").join(app),
                &dir.join("tests/apps").join(app),
            );
        }
    });
    dir.join("tests/apps").join(name)
}

/// The agent config of `ctx`, serving `script` at the packages' route.
pub fn config(ctx: &TestCtx, script: &Path) -> Arc<Config> {
    let ctx_toml = ctx.toml_with(|doc| {
        set_key(doc, "fpm.request_uri", "/_agent/messages/{subject}");
        set_key(doc, "fpm.script_filename", script.display().to_string());
    });
    Arc::new(Config::from_toml(&ctx_toml, Path::new("test.toml"), |_| None).expect("valid config"))
}

/// Runs `php <script> <args>` with the test's queues and `app_env` in the environment; panics on
/// failure.
pub fn php(script: &Path, ctx: &TestCtx, args: &[&str], app_env: &[(&str, &str)]) -> String {
    let out = Command::new("php")
        .arg(script)
        .args(args)
        .env("AGENT_AMQP_DSN", format!("{AMQP_URL}/agent"))
        .env("AGENT_EVENT_QUEUE", ctx.queue("event"))
        .env("AGENT_COMMAND_QUEUE", ctx.queue("command"))
        .env("RECORD_DIR", fpm().dir.join("records"))
        .envs(app_env.iter().copied())
        .output()
        .expect("php CLI");
    assert!(
        out.status.success(),
        "{} failed: {}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The front controller php-fpm serves for this test: the app's `public/<front>`, or with
/// `app_env`, a script that sets those variables and requires it: what they would do in the pool's
/// environment, which every test shares.
pub fn front_controller(
    app: &Path,
    ctx: &TestCtx,
    front: &str,
    app_env: &[(&str, &str)],
) -> PathBuf {
    let index = app.join("public").join(front);
    if app_env.is_empty() {
        return index;
    }
    let mut php = String::from(
        "<?php\n// Written by tests/it/common/apps.rs: the pool's environment, for this test only.\n",
    );
    for (name, value) in app_env {
        assert!(
            (name.chars().chain(value.chars())).all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "plain names and values only: {name}={value}"
        );
        php.push_str(&format!(
            "$_SERVER['{name}'] = '{value}';\nputenv('{name}={value}');\n"
        ));
    }
    php.push_str(&format!("require __DIR__ . '/{front}';\n"));
    let script = app.join(format!("public/index-{}.php", ctx.id));
    std::fs::write(&script, php).unwrap();
    script
}

/// The handlers' records of app `app` for this test (complete lines only).
pub fn records(app: &str, ctx: &TestCtx) -> Vec<Value> {
    let path = fpm()
        .dir
        .join("records")
        .join(format!("{app}-{}.jsonl", ctx.id));
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect()
}

/// Handled records (not the failed first attempts) by message id.
pub fn handled(records: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut map: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.get("failed").is_none()) {
        map.entry(r["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(r.clone());
    }
    map
}

/// The trace id the publishers derive from a message id: its bytes in hex, left-padded with 0.
pub fn trace_id_of(id: &str) -> String {
    let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{hex:0>32}")
}

/// The scenario against app `name`: its publisher (`bin/publish.php`) sends 100 events
/// and 100 commands, `e7` and `c7` fail once with `fail_once`, `c13` always with `fail_always`.
/// Every other message reaches its handler exactly once with the traceparent set at dispatch,
/// the two are retried once and then handled, and `c13` ends in `.dead` as `rejected` (422).
/// The events go in batches either way, and at least one batch request is checked to have been
/// sent: with `event_batches` (lines for `[subjects.event]`: `batch_max`, `batch_wait`) as those
/// say, without them by the default `batch_max` (the packages' acks say they take batches). The
/// commands have `batch_max = 1`: one request per message through the framework.
pub async fn hundred_of_each(
    name: &str,
    fail_once: &str,
    fail_always: &str,
    event_batches: Option<&str>,
) {
    hundred_of_each_with(
        name,
        fail_once,
        fail_always,
        event_batches,
        "index.php",
        &[],
    )
    .await;
}

/// [`hundred_of_each`] through the app's `public/<front>` (`index.php`, or the Symfony app's slim
/// `agent.php`), with `app_env` in the environment of the publisher and of the app php-fpm
/// serves (e.g. the Symfony app's `APP_MESSENGER_SERIALIZER`). For the Symfony app, each handled
/// record must also show the publisher's stamps as the transport serializer decoded them: the
/// `MessageIdStamp` is the agent's message id, the `TraceparentStamp` the one set at dispatch.
pub async fn hundred_of_each_with(
    name: &str,
    fail_once: &str,
    fail_always: &str,
    event_batches: Option<&str>,
    front: &str,
    app_env: &[(&str, &str)],
) {
    const WAIT: Duration = Duration::from_secs(90);
    let mut ctx = TestCtx::new(name).await;
    if let Some(lines) = event_batches {
        ctx.event_extra = lines.to_owned();
    }
    ctx.set("subjects.command.batch_max", 1);
    let app = app_dir(name);
    let script = front_controller(&app, &ctx, front, app_env);
    let agent = amqp_agent::agent::Agent::start(config(&ctx, &script))
        .await
        .unwrap();
    agent.wait_consuming(WAIT).await.unwrap(); // the agent declares the queues
    let (e7, c7, c13) = (
        format!("e7:{fail_once}"),
        format!("c7:{fail_once}"),
        format!("c13:{fail_always}"),
    );
    let out = php(
        &app.join("bin/publish.php"),
        &ctx,
        &[&ctx.id, "100", "100", &e7, &c7, &c13],
        app_env,
    );
    assert!(
        out.contains("published 100 events and 100 commands"),
        "{out}"
    );

    eventually(WAIT, "199 acked and 1 dead-lettered", || async {
        let s = agent.stats();
        s["event"].acked == 100 && s["command"].acked == 99 && s["command"].dead_lettered == 1
    })
    .await;

    let records = records(name, &ctx);
    let handled = handled(&records);
    let expected: Vec<String> = (0..100)
        .map(|i| format!("e{i}"))
        .chain((0..100).filter(|&i| i != 13).map(|i| format!("c{i}")))
        .collect();
    assert_eq!(handled.len(), expected.len(), "every message handled");
    for id in &expected {
        let recs = &handled[id];
        assert_eq!(recs.len(), 1, "{id} handled once: {recs:?}");
        let kind = if id.starts_with('e') {
            "event"
        } else {
            "command"
        };
        assert_eq!(recs[0]["kind"], kind, "{id}");
        // The traceparent set at dispatch arrives in the handler, as the parent of the agent's
        // span: the same trace id.
        let tp = recs[0]["traceparent"].as_str().unwrap_or_default();
        assert_eq!(tp.get(3..35), Some(trace_id_of(id).as_str()), "{id}: {tp}");
        if name == "symfony" {
            let agent_id = recs[0]["agent_id"].as_str().unwrap_or_default();
            assert!(!agent_id.is_empty(), "{id}: {:?}", recs[0]);
            assert_eq!(
                recs[0]["stamp_id"], agent_id,
                "{id}: MessageIdStamp decoded"
            );
            let stamped = recs[0]["stamp_traceparent"].as_str().unwrap_or_default();
            assert_eq!(
                stamped.get(3..35),
                Some(trace_id_of(id).as_str()),
                "{id}: TraceparentStamp decoded: {stamped}"
            );
        }
    }
    let mut failed: Vec<&str> = records
        .iter()
        .filter(|r| r.get("failed").is_some())
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    failed.sort_unstable();
    assert_eq!(failed, ["c7", "e7"], "the first attempts that failed");
    assert!(!handled.contains_key("c13"));
    // The publishers set every message_id (Messenger: the bundle's publish middleware).
    let metrics = agent.handle().metrics();
    for subject in ["event", "command"] {
        let label = amqp_agent::telemetry::metrics::SubjectLabel {
            subject: subject.to_owned(),
        };
        assert_eq!(metrics.missing_message_id.get_or_create(&label).get(), 0);
    }
    assert_eq!(agent.stats()["event"].retried, 1);
    assert_eq!(agent.stats()["command"].retried, 1);
    let text = metrics.encode();
    let batches = text
        .lines()
        .find_map(|l| l.strip_prefix("amqp_agent_batch_size_count{subject=\"event\"} "))
        .map_or(0, |n| n.trim().parse::<u64>().unwrap());
    assert!(batches > 0, "{batches} batch requests of events");
    let singles = text
        .lines()
        .find_map(|l| l.strip_prefix("amqp_agent_batch_size_count{subject=\"command\"} "))
        .map_or(0, |n| n.trim().parse::<u64>().unwrap());
    assert_eq!(singles, 0, "commands go one per request (batch_max = 1)");

    let dead = ctx.drain_dead("command").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header_str(&dead[0].0, "x-agent-reason").as_deref(),
        Some("rejected")
    );
    assert_eq!(
        header_str(&dead[0].0, "x-agent-status").as_deref(),
        Some("422")
    );
    assert!(ctx.drain_dead("event").await.is_empty());

    agent.drain().await;
}

/// Hostile messages against app `name` (issue #22, hole 7): its publisher sends 3 events and 3
/// commands; then `bin/hostile.php` (run with `hostile_args`, `{test}` and `{gadget}` replaced
/// by the test's id and the file its gadget would append to when unserialized) prints what a
/// publisher with nothing but publish rights could send, published raw. Each one must end in
/// `.dead` as rejected, 422, with a last error containing the reason `refused` gives for its id;
/// the gadget never runs, and the six genuine messages are each handled once.
pub async fn hostile_messages_are_dead_lettered(
    name: &str,
    hostile_args: &[&str],
    refused: &[(&str, &str)],
) {
    use base64::Engine as _;

    const WAIT: Duration = Duration::from_secs(90);
    let ctx = TestCtx::new(name).await;
    let app = app_dir(name);
    let script = front_controller(&app, &ctx, "index.php", &[]);
    let agent = amqp_agent::agent::Agent::start(config(&ctx, &script))
        .await
        .unwrap();
    agent.wait_consuming(WAIT).await.unwrap();
    let out = php(
        &app.join("bin/publish.php"),
        &ctx,
        &[&ctx.id, "3", "3"],
        &[],
    );
    assert!(out.contains("published 3 events and 3 commands"), "{out}");

    let gadget = fpm().dir.join(format!("records/gadget-{}", ctx.id));
    let gadget_arg = gadget.display().to_string();
    let args: Vec<&str> = hostile_args
        .iter()
        .map(|a| match *a {
            "{test}" => ctx.id.as_str(),
            "{gadget}" => gadget_arg.as_str(),
            other => other,
        })
        .collect();
    let mut dead_by_subject: BTreeMap<String, u64> = BTreeMap::new();
    for line in php(&app.join("bin/hostile.php"), &ctx, &args, &[]).lines() {
        let msg: Value = serde_json::from_str(line).expect("a JSON line");
        let id = msg["id"].as_str().unwrap();
        let subject = msg["subject"].as_str().unwrap_or("event");
        let body = base64::engine::general_purpose::STANDARD
            .decode(msg["body"].as_str().unwrap())
            .unwrap();
        let props = lapin::BasicProperties::default().with_message_id(id.into());
        ctx.publish(subject, &body, props).await;
        *dead_by_subject.entry(subject.to_owned()).or_default() += 1;
    }
    assert_eq!(
        dead_by_subject.values().sum::<u64>(),
        refused.len() as u64,
        "one reason per hostile message"
    );

    eventually(
        WAIT,
        "6 acked and the hostile ones dead-lettered",
        || async {
            let s = agent.stats();
            ["event", "command"].iter().all(|subject| {
                s[*subject].acked == 3
                    && s[*subject].dead_lettered
                        == dead_by_subject.get(*subject).copied().unwrap_or(0)
            })
        },
    )
    .await;

    let mut dead = ctx.drain_dead("event").await;
    dead.extend(ctx.drain_dead("command").await);
    assert_eq!(dead.len(), refused.len());
    for (id, reason) in refused {
        let (props, _) = dead
            .iter()
            .find(|(p, _)| p.message_id().as_ref().map(|m| m.as_str()) == Some(*id))
            .unwrap_or_else(|| panic!("{id} dead-lettered"));
        assert_eq!(
            header_str(props, "x-agent-reason").as_deref(),
            Some("rejected"),
            "{id}"
        );
        assert_eq!(
            header_str(props, "x-agent-status").as_deref(),
            Some("422"),
            "{id}"
        );
        let last_error = header_str(props, "x-agent-last-error").unwrap_or_default();
        assert!(last_error.contains(reason), "{id}: {last_error}");
    }
    assert!(!gadget.exists(), "the gadget was never unserialized");

    let handled = handled(&records(name, &ctx));
    let expected = ["c0", "c1", "c2", "e0", "e1", "e2"];
    assert_eq!(
        handled.keys().collect::<Vec<_>>(),
        expected,
        "only the genuine messages ran"
    );
    assert!(handled.values().all(|r| r.len() == 1), "{handled:?}");

    agent.drain().await;
}
