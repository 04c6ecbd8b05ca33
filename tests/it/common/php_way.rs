//! Apps built from the READMEs' "Without Composer (Debian's packages)" sections alone (issue #26,
//! item 5): the section's fenced files (` ```php file=<path> `) extracted as written, the prose
//! steps around them done as they say, and only the test's own messages, handlers and publisher
//! added. Each app gets php-fpm pools of its own (their environment is the point: with and
//! without `AGENT_SIGNING_SECRET`), `clear_env = yes` and `env[...]` lines, as the docs say.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{copy_tree, free_port, php_fpm_binary, wait_until};

/// The heading of the Composer-less section in both READMEs.
pub const SECTION: &str = "### Without Composer (Debian's packages)";

/// The path the docs use for the checkout (the sections say to replace it with yours).
pub const DOCS_CHECKOUT: &str = "/opt/amqp-agent";

/// The files of `readme`'s Composer-less section: every fence whose info string has
/// `file=<path>`, from the section's heading to the next heading of level 2 or 3, as
/// `(path, content)` in the order written.
pub fn extract(readme: &str) -> Vec<(String, String)> {
    let start = readme
        .find(SECTION)
        .unwrap_or_else(|| panic!("the README has no section {SECTION:?}"));
    let mut files = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in readme[start..].lines().skip(1) {
        if let Some((path, mut text)) = open.take() {
            if line.trim_end() == "```" {
                files.push((path, text));
            } else {
                text.push_str(line);
                text.push('\n');
                open = Some((path, text));
            }
            continue;
        }
        if line.starts_with("## ") || line.starts_with("### ") {
            break;
        }
        if let Some(info) = line.strip_prefix("```") {
            let path = info
                .split_whitespace()
                .find_map(|word| word.strip_prefix("file="));
            open = Some((path.unwrap_or_default().to_owned(), String::new()));
        }
    }
    assert!(open.is_none(), "an unclosed fence in {SECTION:?}");
    files.retain(|(path, _)| !path.is_empty());
    files
}

/// Writes the extracted `files` under `app`, `/opt/amqp-agent` replaced by `checkout` (the
/// sections: "replace `/opt/amqp-agent` with your checkout").
pub fn write_files(app: &Path, files: &[(String, String)], checkout: &Path) {
    for (path, text) in files {
        assert!(
            !path.starts_with('/') && !path.contains(".."),
            "a relative path: {path}"
        );
        let target = app.join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let text = text.replace(DOCS_CHECKOUT, &checkout.display().to_string());
        std::fs::write(&target, text).unwrap();
    }
}

/// Writes the test's own files (`(path, content)`) under `app`.
pub fn write_own(app: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let target = app.join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, text).unwrap();
    }
}

/// A fresh directory for one app: `<tmp>/amqp-agent-php-way-<id>`, with the repository's `php/`
/// copied to `checkout/php` (where the docs' `/opt/amqp-agent/php/...` points) and `records/`.
/// World-readable, as php-fpm's workers need.
pub struct Workspace {
    pub root: PathBuf,
    pub checkout: PathBuf,
    pub app: PathBuf,
    pub records: PathBuf,
}

impl Workspace {
    pub fn new(id: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("amqp-agent-php-way-{id}"));
        let checkout = root.join("checkout");
        let app = root.join("app");
        let records = root.join("records");
        for dir in [&root, &app, &records] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        copy_tree(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("php"),
            &checkout.join("php"),
        );
        Self {
            root,
            checkout,
            app,
            records,
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// A php-fpm pool of its own serving `app`, with exactly `env` as its environment
/// (`clear_env = yes`, one `env[...]` line each). Stopped (SIGTERM, reaped) when dropped.
pub struct Pool {
    pub port: u16,
    pub log: PathBuf,
    pub php_log: PathBuf,
    child: Child,
}

impl Pool {
    pub fn start(ws: &Workspace, name: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log = ws.root.join(format!("fpm-{name}.log"));
        let php_log = ws.root.join(format!("php-{name}.log"));
        let conf_path = ws.root.join(format!("fpm-{name}.conf"));
        let root = ws.root.display();
        let mut writer = super::fpm_pool::writer();
        writer
            .args(["--pid", &format!("{root}/fpm-{name}.pid")])
            .args(["--error-log", &log.display().to_string()])
            .args(["--pool", name])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--children", "4"])
            .args(["--clear-env", "yes"])
            .args(["--catch-workers-output", "yes"])
            .args(["--admin-value", &format!("error_log={}", php_log.display())])
            .args(["--admin-value", "memory_limit=256M"]);
        for (key, value) in env {
            writer.args(["--env", &format!("{key}={value}")]);
        }
        super::fpm_pool::write_config(&mut writer, &conf_path).unwrap();
        let mut cmd = super::fpm_pool::command(&php_fpm_binary(), &conf_path);
        super::tie_to_thread(&mut cmd);
        let child = cmd.spawn().expect("cannot start php-fpm");
        wait_until(
            Duration::from_secs(20),
            "the app's php-fpm to listen",
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        Self {
            port,
            log,
            php_log,
            child,
        }
    }

    /// What PHP and php-fpm logged (for failure messages).
    pub fn logs(&self) -> String {
        format!(
            "php-fpm log:\n{}\nPHP error log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(&self.php_log).unwrap_or_default()
        )
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `php <args>` in `app` with exactly `env` (plus PATH); returns (exit code, stdout+stderr).
pub fn php(app: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new("php")
        .current_dir(app)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("php CLI");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The handlers' records of test `test` in `ws`: `(kind, id)` per complete JSON line.
pub fn records(ws: &Workspace, test: &str) -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(ws.records.join(format!("{test}.jsonl"))).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("JSON lines");
            (
                v["kind"].as_str().unwrap().to_owned(),
                v["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The Symfony app's own files (what the section leaves to the app: "write your messages, their
/// marker interfaces and handlers (`config/services.yaml` with `App\:` autoconfigured)"), and a
/// publisher dispatching on the app's bus: `php bin/publish.php <test> <events> <commands>`.
pub const SYMFONY_OWN: &[(&str, &str)] = &[
    (
        "config/services.yaml",
        r"services:
    _defaults:
        autowire: true
        autoconfigure: true
    App\:
        resource: '../src/'
        exclude: '../src/{Kernel.php,Message}'
",
    ),
    (
        "src/Message/EventInterface.php",
        "<?php\nnamespace App\\Message;\n\ninterface EventInterface\n{\n}\n",
    ),
    (
        "src/Message/CommandInterface.php",
        "<?php\nnamespace App\\Message;\n\ninterface CommandInterface\n{\n}\n",
    ),
    (
        "src/Message/OrderPlaced.php",
        r"<?php
namespace App\Message;

final class OrderPlaced implements EventInterface
{
    public function __construct(public string $test, public string $id)
    {
    }
}
",
    ),
    (
        "src/Message/PlaceOrder.php",
        r"<?php
namespace App\Message;

final class PlaceOrder implements CommandInterface
{
    public function __construct(public string $test, public string $id)
    {
    }
}
",
    ),
    (
        "src/Handler/OrderPlacedHandler.php",
        r"<?php
namespace App\Handler;

use App\Message\OrderPlaced;
use Symfony\Component\Messenger\Attribute\AsMessageHandler;

#[AsMessageHandler]
final class OrderPlacedHandler
{
    public function __invoke(OrderPlaced $event): void
    {
        $line = json_encode(['kind' => 'event', 'id' => $event->id]) . PHP_EOL;
        file_put_contents(getenv('RECORD_DIR') . '/' . $event->test . '.jsonl', $line, FILE_APPEND | LOCK_EX);
    }
}
",
    ),
    (
        "src/Handler/PlaceOrderHandler.php",
        r"<?php
namespace App\Handler;

use App\Message\PlaceOrder;
use Symfony\Component\Messenger\Attribute\AsMessageHandler;

#[AsMessageHandler]
final class PlaceOrderHandler
{
    public function __invoke(PlaceOrder $command): void
    {
        $line = json_encode(['kind' => 'command', 'id' => $command->id]) . PHP_EOL;
        file_put_contents(getenv('RECORD_DIR') . '/' . $command->test . '.jsonl', $line, FILE_APPEND | LOCK_EX);
    }
}
",
    ),
    (
        "bin/publish.php",
        r#"<?php
// The test's publisher: the app's own bus, as a controller of the app would dispatch.
declare(strict_types=1);

use App\Kernel;
use App\Message\OrderPlaced;
use App\Message\PlaceOrder;

require dirname(__DIR__) . '/autoload.php';

[, $test, $events, $commands] = $argv;
$kernel = new Kernel('prod', false);
$kernel->boot();
$bus = $kernel->getContainer()->get('messenger.default_bus');
for ($i = 0; $i < (int) $events; $i++) {
    $bus->dispatch(new OrderPlaced($test, "e{$i}"));
}
for ($i = 0; $i < (int) $commands; $i++) {
    $bus->dispatch(new PlaceOrder($test, "c{$i}"));
}
echo "published {$events} events and {$commands} commands\n";
"#,
    ),
];

/// The Laravel app's own files: jobs in `app/Jobs/` (the default `allowed_jobs`), as `make:job`
/// writes them, and a publisher with the package's Publisher:
/// `php bin/publish.php <test> <events> <commands>`.
pub const LARAVEL_OWN: &[(&str, &str)] = &[
    (
        "app/Jobs/OrderShipped.php",
        r"<?php
namespace App\Jobs;

use Illuminate\Bus\Queueable;
use Illuminate\Contracts\Queue\ShouldQueue;
use Illuminate\Foundation\Bus\Dispatchable;
use Illuminate\Queue\InteractsWithQueue;
use Illuminate\Queue\SerializesModels;

final class OrderShipped implements ShouldQueue
{
    use Dispatchable, InteractsWithQueue, Queueable, SerializesModels;

    public function __construct(public string $test, public string $id)
    {
    }

    public function handle(): void
    {
        $line = json_encode(['kind' => 'event', 'id' => $this->id]) . PHP_EOL;
        file_put_contents(getenv('RECORD_DIR') . '/' . $this->test . '.jsonl', $line, FILE_APPEND | LOCK_EX);
    }
}
",
    ),
    (
        "app/Jobs/ShipOrder.php",
        r"<?php
namespace App\Jobs;

use Illuminate\Bus\Queueable;
use Illuminate\Contracts\Queue\ShouldQueue;
use Illuminate\Foundation\Bus\Dispatchable;
use Illuminate\Queue\InteractsWithQueue;
use Illuminate\Queue\SerializesModels;

final class ShipOrder implements ShouldQueue
{
    use Dispatchable, InteractsWithQueue, Queueable, SerializesModels;

    public function __construct(public string $test, public string $id)
    {
    }

    public function handle(): void
    {
        $line = json_encode(['kind' => 'command', 'id' => $this->id]) . PHP_EOL;
        file_put_contents(getenv('RECORD_DIR') . '/' . $this->test . '.jsonl', $line, FILE_APPEND | LOCK_EX);
    }
}
",
    ),
    (
        "bin/publish.php",
        r#"<?php
// The test's publisher: the package's Publisher, as a controller of the app would publish.
declare(strict_types=1);

use AmqpAgent\Laravel\Publisher;
use App\Jobs\OrderShipped;
use App\Jobs\ShipOrder;

$app = require __DIR__ . '/../bootstrap/app.php';
$app->make(Illuminate\Contracts\Console\Kernel::class)->bootstrap();

[, $test, $events, $commands] = $argv;
$publisher = $app->make(Publisher::class);
for ($i = 0; $i < (int) $events; $i++) {
    $publisher->publish(new OrderShipped($test, "e{$i}"), 'event');
}
for ($i = 0; $i < (int) $commands; $i++) {
    $publisher->publish(new ShipOrder($test, "c{$i}"), 'command');
}
echo "published {$events} events and {$commands} commands\n";
"#,
    ),
];
