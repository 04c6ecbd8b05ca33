//! The processes the bench starts: its own php-fpm pool and the agent under test, both tied
//! to the bench (SIGTERM when it dies) and stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::POLL;
use crate::args::Listen;
use crate::fpm_pool;

pub use crate::os::{free_port, newest_php_fpm, signal, spawn_tied, wait_exit};

// ---------------------------------------------------------------------------------------------
// php-fpm

/// The bench's own php-fpm pool; stopped when dropped.
pub struct Fpm {
    pub child: Child,
    /// The agent's `fpm.address`: `127.0.0.1:<port>` or `unix:<path>`.
    pub address: String,
    /// The second pool's, listening the other way (`--quick --streamed`).
    pub alt_address: Option<String>,
}

impl Fpm {
    /// Starts php-fpm with one pool listening as `listen` and, with `alt`, a second pool of as
    /// many children listening the other way (`--quick --streamed` compares the two).
    pub fn start(
        bin: &Path,
        dir: &Path,
        records: &Path,
        children: usize,
        listen: Listen,
        alt: Option<Listen>,
    ) -> anyhow::Result<Self> {
        let conf_path = dir.join("fpm.conf");
        let d = dir.display();
        let mut writer = fpm_pool::writer();
        writer
            .args(["--pid", &format!("{d}/fpm.pid")])
            .args(["--error-log", &format!("{d}/fpm.log")]);
        // Adds the pool `name` to the writer's options; the agent's address of it.
        let mut pool = |name: &str, listen: Listen| {
            writer.args(["--pool", name]);
            let address = match listen {
                Listen::Tcp => {
                    let address = format!("127.0.0.1:{}", free_port()?);
                    writer.args(["--listen", &address]);
                    address
                }
                Listen::Unix => {
                    let path = dir.join(format!("{name}.sock"));
                    writer
                        .arg("--listen")
                        .arg(&path)
                        .args(["--listen-mode", "0666"]);
                    format!("unix:{}", path.display())
                }
            };
            writer
                .args(["--children", &children.to_string()])
                .args(["--status-path", crate::FPM_STATUS_PATH])
                .args(["--max-requests", "0"])
                .args(["--clear-env", "no"])
                .args(["--catch-workers-output", "yes"])
                .args(["--request-terminate-timeout", "0"])
                .args(["--env", &format!("RECORD_DIR={}", records.display())])
                .args(["--admin-value", &format!("error_log={d}/php.log")])
                .args(["--admin-flag", "log_errors=on"]);
            anyhow::Ok(address)
        };
        let address = pool("bench", listen)?;
        let alt_address = alt.map(|l| pool("bench_alt", l)).transpose()?;
        fpm_pool::write_config(&mut writer, &conf_path)?;
        let mut cmd = fpm_pool::command(bin, &conf_path);
        let child =
            spawn_tied(&mut cmd).with_context(|| format!("cannot start {}", bin.display()))?;
        let mut fpm = Self {
            child,
            address,
            alt_address,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !fpm.accepts() {
            if let Ok(Some(status)) = fpm.child.try_wait() {
                bail!(
                    "php-fpm exited ({status}); see {}",
                    dir.join("fpm.log").display()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "php-fpm did not listen on {} within 20 s",
                fpm.address
            );
            std::thread::sleep(POLL);
        }
        Ok(fpm)
    }

    fn accepts(&self) -> bool {
        let accepts = |address: &str| match address.strip_prefix("unix:") {
            Some(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
            None => std::net::TcpStream::connect(address).is_ok(),
        };
        accepts(&self.address) && self.alt_address.as_deref().is_none_or(accepts)
    }
}

impl Drop for Fpm {
    fn drop(&mut self) {
        signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(POLL),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The agent process

/// `amqp-agent <args>` with no `AMQP_AGENT_*` overrides from the environment: only the
/// generated config counts.
pub fn agent_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AMQP_AGENT_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// The agent under test; killed when dropped unless [`AgentProc::stop`] stopped it.
pub struct AgentProc {
    child: Option<Child>,
    pub pid: u32,
    log: PathBuf,
}

impl AgentProc {
    /// `amqp-agent run --config <config>`, stderr into `log`, filtered by `rust_log`, with `env`
    /// set.
    pub fn spawn(
        bin: &Path,
        config: &Path,
        log: &Path,
        rust_log: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut cmd = agent_command(bin);
        cmd.envs(env.iter().copied());
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?);
        let child =
            spawn_tied(&mut cmd).with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Self {
            pid: child.id(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// The last 20 lines of the agent's log.
    /// The largest size each subject's pool was given by the autoscaler ("event 8, command 7"),
    /// from its "Autoscale: pool resized" lines (logged at info by the sizer).
    pub fn autoscaled_peaks(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut peaks: std::collections::BTreeMap<String, u32> = std::collections::BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| l.contains("Autoscale: pool resized"))
        {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(|v| v.trim_matches('"').to_owned())
            };
            if let (Some(subject), Some(to)) = (field("subject="), field("to=")) {
                let peak = peaks.entry(subject).or_default();
                *peak = (*peak).max(to.parse().unwrap_or(0));
            }
        }
        if peaks.is_empty() {
            return "never resized".to_owned();
        }
        peaks
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fails when the agent exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            bail!("the agent exited early ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }

    /// SIGTERM (drain), then waits for the exit; returns the exit code.
    pub async fn stop(&mut self) -> anyhow::Result<i32> {
        let Some(mut child) = self.child.take() else {
            bail!("agent already stopped");
        };
        signal(self.pid, libc::SIGTERM);
        match wait_exit(&mut child, Duration::from_secs(40)).await {
            Some(status) => Ok(status.code().unwrap_or(-1)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the agent did not exit within 40 s of SIGTERM")
            }
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
