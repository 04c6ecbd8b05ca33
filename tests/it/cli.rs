//! The binary's command line: config errors are clear and name the key.

use crate::common;

use std::process::Command;

use common::{edit_toml, set_key};

fn check(text: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!(
        "amqp-agent-cli-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_amqp-agent"))
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("AMQP_AGENT_AMQP_URL")
        .env_remove("AMQP_AGENT_SIGNING_SECRET")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

const GOOD: &str = r#"
[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
[fpm]
address = "127.0.0.1:9000"
script_filename = "/srv/app/public/index.php"
signing_secrets = ["0123456789abcdef0123"]
[subjects.event]
queue = "messages.event"
"#;

#[test]
fn a_valid_file_passes_and_hides_the_password() {
    let (ok, out) = check(GOOD);
    assert!(ok, "{out}");
    assert!(out.contains("amqp://guest:***@"), "{out}");
    assert!(!out.contains("guest:guest"), "{out}");
}

#[test]
fn bad_files_stop_with_a_message_naming_the_key() {
    let with = |path: &str, value: toml::Value| edit_toml(GOOD, |doc| set_key(doc, path, value));
    let cases = [
        (with("fpm.timeuot", "3s".into()), "timeuot"),
        (with("subjects.event.pool_size", (-1).into()), "pool_size"),
        (with("fpm.address", "localhost".into()), "fpm.address"),
        (with("retry.delays", vec!["1 fortnight"].into()), "delays"),
        ("[amqp\n".to_owned(), "invalid config file"),
    ];
    for (text, key) in cases {
        let (ok, out) = check(&text);
        assert!(!ok, "accepted: {text}");
        assert!(out.contains(key), "`{key}` not named in: {out}");
    }
}

#[test]
fn a_missing_file_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_amqp-agent"))
        .args(["check-config", "--config", "/nonexistent/agent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent.toml"));
}

/// `dead-letters list|replay|discard` with each filter, on the real broker. The dead letters
/// are written into `<queue>.dead` as the agent (and, for one, the broker) writes them; no agent
/// runs, so what is replayed stays in the subject's queue to be counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_replayed_and_discarded_by_filter() {
    dead_letters_by_filter("classic").await;
}

/// The same on quorum queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_in_a_quorum_queue_are_listed_replayed_and_discarded_by_filter() {
    dead_letters_by_filter("quorum").await;
}

async fn dead_letters_by_filter(queue_type: &str) {
    use lapin::BasicProperties;
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};

    let mut ctx = common::TestCtx::new("dlfilter").await;
    ctx.set("amqp.queue_type", queue_type);
    let dead = ctx.dead_queue("event");
    let main = ctx.queue("event");
    let mut args = FieldTable::default();
    if queue_type == "quorum" {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    for queue in [&main, &dead] {
        ctx.channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                args.clone(),
            )
            .await
            .unwrap();
    }
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // id, reason, status, type (property or Messenger's header), seconds ago, body.
    type Dead<'a> = (&'a str, &'a str, i64, Option<(&'a str, bool)>, u64, &'a str);
    let letters: [Dead<'_>; 7] = [
        (
            "a1",
            "rejected",
            404,
            Some(("App\\Message\\SendEmail", true)),
            4000,
            r#"{"note":"refund"}"#,
        ),
        (
            "a2",
            "rejected",
            422,
            Some(("App\\Message\\Refund", false)),
            10,
            "{}",
        ),
        (
            "a3",
            "max_attempts",
            503,
            None,
            7200,
            r#"{"needle":"NEEDLE-xyz"}"#,
        ),
        ("a4", "max_attempts", 500, None, 5, "{}"),
        (
            "a5",
            "poison",
            0,
            Some(("App\\Message\\SendEmail", true)),
            100_000,
            "{}",
        ),
        ("a6", "", 0, None, 50, "{}"),
        ("a7", "rejected", 410, None, 20, r#"{"tenant":"acme"}"#),
    ];
    for (id, reason, status, kind, ago, body) in letters {
        let mut h = FieldTable::default();
        if reason.is_empty() {
            // Dead-lettered by the broker (a quorum queue's delivery limit): x-death only.
            let mut death = FieldTable::default();
            death.insert("reason".into(), text("delivery_limit"));
            death.insert("time".into(), AMQPValue::Timestamp(now - ago));
            h.insert(
                "x-death".into(),
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
            );
        } else {
            h.insert("x-agent-reason".into(), text(reason));
            h.insert("x-agent-status".into(), AMQPValue::LongLongInt(status));
            h.insert("x-agent-attempts".into(), AMQPValue::LongLongInt(3));
            h.insert(
                "x-agent-last-error".into(),
                text(&format!("{reason}: status {status}")),
            );
            h.insert(
                "x-agent-dead-lettered-at".into(),
                AMQPValue::Timestamp(now - ago),
            );
        }
        let mut props = BasicProperties::default()
            .with_message_id(id.into())
            .with_delivery_mode(2);
        match kind {
            Some((kind, true)) => props = props.with_type(kind.into()),
            Some((kind, false)) => {
                h.insert("type".into(), text(kind));
            }
            None => {}
        }
        ctx.publish_to("", &dead, body.as_bytes(), props.with_headers(h))
            .await;
    }
    let cfg = ctx.write_config();
    let cfg = cfg.to_str().unwrap();
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", cfg, "dead-letters"];
        all.extend_from_slice(args);
        let (code, out) = common::procs::agent_cli(&all);
        assert_eq!(code, 0, "{args:?}: {out}");
        out
    };
    // The ids a listing shows, in its order.
    let listed = |out: &str| -> Vec<String> {
        out.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.len() == 2 && (w.starts_with('a') || w.starts_with('k')))
            .map(str::to_owned)
            .collect()
    };
    let list = |filter: &[&str]| {
        let mut args = vec!["list", "event"];
        args.extend_from_slice(filter);
        listed(&cli(&args))
    };
    assert_eq!(list(&[]), ["a1", "a2", "a3", "a4", "a5", "a6", "a7"]);
    assert_eq!(list(&["--reason", "rejected"]), ["a1", "a2", "a7"]);
    assert_eq!(list(&["--reason", "delivery_limit"]), ["a6"]);
    assert_eq!(list(&["--status", "5xx"]), ["a3", "a4"]);
    assert_eq!(list(&["--status", "404"]), ["a1"]);
    assert_eq!(list(&["--type", "SendEmail"]), ["a1", "a5"]);
    assert_eq!(list(&["--type", "App\\Message\\Refund"]), ["a2"]);
    assert_eq!(list(&["--older-than", "1h"]), ["a1", "a3", "a5"]);
    assert_eq!(list(&["--grep", "needle-XYZ"]), ["a3"]);
    assert_eq!(
        list(&["--reason", "rejected", "--older-than", "15s"]),
        ["a1", "a7"]
    );
    assert_eq!(
        list(&["--reason", "rejected", "--limit", "2"]),
        ["a1", "a2"]
    );
    // The admin API's way: a dead letter named by its key is found again after the walks that
    // put it back (a quorum queue counts each return in a header the key leaves out).
    {
        use amqp_agent::dead_letters::{self, Budget, Filter};
        let config = ctx.config();
        let page = dead_letters::browse(
            &config,
            "event",
            &Filter::default(),
            2,
            1,
            Budget::UNBOUNDED,
            now,
        )
        .await
        .unwrap();
        assert_eq!((page.total, page.matched, page.complete), (7, 7, true));
        let key = &page.letters[0].key;
        let opened = dead_letters::open(&config, "event", key, Budget::UNBOUNDED, now)
            .await
            .unwrap()
            .expect("found by its key");
        assert_eq!(opened.summary.message_id.as_deref(), Some("a3"));
        assert!(opened.body.text.contains("NEEDLE-xyz"));
    }
    // Listing took nothing away, and kept the order.
    // (A quorum queue counts a returned message a moment after the session closed.)
    common::eventually(common::WAIT, "7 dead letters", || async {
        ctx.queue_len(&dead).await == 7
    })
    .await;
    assert_eq!(list(&[]), ["a1", "a2", "a3", "a4", "a5", "a6", "a7"]);
    // A filter that does not parse is named.
    let (code, out) = common::procs::agent_cli(&[
        "--config",
        cfg,
        "dead-letters",
        "list",
        "event",
        "--status",
        "6xx",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("--status"), "{out}");

    let out = cli(&["replay", "event", "--status", "5xx"]);
    assert!(out.contains("replayed 2 message(s)"), "{out}");
    assert!(out.contains("5 left"), "{out}");
    assert_eq!(
        list(&[]),
        ["a1", "a2", "a5", "a6", "a7"],
        "the rest in its order"
    );
    let out = cli(&["replay", "event", "--reason", "delivery_limit"]);
    assert!(out.contains("replayed 1 message(s)"), "{out}");
    let out = cli(&["replay", "event", "--grep", "ACME"]);
    assert!(out.contains("replayed 1 message(s)"), "{out}");
    assert_eq!(list(&[]), ["a1", "a2", "a5"]);
    let out = cli(&["discard", "event", "--type", "SendEmail"]);
    assert!(out.contains("discarded 2 message(s)"), "{out}");
    assert!(out.contains("1 left"), "{out}");
    assert_eq!(list(&[]), ["a2"]);
    // Nothing older than a day is left: nothing to discard.
    let out = cli(&["discard", "event", "--older-than", "1d"]);
    assert!(out.contains("discarded 0 message(s)"), "{out}");
    // Selected by key (the dashboard's "selected ones"): only that one goes.
    {
        use amqp_agent::dead_letters::{self, Action, Budget, Filter, Selection};
        for id in ["k1", "k2"] {
            let props = BasicProperties::default().with_message_id(id.into());
            ctx.publish_to("", &dead, id.as_bytes(), props).await;
        }
        let config = ctx.config();
        let page = dead_letters::browse(
            &config,
            "event",
            &Filter::default(),
            0,
            10,
            Budget::UNBOUNDED,
            now,
        )
        .await
        .unwrap();
        let k2 = page.letters[2].key.clone();
        let selection = Selection::Keys(vec![k2]);
        let mut seen = Vec::new();
        let done = dead_letters::act(
            &config,
            "event",
            Action::Discard,
            &selection,
            None,
            now,
            |p| {
                seen.push(*p);
            },
        )
        .await
        .unwrap();
        assert_eq!((done.matched, done.done, done.left), (1, 1, 2));
        assert!(seen.len() >= 3, "progress after each message: {seen:?}");
        assert_eq!(list(&[]), ["a2", "k1"]);
        let k1 = dead_letters::act(
            &config,
            "event",
            Action::Discard,
            &selection,
            None,
            now,
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(k1.done, 0, "a key stands for one dead letter, gone now");
    }
    let out = cli(&["discard", "event", "--older-than", "1s", "--all"]);
    assert!(out.contains("discarded 1 message(s)"), "{out}");
    assert!(out.contains("1 left"), "k1 has no age: {out}");
    let out = cli(&["discard", "event", "--all"]);
    assert!(out.contains("discarded 1 message(s)"), "{out}");
    common::eventually(common::WAIT, "no dead letter", || async {
        ctx.queue_len(&dead).await == 0
    })
    .await;
    // The replays are in the subject's queue, in the order they were replayed, without the
    // agent's failure headers.
    let replayed = ctx.take_all(&main).await;
    let ids: Vec<String> = replayed
        .iter()
        .map(|(p, _)| p.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["a3", "a4", "a6", "a7"]);
    for (props, _) in &replayed {
        let headers = props.headers().clone().unwrap_or_default();
        for h in [
            "x-agent-reason",
            "x-agent-status",
            "x-agent-dead-lettered-at",
            "x-death",
        ] {
            assert!(!headers.inner().contains_key(h), "{h} on a replay");
        }
    }
}
