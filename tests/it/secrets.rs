//! No secret in any output: broken configs whose bad line (or file, or variable) holds a
//! secret are rejected by `check-config`, `run` and a SIGHUP reload with a message naming the
//! key, and the secret appears nowhere in what the binary prints. Logs written to a file carry
//! no terminal colour codes.

use crate::common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestCtx;
use common::procs::AgentProcess;

/// Every secret below contains this, so a partial leak is caught too.
const MARK: &str = "S3CRET";

/// Valid; its broker port is closed, so a case that wrongly passed could not consume anything.
const GOOD: &str = r#"
[amqp]
url = "amqp://guest:guest@127.0.0.1:1/%2f"
[fpm]
address = "127.0.0.1:9000"
script_filename = "/srv/app/public/index.php"
signing_secrets = ["a-good-signing-secret-0123"]
[subjects.event]
queue = "messages.event"
[admin]
listen = ""
"#;

/// A broken setup: the config text, files it refers to, environment variables.
struct Case {
    what: &'static str,
    toml: String,
    files: Vec<(&'static str, &'static str)>,
    env: Vec<(&'static str, &'static str)>,
    /// The key the message must name.
    key: &'static str,
    /// The secret that must not appear.
    secret: &'static str,
}

fn case(what: &'static str, toml: String, key: &'static str, secret: &'static str) -> Case {
    Case {
        what,
        toml,
        files: Vec::new(),
        env: Vec::new(),
        key,
        secret,
    }
}

fn cases() -> Vec<Case> {
    let url = "url = \"amqp://guest:guest@127.0.0.1:1/%2f\"";
    let secrets = "signing_secrets = [\"a-good-signing-secret-0123\"]";
    let with_url = |line: &str| GOOD.replace(url, line);
    let with_secrets = |line: &str| GOOD.replace(secrets, line);
    let with_admin = |lines: &str| GOOD.replace("listen = \"\"", lines);
    vec![
        case(
            "syntax error on the token line",
            with_admin("token = \"admin-S3CRET-token-0123\" oops"),
            "admin.token",
            "admin-S3CRET-token-0123",
        ),
        case(
            "unterminated token string",
            with_admin("token = \"admin-S3CRET-token-0123\nlisten = \"\""),
            "admin.token",
            "admin-S3CRET-token-0123",
        ),
        case(
            "wrong type on token",
            with_admin("listen = \"\"\ntoken = 53133713371337"),
            "admin.token",
            "53133713371337",
        ),
        case(
            "syntax error on the signing_secrets line",
            with_secrets("signing_secrets = [\"sign-S3CRET-0123456789\" \"x\"]"),
            "fpm.signing_secrets",
            "sign-S3CRET-0123456789",
        ),
        case(
            "syntax error inside a multi-line signing_secrets array",
            with_secrets(
                "signing_secrets = [\n  \"sign-S3CRET-0123456789\",\n  \"second-S3CRET-0123\" x\n]",
            ),
            "fpm.signing_secrets",
            "second-S3CRET-0123",
        ),
        case(
            "signing_secrets of the wrong type",
            with_secrets("signing_secrets = \"sign-S3CRET-0123456789\""),
            "fpm.signing_secrets",
            "sign-S3CRET-0123456789",
        ),
        case(
            "a short signing secret",
            with_secrets("signing_secrets = [\"S3CRET-short\"]"),
            "fpm.signing_secrets[0]",
            "S3CRET-short",
        ),
        case(
            "unknown key next to a secret",
            with_admin("listen = \"\"\ntokn = \"admin-S3CRET-token-0123\""),
            "tokn",
            "admin-S3CRET-token-0123",
        ),
        case(
            "duplicate key holding a secret",
            with_admin("token = \"admin-S3CRET-token-0123\"\ntoken = \"admin-S3CRET-token-0123\""),
            "admin.token",
            "admin-S3CRET-token-0123",
        ),
        case(
            "syntax error on the url line",
            with_url("url = \"amqp://guest:pw-S3CRET@127.0.0.1:5672/%2f\" ,"),
            "amqp.url",
            "pw-S3CRET",
        ),
        case(
            "an URI without `//`, password included",
            with_url("url = \"amqp:guest:pw-S3CRET@127.0.0.1:5672/%2f\""),
            "amqp.url",
            "pw-S3CRET",
        ),
        case(
            "an URI with a bad port",
            with_url("url = \"amqp://guest:pw-S3CRET@127.0.0.1:port/%2f\""),
            "amqp.url",
            "pw-S3CRET",
        ),
        case(
            "an URI with the wrong scheme",
            with_url("url = \"http://guest:pw-S3CRET@127.0.0.1:5672/\""),
            "amqp.url",
            "pw-S3CRET",
        ),
        Case {
            files: vec![("amqp-url", "amqp:guest:pw-S3CRET@127.0.0.1:5672/%2f\n")],
            ..case(
                "a bad URI in url_file",
                with_url("url_file = \"{dir}/amqp-url\""),
                "amqp.url_file",
                "pw-S3CRET",
            )
        },
        Case {
            files: vec![(
                "amqp-url",
                "amqp://guest:pw-S3CRET@127.0.0.1:1/%2f\nsecond line\n",
            )],
            ..case(
                "url_file with two lines",
                with_url("url_file = \"{dir}/amqp-url\""),
                "amqp.url_file",
                "pw-S3CRET",
            )
        },
        Case {
            files: vec![("secrets", "a-good-file-secret-0123456\nfile-S3CRET\n")],
            ..case(
                "a short secret in signing_secrets_file",
                with_secrets("signing_secrets_file = \"{dir}/secrets\""),
                "fpm.signing_secrets_file",
                "file-S3CRET",
            )
        },
        Case {
            env: vec![("AMQP_AGENT_AMQP_URL", "amqp:guest:pw-S3CRET@127.0.0.1/%2f")],
            ..case(
                "a bad AMQP_AGENT_AMQP_URL",
                GOOD.to_owned(),
                "amqp.url",
                "pw-S3CRET",
            )
        },
        Case {
            env: vec![(
                "AMQP_AGENT_SIGNING_SECRET",
                "a-good-env-secret-0123456,env-S3CRET",
            )],
            ..case(
                "a short secret in AMQP_AGENT_SIGNING_SECRET",
                GOOD.to_owned(),
                "fpm.signing_secrets",
                "env-S3CRET",
            )
        },
        Case {
            env: vec![
                ("AMQP_AGENT_ADMIN_LISTEN", "0.0.0.0:0"),
                ("AMQP_AGENT_ADMIN_TOKEN", "S3CRET-tok"),
            ],
            ..case(
                "a short AMQP_AGENT_ADMIN_TOKEN off loopback",
                GOOD.to_owned(),
                "admin.token",
                "S3CRET-tok",
            )
        },
    ]
}

/// Runs `amqp-agent COMMAND --config CONFIG`; stdout and stderr together. A process still
/// running after 20 s (a broken config taken as valid) is killed and reported as `None`.
fn run_binary(command: &str, config: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out_path = std::env::temp_dir().join(format!(
        "amqp-agent-{command}-{}.out",
        uuid::Uuid::new_v4().simple()
    ));
    let out = std::fs::File::create(&out_path).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amqp-agent"));
    cmd.args([command, "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    for name in [
        "AMQP_AGENT_AMQP_URL",
        "AMQP_AGENT_SIGNING_SECRET",
        "AMQP_AGENT_ADMIN_TOKEN",
        "AMQP_AGENT_ADMIN_LISTEN",
        "AMQP_AGENT_LOG_FORMAT",
    ] {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = String::from_utf8_lossy(&std::fs::read(&out_path).unwrap()).into_owned();
    std::fs::remove_file(&out_path).unwrap();
    (code, text)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "amqp-agent-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn check_config_and_run_never_print_a_secret() {
    let dir = temp_dir("secrets");
    let config = dir.join("agent.toml");
    let mut failures = Vec::new();
    for case in cases() {
        assert!(case.secret.contains(MARK) || case.what == "wrong type on token");
        let text = case.toml.replace("{dir}", &dir.display().to_string());
        std::fs::write(&config, &text).unwrap();
        for (name, content) in &case.files {
            std::fs::write(dir.join(name), content).unwrap();
        }
        for command in ["check-config", "run"] {
            let (code, out) = run_binary(command, &config, &case.env);
            let leaked = out.contains(case.secret) || out.contains(MARK);
            if code != Some(1) || !out.contains(case.key) || leaked {
                failures.push(format!(
                    "{} ({command}): exit {code:?}, expected key `{}`{}:\n{out}",
                    case.what,
                    case.key,
                    if leaked { ", SECRET LEAKED" } else { "" }
                ));
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_example_config_refuses_its_placeholder_secret() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/amqp-agent.example.toml"
    );
    let (code, out) = run_binary("check-config", Path::new(example), &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("fpm.signing_secrets[0]") && out.contains("placeholder"),
        "{out}"
    );
    // As in `docker run -e AMQP_AGENT_SIGNING_SECRET=…` with the image's baked-in file.
    let (code, out) = run_binary(
        "check-config",
        Path::new(example),
        &[(
            "AMQP_AGENT_SIGNING_SECRET",
            "an-own-long-random-secret-0123",
        )],
    );
    assert_eq!(code, Some(0), "{out}");
}

/// A running agent whose stderr is a file: plain text (no ESC byte) although `NO_COLOR` is
/// unset, and a reload rejected for a broken secret line or URI logs the key, not the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_agent_logs_plain_text_and_no_secret_on_a_rejected_reload() {
    let ctx = TestCtx::new("secrets").await;
    let sock_path = common::fpm().dir.join(format!("{}.notify", ctx.id));
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let config = ctx.write_config();
    let good = std::fs::read_to_string(&config).unwrap();
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    // An empty NO_COLOR counts as unset (no-color.org): only the terminal check is left.
    let env = [
        ("NOTIFY_SOCKET", sock_path.display().to_string()),
        ("NO_COLOR", String::new()),
    ];
    let mut agent = AgentProcess::start_with(&config, &log, &env, &[]);
    let recv_until = |want: &str| {
        let mut buf = [0u8; 512];
        loop {
            let n = sock
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no `{want}` from the agent: {e}"));
            if String::from_utf8_lossy(&buf[..n]).contains(want) {
                return;
            }
        }
    };
    recv_until("READY=1");
    let secret_line = format!("signing_secrets = [\"{}\"]", ctx.secret);
    let broken = [
        // A syntax error: only text can hold it.
        good.replace(
            &secret_line,
            "signing_secrets = [\"reload-S3CRET-0123456789\" oops]",
        ),
        ctx.toml_with(|doc| {
            common::set_key(doc, "amqp.url", "amqp:guest:pw-S3CRET@127.0.0.1:5672/%2f");
        }),
    ];
    for text in &broken {
        assert_ne!(text, &good);
        std::fs::write(&config, text).unwrap();
        agent.signal(libc::SIGHUP);
        recv_until("RELOADING=1");
        // READY=1 follows the reload's verdict (here: rejected, the running config stays).
        recv_until("READY=1");
    }
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(30)).code(), Some(0));
    let text = agent.log_text();
    assert!(
        text.contains("fpm.signing_secrets") && text.contains("amqp.url"),
        "{text}"
    );
    assert!(
        !text.contains(MARK),
        "a secret leaked into the log:\n{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "colour codes in a log file:\n{text:?}"
    );
}
