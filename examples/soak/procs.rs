//! The processes of the soak: its php-fpm pool (stopped and started again, children killed) and
//! the two agents (killed and restarted, signalled, asked over the admin API). All are tied to
//! the soak (SIGTERM when it dies).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{Args, BATCH_MAX, FPM_TIMEOUT_MS, Lane, MAX_ATTEMPTS, POLL, RETRY_DELAYS, SLOW_MS};

use crate::fpm_pool;
pub use crate::os::{free_port, newest_php_fpm, signal};
use crate::os::{spawn_tied, wait_exit};

/// The children of `pid` (from /proc/<pid>/task/*/children).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.filter_map(Result::ok) {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// php-fpm

/// The soak's own php-fpm pool on a loopback port; stopped when dropped.
pub struct Fpm {
    child: Option<Child>,
    bin: PathBuf,
    conf: PathBuf,
    dir: PathBuf,
    /// `127.0.0.1:<port>`, kept across restarts.
    pub address: String,
}

impl Fpm {
    pub fn start(
        bin: &Path,
        dir: &Path,
        records: &Path,
        children: usize,
        secret: &str,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let address = format!("127.0.0.1:{port}");
        let conf_path = dir.join("fpm.conf");
        let d = dir.display();
        // request_terminate_timeout above the slow messages' sleep: FPM itself kills nothing.
        // The secret reaches the writer in its environment, not on its command line.
        fpm_pool::write_config(
            fpm_pool::writer()
                .env("AGENT_SIGNING_SECRET", secret)
                .args(["--pid", &format!("{d}/fpm.pid")])
                .args(["--error-log", &format!("{d}/fpm.log")])
                .args(["--pool", "soak"])
                .args(["--listen", &address])
                .args(["--listen-backlog", "511"])
                .args(["--children", &children.to_string()])
                .args(["--max-requests", "0"])
                .args(["--clear-env", "no"])
                .args(["--catch-workers-output", "yes"])
                .args(["--request-terminate-timeout", "30s"])
                .args(["--env", &format!("RECORD_DIR={}", records.display())])
                .args(["--env", &format!("SOAK_SLOW_MS={SLOW_MS}")])
                .args(["--env", "AGENT_SIGNING_SECRET"])
                .args(["--admin-value", &format!("error_log={d}/php.log")])
                .args(["--admin-flag", "log_errors=on"]),
            &conf_path,
        )?;
        let mut fpm = Self {
            child: None,
            bin: bin.to_owned(),
            conf: conf_path,
            dir: dir.to_owned(),
            address,
        };
        fpm.spawn()?;
        Ok(fpm)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = fpm_pool::command(&self.bin, &self.conf);
        let child =
            spawn_tied(&mut cmd).with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.address).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!(
                    "php-fpm exited ({status}); see {}",
                    self.dir.join("fpm.log").display()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "php-fpm did not listen on {} within 20 s",
                self.address
            );
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    pub fn master_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// kill -9 of up to `n` of the pool's children (the master starts new ones); their pids.
    pub fn kill_children(&self, n: usize, rng: &mut crate::Rng) -> Vec<u32> {
        let Some(master) = self.master_pid() else {
            return Vec::new();
        };
        let mut children = children_of(master);
        let mut killed = Vec::new();
        while killed.len() < n && !children.is_empty() {
            let pid = children.swap_remove(rng.below(children.len() as u64) as usize);
            signal(pid, libc::SIGKILL);
            killed.push(pid);
        }
        killed
    }

    /// SIGTERM to the master (its children end at once, requests in flight with them); waits
    /// for the exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGTERM);
            if wait_exit(&mut child, Duration::from_secs(10))
                .await
                .is_none()
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Starts the pool again on the same port (the config is unchanged).
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            return Ok(());
        }
        self.child = None;
        // The old listening socket may take a moment to be released.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("  php-fpm restart failed ({e:#}); trying again");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Fpm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => return,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                    Ok(None) => std::thread::sleep(POLL),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The agents

/// One agent under test, with its config, log, admin port and RSS samples.
pub struct Agent {
    pub name: &'static str,
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    admin: String,
    child: Option<Child>,
    pub pid: u32,
    /// Text of the config with `{BATCH_WAIT}` where the batch subject's `batch_wait` goes
    /// (SIGHUP alternates it, so a reload restarts that subject's consumer).
    template: String,
    batch_wait_ms: u64,
    /// (µs, KiB) per sample, every instance of the process.
    pub rss: Vec<(u64, u64)>,
    /// Starts of the process, the first included.
    pub starts: u32,
    /// Exits the soak did not cause (the agent died or exited on its own).
    pub unexpected_exits: Vec<String>,
    /// It consumes from the soak's cluster (`--cluster`, agent b).
    pub on_cluster: bool,
}

impl Agent {
    pub fn new(
        index: usize,
        args: &Args,
        dir: &Path,
        fpm: &str,
        secret: &str,
        lanes: &[Lane],
        urls: &[String],
    ) -> anyhow::Result<Self> {
        let name = ["a", "b"][index];
        let admin = format!("127.0.0.1:{}", free_port()?);
        let state = dir.join(format!("state-{name}"));
        std::fs::create_dir_all(&state)?;
        let mut subjects = String::new();
        for lane in lanes.iter().filter(|l| l.agent == index) {
            let batch = if lane.subject == "command" {
                format!("batch_max = {BATCH_MAX}\nbatch_wait = \"{{BATCH_WAIT}}ms\"\n")
            } else {
                // One message per request, as the lane is meant (not set, batch_max would batch
                // once the handler's acks say it takes batches).
                "batch_max = 1\n".to_owned()
            };
            let _ = write!(
                subjects,
                "[subjects.{subject}]\nqueue = \"{queue}\"\npool_size = 3\nmin_pool_size = 1\n\
                 max_pool_size = 5\n{batch}\n",
                subject = lane.subject,
                queue = lane.queue,
            );
        }
        // One node: `amqp.url`; the soak's cluster: `amqp.urls`, as tests/it/cluster.rs configures it.
        let broker = match urls {
            [url] => format!("url = \"{url}\""),
            _ => format!(
                "urls = [{}]",
                urls.iter()
                    .map(|u| format!("\"{u}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let template = format!(
            "# generated by examples/soak (agent {name})\n[amqp]\n{broker}\n\
             queue_type = \"{queue_type}\"\nheartbeat = \"10s\"\n\n\
             [fpm]\naddress = \"{fpm}\"\nscript_filename = \"{script}\"\n\
             request_uri = \"/soak/{{subject}}\"\ntimeout = \"{FPM_TIMEOUT_MS}ms\"\n\
             signing_secrets = [\"{secret}\"]\nmax_children = {cap}\n\n\
             [retry]\ndelays = {RETRY_DELAYS}\nmax_attempts = {MAX_ATTEMPTS}\n\n{subjects}\
             [agent]\nshutdown_timeout = \"10s\"\nstate_dir = \"{state}\"\npoison_after = 2\n\
             max_restarts = 100\n\n\
             [admin]\nlisten = \"{admin}\"\ntoken = \"{token}\"\n",
            queue_type = if index == 0 { "classic" } else { "quorum" },
            script = dir.join("soak-handler.php").display(),
            cap = args.fpm_children / 2,
            state = state.display(),
            token = crate::random_hex(16),
        );
        let agent = Self {
            name,
            bin: args.agent_bin.clone(),
            config: dir.join(format!("agent-{name}.toml")),
            log: dir.join(format!("agent-{name}.log")),
            admin,
            child: None,
            pid: 0,
            template,
            batch_wait_ms: 20,
            rss: Vec::new(),
            starts: 0,
            unexpected_exits: Vec::new(),
            on_cluster: urls.len() > 1,
        };
        agent.write_config()?;
        let out = agent_command(&agent.bin)
            .arg("check-config")
            .arg("--config")
            .arg(&agent.config)
            .output()?;
        ensure!(
            out.status.success(),
            "the generated config of agent {name} is refused:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(agent)
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let text = self
            .template
            .replace("{BATCH_WAIT}", &self.batch_wait_ms.to_string());
        std::fs::write(&self.config, text)?;
        Ok(())
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = agent_command(&self.bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info,lapin=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child =
            spawn_tied(&mut cmd).with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.pid = child.id();
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// Whether the process runs; records an exit the soak did not cause.
    pub fn alive(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.unexpected_exits
                    .push(format!("agent {} exited on its own: {status}", self.name));
                self.child = None;
                false
            }
            Err(_) => false,
        }
    }

    /// Waits until `GET /readyz` answers 200 (every subject consuming).
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            ensure!(
                self.alive(),
                "agent {} exited:\n{}",
                self.name,
                self.log_tail()
            );
            if let Ok((200, _)) = self.get("/readyz").await {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "agent {} not ready within {} s:\n{}",
                self.name,
                timeout.as_secs(),
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Restarts the agent if it is not running (after an unexpected exit), and waits for it.
    pub async fn ensure_running(&mut self) -> anyhow::Result<()> {
        if !self.alive() {
            self.start()?;
        }
        self.wait_ready(Duration::from_secs(60)).await
    }

    /// kill -9, then a new process at once; waits until it is ready.
    pub async fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            self.sample_rss();
            signal(child.id(), libc::SIGKILL);
            let _ = wait_exit(&mut child, Duration::from_secs(10)).await;
        }
        self.start()?;
        self.wait_ready(Duration::from_secs(60)).await
    }

    pub fn signal(&self, sig: libc::c_int) {
        if self.child.is_some() {
            signal(self.pid, sig);
        }
    }

    /// SIGHUP after switching the batch subject's `batch_wait` (10 ms <-> 20 ms): the reload
    /// drains and restarts that subject's consumer.
    pub fn reload(&mut self) -> anyhow::Result<()> {
        self.batch_wait_ms = if self.batch_wait_ms == 20 { 10 } else { 20 };
        self.write_config()?;
        self.signal(libc::SIGHUP);
        Ok(())
    }

    pub fn sample_rss(&mut self) {
        if self.child.is_some()
            && let Some(kib) = rss_kib(self.pid)
        {
            self.rss.push((crate::now_us(), kib));
        }
    }

    /// `GET path` on the admin listener: (status, body).
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(&self.admin).await?;
            stream
                .write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await?;
            let mut out = Vec::new();
            stream.read_to_end(&mut out).await?;
            anyhow::Ok(out)
        };
        let out = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .context("admin request timed out")??;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no HTTP status")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// The AMQP port of the node `subject` consumes from (`/status`), while it consumes.
    pub async fn node_port(&self, subject: &str) -> Option<u16> {
        let (200, body) = self.get("/status").await.ok()? else {
            return None;
        };
        let status: serde_json::Value = serde_json::from_str(&body).ok()?;
        let subject = &status["subjects"][subject];
        if subject["consuming"] != true {
            return None;
        }
        subject["node"].as_str()?.rsplit_once(':')?.1.parse().ok()
    }

    /// SIGTERM (drain) and the exit code.
    pub async fn stop(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return format!("agent {}: not running", self.name);
        };
        signal(child.id(), libc::SIGTERM);
        match wait_exit(&mut child, Duration::from_secs(30)).await {
            Some(status) => format!("agent {}: SIGTERM -> {status}", self.name),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                format!("agent {}: did not exit within 30 s of SIGTERM", self.name)
            }
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Lines of the agent's log (every instance) containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `amqp-agent <args>` without `AMQP_AGENT_*` from the environment: only the config counts.
fn agent_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AMQP_AGENT_") {
            cmd.env_remove(name);
        }
    }
    cmd
}
