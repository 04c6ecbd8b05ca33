//! Test harness: a real php-fpm pool running the recording receiver, a real RabbitMQ, and
//! helpers to publish, inspect queues and read what PHP received.
//!
//! The pool is started once for the test binary (`tests/it`, every test shares it), on a free
//! port, from a thread that lives as long as the process; php-fpm gets SIGTERM when the test
//! process exits (PR_SET_PDEATHSIG).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::Value;

use amqp_agent::agent::Agent;

pub mod apps;
pub mod cluster;
pub mod fpm_pool;
pub mod nft;
pub mod otlp;
pub mod php_way;
pub mod procs;
pub mod raw;
pub mod turn;
use amqp_agent::config::Config;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const SECRET: &str = "test-signing-secret-0123456789";
/// The admin token of every test config: commands need it.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The shared php-fpm pool of the test binary.
pub struct Fpm {
    pub port: u16,
    pub dir: PathBuf,
    pub recorder: PathBuf,
    pub receiver: PathBuf,
}

static FPM: OnceLock<Fpm> = OnceLock::new();

pub fn fpm() -> &'static Fpm {
    FPM.get_or_init(start_fpm)
}

pub fn php_fpm_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("PHP_FPM_BIN") {
        return bin.into();
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/sbin")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    candidates.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("php-fpm"))
    });
    candidates.sort();
    candidates
        .pop()
        .expect("php-fpm not found: run scripts/test (it installs php-fpm) or set PHP_FPM_BIN")
}

/// SIGTERM to the child when the thread that forks it exits (PR_SET_PDEATHSIG).
pub fn tie_to_thread(cmd: &mut Command) {
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// The shared pool's children per test that may run at once: a test's agent has up to 8 requests
/// in flight (4 workers for each of 2 subjects), some tests run two agents or larger pools. The
/// pool is static: 24 children for the 2 tests at once of a 2-core machine, 192 at most.
const FPM_CHILDREN_PER_TEST: usize = 12;

/// How many tests libtest runs at once: `--test-threads`, else `RUST_TEST_THREADS`, else one per
/// core, as libtest decides it.
fn test_threads() -> usize {
    let mut args = std::env::args();
    while let Some(arg) = args.next() {
        let value = match arg.strip_prefix("--test-threads") {
            Some("") => args.next(),
            Some(v) => v.strip_prefix('=').map(str::to_owned),
            None => continue,
        };
        if let Some(n) = value.and_then(|v| v.parse().ok()) {
            return n;
        }
    }
    std::env::var("RUST_TEST_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_fpm() -> Fpm {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = std::env::temp_dir().join(format!("amqp-agent-fpm-{}", std::process::id()));
    let records = dir.join("records");
    std::fs::create_dir_all(&records).unwrap();
    // Copy the scripts to a world-readable place: FPM workers may not read the clone.
    let recorder = dir.join("recorder.php");
    let receiver = dir.join("receiver.php");
    std::fs::copy(Path::new(root).join("tests/php/recorder.php"), &recorder).unwrap();
    std::fs::copy(Path::new(root).join("examples/php/receiver.php"), &receiver).unwrap();
    // receiver.php loads the php/receiver package from php-receiver/ next to it.
    copy_tree(
        &Path::new(root).join("php/receiver"),
        &dir.join("php-receiver"),
    );
    use std::os::unix::fs::PermissionsExt;
    for p in [&dir, &records] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let port = free_port();
    let conf_path = dir.join("fpm.conf");
    let (d, records) = (dir.display(), records.display());
    let children = FPM_CHILDREN_PER_TEST * test_threads().clamp(2, 16);
    fpm_pool::write_config(
        fpm_pool::writer()
            .args(["--pid", &format!("{d}/fpm.pid")])
            .args(["--error-log", &format!("{d}/fpm.log")])
            .args(["--pool", "test"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--children", &children.to_string()])
            .args(["--clear-env", "no"])
            .args(["--catch-workers-output", "yes"])
            .args(["--request-terminate-timeout", "0"])
            .args(["--env", &format!("RECORD_DIR={records}")])
            .args(["--env", &format!("AGENT_SIGNING_SECRET={SECRET}")])
            .args(["--admin-value", &format!("error_log={d}/php.log")])
            .args(["--admin-value", "memory_limit=256M"])
            .args(["--admin-value", "post_max_size=64M"]),
        &conf_path,
    )
    .unwrap();
    let bin = php_fpm_binary();
    let (tx, rx) = std::sync::mpsc::channel();
    // PR_SET_PDEATHSIG fires when the *thread* that forked exits, so fork from one that never does.
    std::thread::spawn(move || {
        let mut cmd = fpm_pool::command(&bin, &conf_path);
        tie_to_thread(&mut cmd);
        let mut child: Child = cmd.spawn().expect("cannot start php-fpm");
        tx.send(()).unwrap();
        // Reap php-fpm if it exits; the thread then parks for the rest of the process.
        let _ = child.wait();
        loop {
            std::thread::park();
        }
    });
    rx.recv().expect("php-fpm spawned");
    wait_until(Duration::from_secs(20), "php-fpm to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Fpm {
        port,
        dir,
        recorder,
        receiver,
    }
}

/// Copies the files of `from` into `to` (PHP sources for the pool), skipping tests.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "tests") {
                copy_tree(&path, &target);
            }
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async version of [`wait_until`].
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One test's world: unique queues, its own record file, a config.
pub struct TestCtx {
    pub id: String,
    pub conn: Connection,
    pub channel: lapin::Channel,
    pub extra_toml: String,
    pub retry_toml: String,
    pub script: PathBuf,
    pub secret: String,
    pub fpm_port: u16,
    pub amqp_url: String,
    pub pool_size: usize,
    /// Extra lines for `[subjects.event]`.
    pub event_extra: String,
    /// Extra lines for `[fpm]`.
    pub fpm_extra: String,
    /// Port of the admin listener of an agent process started with this config.
    pub admin_port: u16,
    /// Lines for `[admin]` after `listen`; the default sets `token = ADMIN_TOKEN`.
    pub admin_toml: String,
    /// Keys set (or, with `None`, removed) on top of the rendered config: see [`TestCtx::set`].
    pub overrides: Vec<(String, Option<toml::Value>)>,
    /// Deletes this test's queues and exchange when the test ends, also when it panics.
    pub cleanup: Cleanup,
    /// This test's turn to use the broker (`turn`): given back after `cleanup` ran.
    #[expect(dead_code, reason = "held only to be dropped, after `cleanup`")]
    pub turn: Arc<turn::Turn>,
}

impl TestCtx {
    pub async fn new(name: &str) -> Self {
        let turn = turn::shared().await;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,lapin=warn".into()),
            )
            .with_test_writer()
            .try_init();
        let id = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let (conn, channel) = confirm_channel(AMQP_URL).await;
        let cleanup = Cleanup::default();
        cleanup.exchange(&format!("t.{id}.x"));
        let ctx = Self {
            id,
            conn,
            channel,
            extra_toml: String::new(),
            retry_toml: "[retry]\ndelays = [\"100ms\"]\nmax_attempts = 3\n".to_owned(),
            script: fpm().recorder.clone(),
            secret: SECRET.to_owned(),
            fpm_port: fpm().port,
            amqp_url: AMQP_URL.to_owned(),
            pool_size: 4,
            event_extra: String::new(),
            fpm_extra: String::new(),
            admin_port: free_port(),
            admin_toml: format!("token = \"{ADMIN_TOKEN}\"\n"),
            overrides: Vec::new(),
            cleanup,
            turn,
        };
        // The queues of the default config, even if the test never renders one.
        let _ = ctx.toml();
        ctx
    }

    /// Sets `path` (dotted: `amqp.declare`, `subjects.command.pool_mode`) in every config this
    /// context renders from now on.
    pub fn set(&mut self, path: &str, value: impl Into<toml::Value>) {
        self.overrides.push((path.to_owned(), Some(value.into())));
    }

    /// Removes `path` from every config this context renders from now on.
    pub fn unset(&mut self, path: &str) {
        self.overrides.push((path.to_owned(), None));
    }

    pub fn queue(&self, subject: &str) -> String {
        format!("t.{}.{subject}", self.id)
    }

    /// The config text: the fields of this context, then [`TestCtx::set`]'s keys. Every config
    /// rendered registers its queues (main, delay, dead) with [`TestCtx::cleanup`].
    pub fn toml(&self) -> String {
        let base = format!(
            "[amqp]\nurl = \"{amqp}\"\nprefetch_per_worker = 2\n\n[fpm]\naddress = \"127.0.0.1:{port}\"\nscript_filename = \"{script}\"\n\
             request_uri = \"/t/{id}/{{subject}}\"\ntimeout = \"5s\"\nsigning_secrets = [\"{secret}\"]\n{fpm_extra}\n{retry}\n\
             [subjects.event]\nqueue = \"{qe}\"\npool_size = {pool}\n{event_extra}\n[subjects.command]\nqueue = \"{qc}\"\npool_size = {pool}\n\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n{admin_toml}\n[agent]\nshutdown_timeout = \"10s\"\nstate_dir = \"{state}\"\n{extra}\n",
            amqp = self.amqp_url,
            pool = self.pool_size,
            event_extra = self.event_extra,
            fpm_extra = self.fpm_extra,
            admin = self.admin_port,
            admin_toml = self.admin_toml,
            port = self.fpm_port,
            script = self.script.display(),
            id = self.id,
            secret = self.secret,
            retry = self.retry_toml,
            qe = self.queue("event"),
            qc = self.queue("command"),
            extra = self.extra_toml,
            state = fpm().dir.join("state").display(),
        );
        let text = if self.overrides.is_empty() {
            base
        } else {
            edit_toml(&base, |doc| {
                for (path, value) in &self.overrides {
                    match value {
                        Some(v) => set_key(doc, path, v.clone()),
                        None => remove_key(doc, path),
                    }
                }
            })
        };
        self.cleanup.config(&text);
        text
    }

    /// [`TestCtx::toml`] with `edit` applied to it (for a variant the test writes itself).
    pub fn toml_with(&self, edit: impl FnOnce(&mut toml::Table)) -> String {
        let text = edit_toml(&self.toml(), edit);
        self.cleanup.config(&text);
        text
    }

    /// Writes `text` as this test's config file (the path [`TestCtx::write_config`] uses).
    pub fn write_toml(&self, text: &str) -> PathBuf {
        let path = fpm().dir.join(format!("{}.toml", self.id));
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::new(
            Config::from_toml(&self.toml(), Path::new("test.toml"), |_| None)
                .expect("test config is valid"),
        )
    }

    pub fn write_config(&self) -> PathBuf {
        self.write_toml(&self.toml())
    }

    /// Waits until the agent started with this config answers `/readyz` with 200: every
    /// subject connected, consuming, not paused.
    pub async fn wait_ready(&self) {
        wait_ready(self.admin_port, WAIT).await;
    }

    /// Waits until `/status` of the agent started with this config satisfies `cond`; returns it.
    pub async fn wait_status(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        wait_status(self.admin_port, what, WAIT, cond).await
    }

    pub async fn start_agent(&self) -> Agent {
        self.start_agent_with_hook(None).await
    }

    /// Starts the agent in-process with a hook every worker calls with each delivery
    /// (`amqp_agent::actors::hook`), e.g. to make a worker panic on a chosen message.
    pub async fn start_agent_with_hook(
        &self,
        hook: Option<amqp_agent::actors::hook::DeliveryHook>,
    ) -> Agent {
        let agent = Agent::start_with_hook(self.config(), hook).await.unwrap();
        agent.wait_consuming(Duration::from_secs(20)).await.unwrap();
        agent
    }

    pub async fn publish(&self, subject: &str, body: &[u8], props: BasicProperties) {
        self.publish_to("", &self.queue(subject), body, props).await;
    }

    /// Routes the event queue from a topic exchange of this test (binding key `orders.*`), and
    /// returns the exchange's name. Call before starting the agent.
    pub fn use_topic_exchange(&mut self) -> String {
        let exchange = format!("t.{}.x", self.id);
        self.event_extra = format!(
            "exchange = \"{exchange}\"\nexchange_type = \"topic\"\nbinding_keys = [\"orders.*\"]\n"
        );
        exchange
    }

    /// Publishes to `exchange` with `routing_key`, confirmed.
    pub async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                Default::default(),
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "publish not confirmed");
    }

    /// Publishes a JSON body `{"id": id, "behave": behave}` with message_id = id.
    pub async fn publish_json(&self, subject: &str, id: &str, behave: &str) {
        self.publish_json_to("", &self.queue(subject), id, behave)
            .await;
    }

    /// [`TestCtx::publish_json`] to `exchange` with `routing_key`.
    pub async fn publish_json_to(&self, exchange: &str, routing_key: &str, id: &str, behave: &str) {
        let body = serde_json::json!({"id": id, "behave": behave}).to_string();
        let props = BasicProperties::default()
            .with_message_id(id.into())
            .with_delivery_mode(2);
        self.publish_to(exchange, routing_key, body.as_bytes(), props)
            .await;
    }

    pub async fn declare(&self) {
        // The agent declares too; tests that publish before starting it need the queues first.
        for subject in ["event", "command"] {
            self.channel
                .queue_declare(
                    self.queue(subject).as_str().into(),
                    QueueDeclareOptions::durable(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
    }

    /// Deletes one queue (a test's way to break the topology under a running agent).
    pub async fn delete_queue(&self, queue: &str) {
        self.channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }

    pub async fn queue_len(&self, queue: &str) -> u32 {
        let ch = self.conn.create_channel().await.unwrap();
        let opts = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = ch
            .queue_declare(queue.into(), opts, FieldTable::default())
            .await
            .unwrap();
        let n = q.message_count();
        let _ = ch.close(200, "ok".into()).await;
        n
    }

    /// The dead-letter queue of `subject`.
    pub fn dead_queue(&self, subject: &str) -> String {
        amqp_agent::broker::dead_queue_name(&self.queue(subject))
    }

    /// The delay queue of `subject` for `delay`.
    pub fn delay_queue(&self, subject: &str, delay: Duration) -> String {
        amqp_agent::broker::delay_queue_name(&self.queue(subject), delay)
    }

    /// Takes every message from the dead-letter queue of `subject`.
    pub async fn drain_dead(&self, subject: &str) -> Vec<(BasicProperties, Vec<u8>)> {
        self.take_all(&self.dead_queue(subject)).await
    }

    /// Takes (and acks) every message ready in `queue`.
    pub async fn take_all(&self, queue: &str) -> Vec<(BasicProperties, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(msg) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            msg.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            out.push((msg.delivery.properties.clone(), msg.delivery.data.clone()));
        }
        out
    }

    /// Takes (and acks) every message ready in `queue`; returns their message ids, sorted.
    pub async fn take_ids(&self, queue: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .take_all(queue)
            .await
            .iter()
            .map(|(props, _)| {
                props
                    .message_id()
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            })
            .collect();
        ids.sort();
        ids
    }

    pub fn records(&self) -> Vec<Value> {
        let path = fpm().dir.join("records").join(format!("{}.jsonl", self.id));
        let Ok(text) = std::fs::read_to_string(path) else {
            return Vec::new();
        };
        // A line PHP is still writing has no newline yet: read only complete lines.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).expect("recorder writes JSON lines"))
            .collect()
    }

    /// Records grouped by the body's JSON id.
    pub fn records_by_id(&self) -> BTreeMap<String, Vec<Value>> {
        let mut map: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for r in self.records() {
            if let Some(id) = r["json_id"].as_str() {
                map.entry(id.to_owned()).or_default().push(r);
            }
        }
        map
    }

    pub async fn wait_records(&self, n: usize, timeout: Duration) -> Vec<Value> {
        eventually(timeout, &format!("{n} records"), || async {
            self.records().len() >= n
        })
        .await;
        self.records()
    }
}

/// A connection to `url` and a channel on it in confirm mode (publishes wait for the broker).
pub async fn confirm_channel(url: &str) -> (Connection, lapin::Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ at {url}: {e}"));
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, channel)
}

pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

pub fn body_of(record: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(record["body_b64"].as_str().expect("body_b64"))
        .unwrap()
}

/// How long the helpers below wait for the agent by default.
pub const WAIT: Duration = Duration::from_secs(60);

/// Parses `text`, lets `edit` change it as a table, renders it again.
pub fn edit_toml(text: &str, edit: impl FnOnce(&mut toml::Table)) -> String {
    let mut doc: toml::Table = text.parse().expect("test TOML parses");
    edit(&mut doc);
    toml::to_string(&doc).expect("test TOML renders")
}

/// Sets the dotted `path` in `doc`, creating the tables on the way.
pub fn set_key(doc: &mut toml::Table, path: &str, value: impl Into<toml::Value>) {
    let (parents, key) = path
        .rsplit_once('.')
        .map_or((None, path), |(p, k)| (Some(p), k));
    let mut table = doc;
    for part in parents.into_iter().flat_map(|p| p.split('.')) {
        table = table
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap_or_else(|| panic!("`{part}` of `{path}` is not a table"));
    }
    table.insert(key.to_owned(), value.into());
}

/// Removes the dotted `path` from `doc` (nothing if it is not there).
pub fn remove_key(doc: &mut toml::Table, path: &str) {
    let (parents, key) = path
        .rsplit_once('.')
        .map_or((None, path), |(p, k)| (Some(p), k));
    let mut table = doc;
    for part in parents.into_iter().flat_map(|p| p.split('.')) {
        match table.get_mut(part).and_then(toml::Value::as_table_mut) {
            Some(t) => table = t,
            None => return,
        }
    }
    table.remove(key);
}

/// A test's broker objects, deleted when it is dropped: at the end of the test, or while a
/// failed one unwinds. Queue names come from the configs the test rendered: each subject's
/// queue, its dead-letter queue, and every delay queue the agent could declare for it (the
/// scheduled delays and the `Retry-After` buckets, see `RetryPolicy::retry_after_bucket`).
#[derive(Default)]
pub struct Cleanup {
    queues: Mutex<BTreeSet<String>>,
    exchanges: Mutex<BTreeSet<String>>,
}

impl Cleanup {
    /// Registers the queues of the config `text`.
    pub fn config(&self, text: &str) {
        let mut names = Vec::new();
        if let Ok(config) = Config::from_toml(text, Path::new("test.toml"), |_| None) {
            let retry = &config.retry;
            let mut delays: BTreeSet<Duration> = retry.delays.iter().copied().collect();
            let mut power = Duration::from_secs(1);
            while power < retry.max_retry_after {
                delays.insert(power);
                power *= 2;
            }
            delays.insert(retry.max_retry_after);
            for subject in config.subjects.values() {
                names.push(subject.queue.clone());
                names.push(amqp_agent::broker::dead_queue_name(&subject.queue));
                for delay in &delays {
                    names.push(amqp_agent::broker::delay_queue_name(&subject.queue, *delay));
                }
            }
        } else if let Ok(doc) = text.parse::<toml::Table>() {
            // A config the test made invalid on purpose: its subjects' queues still count.
            let subjects = doc.get("subjects").and_then(toml::Value::as_table);
            for subject in subjects.into_iter().flat_map(|s| s.values()) {
                if let Some(queue) = subject.get("queue").and_then(toml::Value::as_str) {
                    names.push(queue.to_owned());
                    names.push(amqp_agent::broker::dead_queue_name(queue));
                }
            }
        }
        self.queues.lock().unwrap().extend(names);
    }

    /// Registers an exchange.
    pub fn exchange(&self, name: &str) {
        self.exchanges.lock().unwrap().insert(name.to_owned());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut *self.queues.lock().unwrap_or_else(|e| e.into_inner()));
        let exchanges =
            std::mem::take(&mut *self.exchanges.lock().unwrap_or_else(|e| e.into_inner()));
        // Drop may run inside the test's runtime (which must not block on itself) or while it
        // unwinds: a thread of its own with a runtime of its own.
        let deleter = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let connect = Connection::connect(AMQP_URL, ConnectionProperties::default());
                let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(10), connect).await
                else {
                    return; // No broker (a test stopped it): nothing to delete on.
                };
                let mut channel = None;
                for name in &queues {
                    if channel.is_none() {
                        channel = conn.create_channel().await.ok();
                    }
                    let Some(ch) = &channel else { break };
                    // Deleting a queue that does not exist is fine; any error closes the
                    // channel, so the next name opens a new one.
                    if ch
                        .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                        .await
                        .is_err()
                    {
                        channel = None;
                    }
                }
                if let Ok(ch) = conn.create_channel().await {
                    for name in &exchanges {
                        let _ = ch
                            .exchange_delete(name.as_str().into(), Default::default())
                            .await;
                    }
                }
                let _ = conn.close(200, "test cleanup".into()).await;
            });
        });
        let _ = deleter.join();
    }
}

/// `/status` of the agent whose admin API listens on `port`, `None` while it does not answer.
pub async fn status(port: u16) -> Option<Value> {
    match procs::http(port, "GET", "/status", None).await {
        Some((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// Waits until `/status` on `port` satisfies `cond`; returns the document that did.
pub async fn wait_status(
    port: u16,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let doc = status(port).await;
        if let Some(doc) = doc.filter(|d| cond(d)) {
            return doc;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what} in /status (last: {})",
            status(port).await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `/readyz` on `port` answers 200.
pub async fn wait_ready(port: u16, timeout: Duration) {
    eventually(timeout, "/readyz to answer 200", || async {
        matches!(
            procs::http(port, "GET", "/readyz", None).await,
            Some((200, _))
        )
    })
    .await;
}

/// `/metrics` on `port`, `None` while it does not answer.
pub async fn metrics(port: u16) -> Option<String> {
    match procs::http(port, "GET", "/metrics", None).await {
        Some((200, body)) => Some(body),
        _ => None,
    }
}

/// The sum of the samples of metric `name` (e.g. `amqp_agent_fpm_responses_total`) whose labels
/// include every `labels` pair.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Every subject of a `/status` document satisfies `cond`.
pub fn all_subjects(doc: &Value, cond: impl Fn(&Value) -> bool) -> bool {
    doc["subjects"]
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.values().all(cond))
}

/// Some subject of a `/status` document satisfies `cond`.
pub fn any_subject(doc: &Value, cond: impl Fn(&Value) -> bool) -> bool {
    doc["subjects"]
        .as_object()
        .is_some_and(|s| s.values().any(cond))
}
