//! Issue #26, item 5, last "Done when": a fresh Symfony app and a fresh Laravel app built from the
//! READMEs' "Without Composer (Debian's packages)" sections alone. The sections' fenced files
//! (` ```php file=<path> `) are extracted as written (only `/opt/amqp-agent` replaced by a copy
//! of `php/`, as the sections say), the steps their prose gives are done as it says, and only the
//! test's own messages/jobs, handlers and publisher are added (common/php_way.rs). Then, against
//! the real RabbitMQ and a php-fpm pool of the app's own:
//! - `amqp-agent:check` passes with the pool's environment;
//! - 100 messages (50 events, 50 commands) published by the app's own publisher (Messenger's bus,
//!   the Laravel package's Publisher) reach their handlers exactly once;
//! - with a pool without `AGENT_SIGNING_SECRET`, `amqp-agent:check` fails with the reason, and a
//!   subject pauses (a configuration fault: no attempt used, nothing dead-lettered) and the
//!   waiting message carries `amqp-agent: signing secret not configured` in
//!   `x-agent-last-error`, not an HTML page.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::php_way::{self, Pool, Workspace};
use common::{AMQP_URL, SECRET, TestCtx, copy_tree, eventually, header_str};

const WAIT: Duration = Duration::from_secs(90);
const MISSING: &str = "amqp-agent: signing secret not configured";

/// A step the README's prose gives: the sentence that says it (checked still there), and doing it.
type Step = (&'static str, fn(&Workspace));

/// What differs between the two apps.
struct Spec {
    name: &'static str,
    readme: &'static str,
    /// The README's sentences for the steps its prose gives (checked still there), and the step.
    steps: &'static [Step],
    own: &'static [(&'static str, &'static str)],
    /// `php <check>`: the section's "Check before serving".
    check: &'static [&'static str],
    check_ok: &'static [&'static str],
    /// The environment the section puts in the pool (and the publisher's), besides the secret.
    env: fn(&TestCtx, &Workspace) -> Vec<(String, String)>,
}

fn symfony_recipe(ws: &Workspace) {
    copy_tree(
        &ws.checkout.join("php/symfony-bundle/recipe/config"),
        &ws.app.join("config"),
    );
}

fn symfony_var(ws: &Workspace) {
    std::fs::create_dir_all(ws.app.join("var")).unwrap();
}

fn laravel_config(ws: &Workspace) {
    std::fs::copy(
        ws.checkout.join("php/laravel/config/amqp-agent.php"),
        ws.app.join("config/amqp-agent.php"),
    )
    .unwrap();
}

fn laravel_writable(ws: &Workspace) {
    std::fs::create_dir_all(ws.app.join("storage")).unwrap();
    std::fs::create_dir_all(ws.app.join("bootstrap/cache")).unwrap();
}

fn queues(ctx: &TestCtx, ws: &Workspace) -> Vec<(String, String)> {
    vec![
        ("AGENT_EVENT_QUEUE".into(), ctx.queue("event")),
        ("AGENT_COMMAND_QUEUE".into(), ctx.queue("command")),
        ("RECORD_DIR".into(), ws.records.display().to_string()),
    ]
}

const SYMFONY: Spec = Spec {
    name: "symfony",
    readme: "php/symfony-bundle/README.md",
    steps: &[
        (
            "Then copy the recipe (next section) into `config/`",
            symfony_recipe,
        ),
        (
            "`var/` (cache, logs) must be writable by the FPM pool's user",
            symfony_var,
        ),
    ],
    own: php_way::SYMFONY_OWN,
    check: &["bin/console", "amqp-agent:check"],
    check_ok: &[
        "ok: 1 signing secret, v1 refused, clock skew 300 s",
        "ok: the /_agent/messages controller builds",
    ],
    env: |ctx, ws| {
        let mut env = queues(ctx, ws);
        env.push(("APP_ENV".into(), "prod".into()));
        env.push(("APP_SECRET".into(), "php-way-app-secret".into()));
        env.push(("AGENT_AMQP_DSN".into(), format!("{AMQP_URL}/agent")));
        env
    },
};

const LARAVEL: Spec = Spec {
    name: "laravel",
    readme: "php/laravel/README.md",
    steps: &[
        (
            "Copy the package's `config/amqp-agent.php` into `config/`",
            laravel_config,
        ),
        (
            "make `storage/` and `bootstrap/cache/` writable by the FPM pool's user",
            laravel_writable,
        ),
    ],
    own: php_way::LARAVEL_OWN,
    check: &["artisan", "amqp-agent:check"],
    check_ok: &[
        "ok: 1 signing secret, v1 refused, clock skew 300 s",
        "ok: the /_agent/messages controller builds",
        "ok: route POST /_agent/messages/{subject}",
    ],
    env: |ctx, ws| {
        use base64::Engine as _;
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let mut env = queues(ctx, ws);
        env.push(("APP_KEY".into(), format!("base64:{key}")));
        env
    },
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_symfony_app_from_the_readme_alone() {
    fresh_app(&SYMFONY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_laravel_app_from_the_readme_alone() {
    fresh_app(&LARAVEL).await;
}

async fn fresh_app(spec: &Spec) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join(spec.readme)).unwrap();
    let mut ctx = TestCtx::new(&format!("php-way-{}", spec.name)).await;
    let ws = Workspace::new(&ctx.id);

    // The section's files as written, then its prose steps.
    let files = php_way::extract(&readme);
    let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert!(
        paths.contains(&"public/index.php") && paths.contains(&spec.check[0]),
        "{}: the section's files are {paths:?}",
        spec.readme
    );
    assert!(
        readme.contains("replace `/opt/amqp-agent` with your"),
        "{}: the section no longer says what /opt/amqp-agent is",
        spec.readme
    );
    php_way::write_files(&ws.app, &files, &ws.checkout);
    let prose = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    for (sentence, step) in spec.steps {
        assert!(
            prose.contains(sentence),
            "{}: the step {sentence:?} is no longer in the README: update the test",
            spec.readme
        );
        step(&ws);
    }
    // The test's own messages/jobs, handlers and publisher.
    php_way::write_own(&ws.app, spec.own);

    let env = (spec.env)(&ctx, &ws);
    let mut with_secret: Vec<(&str, &str)> =
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let without_secret = with_secret.clone();
    with_secret.push(("AGENT_SIGNING_SECRET", SECRET));

    // "Check before serving", with the pool's environment.
    let (code, out) = php_way::php(&ws.app, spec.check, &with_secret);
    assert_eq!(
        code,
        0,
        "{} ({paths:?} extracted from {}): {out}",
        spec.check.join(" "),
        spec.readme
    );
    for line in spec.check_ok {
        assert!(out.contains(line), "{out}");
    }

    // 100 messages through the app.
    let pool = Pool::start(&ws, "app", &with_secret);
    ctx.fpm_port = pool.port;
    let script = ws.app.join("public/index.php");
    let agent = amqp_agent::agent::Agent::start(common::apps::config(&ctx, &script))
        .await
        .unwrap();
    agent.wait_consuming(WAIT).await.unwrap(); // the agent declares the queues
    let (code, out) = php_way::php(
        &ws.app,
        &["bin/publish.php", &ctx.id, "50", "50"],
        &with_secret,
    );
    assert!(
        code == 0 && out.contains("published 50 events and 50 commands"),
        "publisher: {out}"
    );
    let stats = || {
        let s = agent.stats();
        (s["event"], s["command"])
    };
    eventually(WAIT, "100 messages acked", || async {
        let (e, c) = stats();
        assert!(
            e.dead_lettered + c.dead_lettered == 0,
            "dead-lettered: {e:?} {c:?}\n{}",
            pool.logs()
        );
        e.acked == 50 && c.acked == 50
    })
    .await;
    let mut handled: BTreeMap<(String, String), usize> = BTreeMap::new();
    for record in php_way::records(&ws, &ctx.id) {
        *handled.entry(record).or_default() += 1;
    }
    let expected: BTreeMap<(String, String), usize> = (0..50)
        .map(|i| (("event".to_owned(), format!("e{i}")), 1))
        .chain((0..50).map(|i| (("command".to_owned(), format!("c{i}")), 1)))
        .collect();
    assert_eq!(handled, expected, "each message handled exactly once");
    let (e, c) = stats();
    assert_eq!((e.retried, c.retried), (0, 0), "{e:?} {c:?}");
    agent.drain().await;
    drop(pool);

    // The same app served by a pool without AGENT_SIGNING_SECRET.
    let (code, out) = php_way::php(&ws.app, spec.check, &without_secret);
    assert_eq!(code, 1, "amqp-agent:check without the secret: {out}");
    assert!(out.contains(MISSING), "{out}");

    let pool = Pool::start(&ws, "no-secret", &without_secret);
    ctx.fpm_port = pool.port;
    ctx.retry_toml = "[retry]\ndelays = [\"100ms\"]\nmax_attempts = 2\n".to_owned();
    let agent = amqp_agent::agent::Agent::start(common::apps::config(&ctx, &script))
        .await
        .unwrap();
    agent.wait_consuming(WAIT).await.unwrap();
    let (code, out) = php_way::php(
        &ws.app,
        &["bin/publish.php", &ctx.id, "1", "0"],
        &with_secret,
    );
    assert!(code == 0 && out.contains("published 1 events"), "{out}");
    // The package answers `503 amqp-agent: signing secret not configured`: the agent takes it
    // for what it is, a configuration fault every message would meet. The subject pauses, the
    // message keeps its attempt (max_attempts = 2 would otherwise dead-letter it at once) and
    // waits, with the package's text as its last error, until the pool has the secret.
    eventually(WAIT, "the subject paused, the message retried", || async {
        let s = agent.stats()["event"];
        s.paused && s.retried >= 2
    })
    .await;
    assert_eq!(
        agent.stats()["event"].dead_lettered,
        0,
        "nothing dead-lettered"
    );
    agent.drain().await;

    // What the operator sees: the waiting copy's headers (attempt 1 still, the text, no HTML).
    let mut waiting = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while waiting.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no waiting copy");
        for queue in [
            ctx.queue("event"),
            ctx.delay_queue("event", Duration::from_millis(100)),
        ] {
            waiting.extend(ctx.take_all(&queue).await);
        }
        if waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (props, _) = &waiting[0];
    let last_error = header_str(props, "x-agent-last-error").unwrap_or_default();
    assert!(
        last_error.contains(MISSING) && last_error.contains("receiver_misconfigured"),
        "x-agent-last-error: {last_error:?}\n{}",
        pool.logs()
    );
    for html in ["<!DOCTYPE", "<html", "HTML page"] {
        assert!(!last_error.contains(html), "an HTML page: {last_error:?}");
    }
    assert_eq!(
        header_str(props, "x-agent-attempt").as_deref(),
        Some("1"),
        "no attempt used"
    );
    assert!(ctx.drain_dead("event").await.is_empty());
    assert_eq!(
        php_way::records(&ws, &ctx.id).len(),
        100,
        "never handled without the secret"
    );
}
