//! The framework apps under tests/apps, served by the shared php-fpm pool: copied with the
//! repository's PHP packages to the pool's directory (same layout, so their relative autoloading
//! holds), published to with the app's own bus, and their handlers' records read back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use amqp_agent::config::Config;

use super::{AMQP_URL, TestCtx, copy_tree, fpm};

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
    let mut ctx_toml = ctx.toml();
    ctx_toml = ctx_toml.replace(
        &format!("request_uri = \"/t/{}/{{subject}}\"", ctx.id),
        "request_uri = \"/_agent/messages/{subject}\"",
    );
    ctx_toml = ctx_toml.replace(
        &format!("script_filename = \"{}\"", ctx.script.display()),
        &format!("script_filename = \"{}\"", script.display()),
    );
    assert!(ctx_toml.contains("/_agent/messages/") && ctx_toml.contains(&*script.to_string_lossy()));
    Arc::new(Config::from_toml(&ctx_toml, Path::new("test.toml"), |_| None).expect("valid config"))
}

/// Runs `php <script> <args>` with the test's queues in the environment; panics on failure.
pub fn php(script: &Path, ctx: &TestCtx, args: &[&str]) -> String {
    let out = Command::new("php")
        .arg(script)
        .args(args)
        .env("AGENT_AMQP_DSN", format!("{AMQP_URL}/agent"))
        .env("AGENT_EVENT_QUEUE", ctx.queue("event"))
        .env("AGENT_COMMAND_QUEUE", ctx.queue("command"))
        .env("RECORD_DIR", fpm().dir.join("records"))
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

/// The handlers' records of app `app` for this test (complete lines only).
pub fn records(app: &str, ctx: &TestCtx) -> Vec<Value> {
    let path = fpm().dir.join("records").join(format!("{app}-{}.jsonl", ctx.id));
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
