//! Real processes for fault injection: the agent binary, a private php-fpm that can be stopped
//! and started, and a TCP proxy that can cut the link to RabbitMQ.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use super::{SECRET, fpm, fpm_pool, free_port, wait_until};

/// The agent binary running `run --config`, its stderr in a log file.
pub struct AgentProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl AgentProcess {
    pub fn start(config: &Path, log: &Path) -> Self {
        Self::start_with(config, log, &[], &[])
    }

    /// Starts with extra environment variables and extra arguments (before `run`).
    pub fn start_with(config: &Path, log: &Path, env: &[(&str, String)], args: &[&str]) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_amqp-agent"));
        cmd.args(args)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,lapin=warn")
            .env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("agent binary");
        Self {
            child,
            log: log.to_owned(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a [`PrivateFpm`] listens.
enum Listener {
    Tcp,
    Unix,
}

/// A php-fpm pool of its own (the shared one must keep running for other tests).
pub struct PrivateFpm {
    pub port: u16,
    /// The Unix socket it listens on instead of `port` ([`PrivateFpm::start_unix`]).
    pub socket: Option<PathBuf>,
    conf: PathBuf,
    child: Option<Child>,
}

impl PrivateFpm {
    pub fn start(name: &str) -> Self {
        Self::start_with(name, 8, None)
    }

    /// [`PrivateFpm::start_with`] on a Unix socket (`socket`; `port` is unused).
    pub fn start_unix(name: &str, max_children: u32, status_path: Option<&str>) -> Self {
        Self::launch(name, max_children, status_path, Listener::Unix)
    }

    /// A pool of `max_children` static children; `status_path` sets its `pm.status_path`.
    pub fn start_with(name: &str, max_children: u32, status_path: Option<&str>) -> Self {
        Self::launch(name, max_children, status_path, Listener::Tcp)
    }

    fn launch(name: &str, max_children: u32, status_path: Option<&str>, on: Listener) -> Self {
        let shared = fpm();
        let port = free_port();
        let dir = shared.dir.join(format!("fpm-{name}-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("fpm.conf");
        let socket = matches!(on, Listener::Unix).then(|| dir.join("fpm.sock"));
        let d = dir.display();
        let mut writer = fpm_pool::writer();
        writer
            .args(["--error-log", &format!("{d}/fpm.log")])
            .args(["--pool", "p"]);
        match &socket {
            Some(path) => writer
                .arg("--listen")
                .arg(path)
                .args(["--listen-mode", "0666"]),
            None => writer.args(["--listen", &format!("127.0.0.1:{port}")]),
        };
        writer.args(["--children", &max_children.to_string()]);
        if let Some(path) = status_path {
            writer.args(["--status-path", path]);
        }
        writer
            .args(["--clear-env", "no"])
            .args([
                "--env",
                &format!("RECORD_DIR={}", shared.dir.join("records").display()),
            ])
            .args(["--env", &format!("AGENT_SIGNING_SECRET={SECRET}")])
            .args(["--admin-value", &format!("error_log={d}/php.log")]);
        fpm_pool::write_config(&mut writer, &conf).unwrap();
        let mut me = Self {
            port,
            socket,
            conf,
            child: None,
        };
        me.up();
        me
    }

    pub fn up(&mut self) {
        let mut cmd = super::fpm_pool::command(&super::php_fpm_binary(), &self.conf);
        self.child = Some(cmd.spawn().expect("php-fpm"));
        wait_until(Duration::from_secs(20), "private php-fpm to listen", || {
            self.accepts()
        });
    }

    fn accepts(&self) -> bool {
        match &self.socket {
            Some(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
            None => std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
        }
    }

    /// Stops php-fpm (SIGTERM: the master kills its children at once) and waits until the port is closed.
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
        wait_until(Duration::from_secs(10), "php-fpm port closed", || {
            !self.accepts()
        });
    }
}

impl Drop for PrivateFpm {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then stops its children instead of orphaning them.
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }
}

/// A TCP proxy in front of RabbitMQ whose link can be cut (every connection closed, new ones
/// refused) and restored, and which can rewrite the content-header frames the broker sends.
pub struct TcpProxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    rewrites: Arc<AtomicUsize>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

/// Edits the payload of one content-header frame from the broker in place; true if it did.
pub type Rewrite = fn(&mut [u8]) -> bool;

impl TcpProxy {
    pub async fn start(upstream: &'static str) -> Self {
        Self::start_with(upstream, None).await
    }

    /// A proxy that passes every content-header frame from the broker through `rewrite`.
    pub async fn rewriting(upstream: &'static str, rewrite: Rewrite) -> Self {
        Self::start_with(upstream, Some(rewrite)).await
    }

    async fn start_with(upstream: &'static str, rewrite: Option<Rewrite>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let rewrites = Arc::new(AtomicUsize::new(0));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (cut2, conns2, rewrites2) = (cut.clone(), conns.clone(), rewrites.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if cut2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let rewrites = rewrites2.clone();
                let task = tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let Some(rewrite) = rewrite else {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    };
                    let (mut client_rx, client_tx) = inbound.into_split();
                    let (broker_rx, mut broker_tx) = outbound.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut client_rx, &mut broker_tx) => {}
                        () = relay_frames(broker_rx, client_tx, rewrite, &rewrites) => {}
                    }
                });
                conns2.lock().unwrap().push(task);
            }
        });
        Self {
            port,
            cut,
            rewrites,
            conns,
            accept,
        }
    }

    /// How many content-header frames `rewrite` changed.
    pub fn rewrites(&self) -> usize {
        self.rewrites.load(Ordering::SeqCst)
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copies AMQP frames from the broker to the client, whole frames at a time, passing each
/// content-header frame's payload through `rewrite`.
async fn relay_frames(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rewrite: Rewrite,
    rewrites: &AtomicUsize,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut done = 0;
        while buf.len() - done >= 7 {
            let size = u32::from_be_bytes(buf[done + 3..done + 7].try_into().unwrap()) as usize;
            let end = done + 7 + size + 1;
            if buf.len() < end {
                break;
            }
            if buf[done] == 2 && rewrite(&mut buf[done + 7..end - 1]) {
                rewrites.fetch_add(1, Ordering::SeqCst);
            }
            done = end;
        }
        if to.write_all(&buf[..done]).await.is_err() {
            return;
        }
        buf.drain(..done);
    }
}

/// A blocking-free HTTP/1.1 request to a local port: (status, body).
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Option<(u16, String)> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    http_raw(
        port,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await
}

/// Sends `request` to a local port as is: (status, body) of the answer, `None` if there is none
/// within 10 s.
pub async fn http_raw(port: u16, request: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Runs the agent binary with `args`; returns (exit code, stdout + stderr).
pub fn agent_cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_amqp-agent"))
        .args(args)
        .output()
        .expect("agent binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}
