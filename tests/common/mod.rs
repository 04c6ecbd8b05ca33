//! Test harness: a real php-fpm pool running the recording receiver, a real RabbitMQ, and
//! helpers to publish, inspect queues and read what PHP received.
//!
//! The pool is started once per test binary, on a free port, from a thread that lives as long
//! as the process; php-fpm gets SIGTERM when the test process exits (PR_SET_PDEATHSIG).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
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
pub mod nft;
pub mod otlp;
pub mod procs;
use amqp_agent::config::Config;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const SECRET: &str = "test-signing-secret-0123456789";
/// The admin token of every test config: commands need it.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The shared php-fpm pool of this test binary.
pub struct Fpm {
    pub port: u16,
    pub dir: PathBuf,
    pub recorder: PathBuf,
    pub receiver: PathBuf,
    pub master_pid: u32,
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
    let is_root = unsafe { libc::geteuid() } == 0;
    let user = if is_root {
        "user = root\ngroup = root\n"
    } else {
        ""
    };
    let conf = format!(
        "[global]\npid = {dir}/fpm.pid\nerror_log = {dir}/fpm.log\ndaemonize = no\n\n\
         [test]\n{user}listen = 127.0.0.1:{port}\npm = static\npm.max_children = 24\n\
         clear_env = no\ncatch_workers_output = yes\nrequest_terminate_timeout = 0\n\
         env[RECORD_DIR] = {records}\nenv[AGENT_SIGNING_SECRET] = {SECRET}\n\
         php_admin_value[error_log] = {dir}/php.log\nphp_admin_value[memory_limit] = 256M\n\
         php_admin_value[post_max_size] = 64M\n",
        dir = dir.display(),
        records = records.display(),
    );
    std::fs::write(dir.join("fpm.conf"), conf).unwrap();
    let bin = php_fpm_binary();
    let conf_path = dir.join("fpm.conf");
    let (tx, rx) = std::sync::mpsc::channel();
    // PR_SET_PDEATHSIG fires when the *thread* that forked exits, so fork from one that never does.
    std::thread::spawn(move || {
        let mut cmd = Command::new(&bin);
        cmd.arg("--nodaemonize").arg("--fpm-config").arg(&conf_path);
        if is_root {
            cmd.arg("-R");
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child: Child = cmd.spawn().expect("cannot start php-fpm");
        tx.send(child.id()).unwrap();
        // Reap php-fpm if it exits; the thread then parks for the rest of the process.
        let _ = child.wait();
        loop {
            std::thread::park();
        }
    });
    let master_pid = rx.recv().unwrap();
    wait_until(Duration::from_secs(20), "php-fpm to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Fpm {
        port,
        dir,
        recorder,
        receiver,
        master_pid,
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
}

impl TestCtx {
    pub async fn new(name: &str) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,lapin=warn".into()),
            )
            .with_test_writer()
            .try_init();
        let id = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let (conn, channel) = confirm_channel(AMQP_URL).await;
        Self {
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
        }
    }

    pub fn queue(&self, subject: &str) -> String {
        format!("t.{}.{subject}", self.id)
    }

    pub fn toml(&self) -> String {
        format!(
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
        )
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::new(
            Config::from_toml(&self.toml(), Path::new("test.toml"), |_| None)
                .expect("test config is valid"),
        )
    }

    pub fn write_config(&self) -> PathBuf {
        let path = fpm().dir.join(format!("{}.toml", self.id));
        std::fs::write(&path, self.toml()).unwrap();
        path
    }

    pub async fn start_agent(&self) -> Agent {
        let agent = Agent::start(self.config()).await.unwrap();
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

    /// Takes every message from `<queue>.dead`.
    pub async fn drain_dead(&self, subject: &str) -> Vec<(BasicProperties, Vec<u8>)> {
        self.take_all(&format!("{}.dead", self.queue(subject)))
            .await
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

    pub async fn cleanup(&self) {
        let ch = self.conn.create_channel().await.unwrap();
        for subject in ["event", "command"] {
            let q = self.queue(subject);
            let mut names = vec![q.clone(), format!("{q}.dead")];
            for ms in [
                100, 200, 300, 500, 1000, 2000, 3000, 4000, 5000, 8000, 16000, 32000, 60000,
            ] {
                names.push(format!("{q}.retry.{ms}ms"));
            }
            for name in names {
                let _ = ch
                    .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
        }
        // The exchange of `use_topic_exchange`, if the test made one.
        let exchange = format!("t.{}.x", self.id);
        let _ = ch
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
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
