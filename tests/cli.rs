//! The binary's command line: config errors are clear and name the key.

mod common;

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
