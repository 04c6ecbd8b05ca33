//! Benchmark of amqp-agent against a real RabbitMQ and a real php-fpm pool.
//!
//! Run it through `scripts/bench` (it builds the release binary and this example and makes
//! sure RabbitMQ and php-fpm exist), or directly:
//! `cargo run --release --example bench -- --help`.
//!
//! What one invocation measures (each phase `--rounds` times, medians reported):
//!
//! 1. **Ceiling**: direct FastCGI load on the same php-fpm pool and handler, one keep-alive
//!    connection per concurrent worker, the same params the agent sends, no RabbitMQ. Writes
//!    are buffered (one send per request, as the agent does); the same without the buffer
//!    (fastcgi-client on a bare TcpStream sends every record separately) is shown too.
//! 2. **Drain**: N messages (half per subject, persistent, ~1 KiB JSON) are published first,
//!    then `amqp-agent run` is started; time from the agent's start to the last handler start.
//! 3. **Steady state**: publish at a fixed share of the ceiling, and at a share of the
//!    round's drain rate (the agent's capacity with the broker on the same cores); publish ->
//!    handler start latency (the handler stamps `microtime(true)`, the same wall clock). The
//!    same rates are also sent straight to FPM, as the baseline of what FPM alone costs.
//! 4. **I/O-bound**: the handler sleeps 10 ms; throughput against the 1000/10 ms × processes
//!    bound. Then the same with a prefetch that keeps ~1000 messages in the agent, for its RSS.
//! 5. **Reference**: one `php` process per message (the rabbitmq-cli-consumer model).
//! 6. **Sweep**: ceiling and drain at several pool sizes (chart in `throughput.svg`).
//!
//! For every agent run it reads CPU time (utime + stime) and peak RSS (VmHWM) of the agent
//! process from /proc, and compares the published ids with the ids the handler recorded.
//! With `BENCH_DUMP_LATENCY=<file>`, each steady-state run writes "<index> <published µs>
//! <latency µs>" per message to that file (the last run wins), to see when slow messages came.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, ValueEnum};
use fastcgi_client::conn::KeepAlive;
use fastcgi_client::io::TokioCompat;
use fastcgi_client::{Client, Params, Request};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};
use tokio::net::TcpStream;

const SUBJECTS: [&str; 2] = ["event", "command"];
const HANDLER: &str = "examples/php/bench-handler.php";
/// What both handlers require: decode the body, record the id.
const RECORD_LIB: &str = "examples/php/bench-record.php";
/// The same work for the process-per-message reference (row 5), body on stdin.
const CLI_HANDLER: &str = "examples/php/bench-cli-handler.php";
/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(20);
/// Unconfirmed publishes allowed in flight while loading a backlog.
const CONFIRM_WINDOW: usize = 2000;
/// Marker in RESULTS.md: hand-written notes below it survive a regeneration.
const NOTES_MARKER: &str = "<!-- notes: everything below this line is hand-written and kept when scripts/bench regenerates this file -->";

/// amqp-agent benchmark: ceiling (direct FastCGI), backlog drain, steady-state latency,
/// I/O-bound handler, RSS with ~1000 messages in flight, pool-size sweep.
#[derive(Debug, Parser)]
struct Args {
    /// Messages of the main drain (and requests of the main ceiling run).
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Run the pool-size sweep (chart data).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    sweep: OnOff,
    /// Messages per sweep point (CPU time is read in 10 ms ticks: 20,000 messages resolve
    /// 0.5 µs per message).
    #[arg(long, default_value_t = 20_000)]
    sweep_messages: usize,
    /// Pool sizes per subject of the sweep (total concurrency is twice this).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    sweep_pools: Vec<u16>,
    /// Repetitions of every measurement; the report shows medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Pool size per subject of the main ceiling, drain and steady-state runs.
    #[arg(long, default_value_t = 4)]
    pool: u16,
    /// Measured duration of the steady-state run, in seconds (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    steady_secs: u64,
    /// Steady-state publish rate as a fraction of the measured ceiling.
    #[arg(long, default_value_t = 0.5)]
    steady_load: f64,
    /// An extra steady-state run at this share of the machine's capacity for the whole path
    /// (0 = skip): cores / the CPU per message of publisher, RabbitMQ, agent and php-fpm
    /// together in run 3. RabbitMQ alone (a bare consumer) is measured at the same rate.
    #[arg(long, default_value_t = 0.5)]
    machine_load: f64,
    /// Messages of the I/O-bound run.
    #[arg(long, default_value_t = 8_000)]
    io_messages: usize,
    /// Handler sleep of the I/O-bound and RSS runs, in ms.
    #[arg(long, default_value_t = 10)]
    io_sleep_ms: u64,
    /// Pool size per subject of the I/O-bound and RSS runs.
    #[arg(long, default_value_t = 8)]
    io_pool: u16,
    /// Messages of the reference run with one `php` process per message (0 = skip).
    #[arg(long, default_value_t = 300)]
    spawn_messages: usize,
    /// PHP CLI binary of that reference run.
    #[arg(long, default_value = "php")]
    php_cli: PathBuf,
    /// Messages the agent should hold at once in the RSS run (sets prefetch_per_worker).
    #[arg(long, default_value_t = 1_000)]
    rss_in_flight: usize,
    /// Messages of the RSS run.
    #[arg(long, default_value_t = 4_000)]
    rss_messages: usize,
    /// Size of each JSON body in bytes.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// RabbitMQ.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// The agent binary.
    #[arg(long, default_value = "target/release/amqp-agent")]
    agent_bin: PathBuf,
    /// php-fpm binary (default: $PHP_FPM_BIN, else the newest /usr/sbin/php-fpm*).
    #[arg(long, env = "PHP_FPM_BIN")]
    php_fpm: Option<PathBuf>,
    /// Before each measured run, wait for other processes to use less than 0.2 cores; at most
    /// this many seconds over the whole bench (disturbed runs are flagged in the report).
    #[arg(long, default_value_t = 30)]
    quiet_wait: u64,
    /// Where RESULTS.md and throughput.svg are written.
    #[arg(long, default_value = "bench")]
    out_dir: PathBuf,
    /// Print only; do not write RESULTS.md and throughput.svg.
    #[arg(long)]
    no_write: bool,
    /// Also run one extra drain (not part of the results) under `perf record --call-graph dwarf`,
    /// into this file.
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Quick check while optimising: only the ceiling and the drain, `--rounds` times; prints
    /// one line per round and the medians, writes nothing.
    #[arg(long)]
    quick: bool,
    /// With `--quick`: the I/O-bound runs (agent and direct FastCGI) instead of ceiling and drain.
    #[arg(long, requires = "quick")]
    io: bool,
    /// With `--quick`: steady state only, at this rate (msg/s), with RabbitMQ alone (a bare
    /// consumer) at the same rate, `--rounds` times.
    #[arg(long, requires = "quick", conflicts_with = "io")]
    steady_rate: Option<f64>,
    /// `agent.worker_threads` of every agent run (default: the agent's default, 1).
    #[arg(long)]
    agent_worker_threads: Option<u16>,
    /// How php-fpm listens, for the agent and the ceiling alike: a Unix socket (php-fpm's
    /// default on Debian, and cheaper per request) or loopback TCP.
    #[arg(long, value_enum, default_value_t = Listen::Unix)]
    fpm_listen: Listen,
    /// `amqp.prefetch_per_worker` of the drain, steady-state and sweep runs (default: the
    /// agent's default).
    #[arg(long)]
    prefetch_per_worker: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Listen {
    Unix,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    ensure!(
        args.messages >= 2 && args.sweep_messages >= 2,
        "need at least 2 messages"
    );
    ensure!(
        args.agent_bin.exists(),
        "{} not found: build it with `cargo build --release` (scripts/bench does)",
        args.agent_bin.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Everything that forks runs in this future, on the main thread, so PR_SET_PDEATHSIG
    // (tied to the forking thread) only fires when the bench itself exits.
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let php_fpm = match &args.php_fpm {
        Some(p) => p.clone(),
        None => newest_php_fpm()?,
    };
    let dir = std::env::temp_dir().join(format!("amqp-agent-bench-{}", std::process::id()));
    let records = dir.join("records");
    std::fs::create_dir_all(&records)?;
    let script = dir.join("bench-handler.php");
    std::fs::copy(HANDLER, &script).with_context(|| format!("cannot copy {HANDLER}"))?;
    let record = dir.join("bench-record.php");
    std::fs::copy(RECORD_LIB, &record).with_context(|| format!("cannot copy {RECORD_LIB}"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        for p in [&dir, &records] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777))?;
        }
        for p in [&script, &record] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644))?;
        }
    }
    let largest_pool = args
        .sweep_pools
        .iter()
        .copied()
        .chain([args.pool, args.io_pool])
        .max()
        .unwrap_or(1);
    let children = (usize::from(largest_pool) * 2).max(16);
    let fpm = Fpm::start(&php_fpm, &dir, &records, children, args.fpm_listen)?;
    eprintln!(
        "php-fpm {} listening on {} (pm.max_children = {children}); work dir {}",
        php_fpm.display(),
        fpm.address,
        dir.display()
    );
    let conn = Connection::connect(&args.amqp_url, ConnectionProperties::default())
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {}", args.amqp_url))?;
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let admin = conn.create_channel().await?;
    let mut bench = Bench {
        args,
        dir: dir.clone(),
        records,
        script,
        fpm_address: fpm.address.clone(),
        fpm_pid: fpm.child.id(),
        conn,
        publish,
        admin,
        leftovers: Vec::new(),
        quiet_budget: Duration::ZERO,
        admin_section: false,
    };
    bench.admin_section = bench.agent_accepts_admin_section();
    bench.quiet_budget = Duration::from_secs(bench.args.quiet_wait);
    // Warm every FPM child up (OPcache, first accept) before anything is measured.
    let warm_up = usize::from(bench.args.pool.max(bench.args.io_pool)) * 2;
    bench
        .ceiling(warm_up, 5_000, None, true, 0)
        .await
        .context("warming php-fpm up")?;
    // Ctrl-C stops the measurement but still deletes the queues and stops php-fpm.
    let quick = bench.args.quick;
    let result = tokio::select! {
        result = async {
            if quick {
                bench.quick().await.map(|()| None)
            } else {
                bench.all().await.map(Some)
            }
        } => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    bench.cleanup().await;
    let _ = bench.conn.close(200, "bench done".into()).await;
    drop(fpm);
    match result {
        // `--quick` prints as it goes and writes nothing.
        Ok(None) => {
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        }
        Ok(Some(report)) => {
            let total = started.elapsed();
            let out = render(&bench.args, &report, total, &php_fpm);
            println!("{}", out.terminal);
            if !bench.args.no_write {
                std::fs::create_dir_all(&bench.args.out_dir)?;
                let results = bench.args.out_dir.join("RESULTS.md");
                let kept = std::fs::read_to_string(&results)
                    .ok()
                    .and_then(|t| t.split_once(NOTES_MARKER).map(|(_, n)| n.to_owned()))
                    .unwrap_or_else(|| "\n".to_owned());
                std::fs::write(&results, format!("{}{NOTES_MARKER}{kept}", out.markdown))?;
                let svg = bench.args.out_dir.join("throughput.svg");
                std::fs::write(&svg, out.svg)?;
                eprintln!("wrote {} and {}", results.display(), svg.display());
            }
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        }
        Err(e) => {
            eprintln!("bench failed; logs kept in {}", dir.display());
            Err(e)
        }
    }
}

fn newest_php_fpm() -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/sbin")?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("php-fpm"))
        })
        .collect();
    found.sort();
    found
        .pop()
        .context("php-fpm not found: set PHP_FPM_BIN or run scripts/bench")
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Spawns `cmd` so that it gets SIGTERM if the bench dies.
fn spawn_tied(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn()
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Waits for `child` to exit, polling; `None` if it is still running at the deadline.
async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// php-fpm

/// The bench's own php-fpm pool; stopped when dropped.
struct Fpm {
    child: Child,
    /// The agent's `fpm.address`: `127.0.0.1:<port>` or `unix:<path>`.
    address: String,
}

impl Fpm {
    fn start(
        bin: &Path,
        dir: &Path,
        records: &Path,
        children: usize,
        listen: Listen,
    ) -> anyhow::Result<Self> {
        let (listen, address) = match listen {
            Listen::Tcp => {
                let port = free_port()?;
                (format!("127.0.0.1:{port}"), format!("127.0.0.1:{port}"))
            }
            Listen::Unix => {
                let path = dir.join("fpm.sock");
                let path = path.display();
                (
                    format!("{path}\nlisten.mode = 0666"),
                    format!("unix:{path}"),
                )
            }
        };
        let is_root = unsafe { libc::geteuid() } == 0;
        let user = if is_root {
            "user = root\ngroup = root\n"
        } else {
            ""
        };
        let conf = format!(
            "[global]\npid = {dir}/fpm.pid\nerror_log = {dir}/fpm.log\ndaemonize = no\n\n\
             [bench]\n{user}listen = {listen}\npm = static\npm.max_children = {children}\n\
             pm.max_requests = 0\nclear_env = no\ncatch_workers_output = yes\n\
             request_terminate_timeout = 0\nenv[RECORD_DIR] = {records}\n\
             php_admin_value[error_log] = {dir}/php.log\nphp_admin_flag[log_errors] = on\n",
            dir = dir.display(),
            records = records.display(),
        );
        let conf_path = dir.join("fpm.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = Command::new(bin);
        cmd.arg("--nodaemonize").arg("--fpm-config").arg(&conf_path);
        if is_root {
            cmd.arg("-R");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child =
            spawn_tied(&mut cmd).with_context(|| format!("cannot start {}", bin.display()))?;
        let mut fpm = Self { child, address };
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
}

impl Fpm {
    fn accepts(&self) -> bool {
        match self.address.strip_prefix("unix:") {
            Some(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
            None => std::net::TcpStream::connect(&self.address).is_ok(),
        }
    }
}

/// A connection to the bench's php-fpm, over TCP (`TCP_NODELAY`) or a Unix socket.
type FpmStream = std::pin::Pin<Box<dyn FpmIo>>;
trait FpmIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send> FpmIo for T {}

async fn connect_fpm(address: &str) -> anyhow::Result<FpmStream> {
    Ok(match address.strip_prefix("unix:") {
        Some(path) => Box::pin(tokio::net::UnixStream::connect(path).await?),
        None => {
            let stream = TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            Box::pin(stream)
        }
    })
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

struct AgentProc {
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
}

impl AgentProc {
    fn spawn(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        // Only the generated config counts: no AMQP_AGENT_* overrides from the environment.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("AMQP_AGENT_") {
                cmd.env_remove(name);
            }
        }
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
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

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fails when the agent exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            bail!("the agent exited early ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }

    /// (utime, stime) in clock ticks.
    fn cpu_ticks(&self) -> anyhow::Result<(u64, u64)> {
        proc_stat(self.pid)
            .map(|s| (s.utime, s.stime))
            .context("cannot read /proc/<agent pid>/stat")
    }

    /// Context switches (voluntary + involuntary) of all the agent's threads so far.
    fn context_switches(&self) -> u64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return 0;
        };
        tasks
            .filter_map(Result::ok)
            .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
            .flat_map(|status| {
                status
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    /// Peak resident set size (VmHWM), KiB.
    fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .context("no VmHWM")?;
        Ok(line
            .trim_start_matches("VmHWM:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?)
    }

    /// SIGTERM (drain), then waits for the exit; returns the exit code.
    async fn stop(&mut self) -> anyhow::Result<i32> {
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

struct ProcStat {
    ppid: u32,
    utime: u64,
    stime: u64,
}

/// Parent, utime and stime (clock ticks) from /proc/<pid>/stat.
fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name start at field 3 (state): ppid is 4, utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(ProcStat {
        ppid: fields.get(1)?.parse().ok()?,
        utime: fields.get(11)?.parse().ok()?,
        stime: fields.get(12)?.parse().ok()?,
    })
}

/// CPU ticks used so far by the php-fpm pool (master + children), RabbitMQ and the bench.
#[derive(Debug, Clone, Copy)]
struct CpuSnapshot {
    fpm: u64,
    rabbitmq: u64,
    bench: u64,
    /// user + nice + system ticks of the whole machine (/proc/stat).
    busy: u64,
    at: Instant,
}

impl CpuSnapshot {
    /// CPU cores used on average since `before` by processes that are not part of the bench
    /// (not the agent, php-fpm, RabbitMQ or the bench itself): another workload on the machine.
    fn background_cores(&self, before: &CpuSnapshot, agent_ticks: u64) -> f64 {
        let ours = (self.fpm + self.rabbitmq + self.bench + agent_ticks)
            .saturating_sub(before.fpm + before.rabbitmq + before.bench);
        let other = self.busy.saturating_sub(before.busy).saturating_sub(ours);
        other as f64 / clock_ticks_per_sec() / (self.at - before.at).as_secs_f64().max(1e-3)
    }
}

fn system_busy_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_owned();
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            Some(f.first()? + f.get(1)? + f.get(2)?)
        })
        .unwrap_or(0)
}

fn cpu_snapshot(fpm_master: u32) -> CpuSnapshot {
    let mut snap = CpuSnapshot {
        fpm: 0,
        rabbitmq: 0,
        bench: 0,
        busy: system_busy_ticks(),
        at: Instant::now(),
    };
    let total = |s: &ProcStat| s.utime + s.stime;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return snap;
    };
    for entry in dir.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(stat) = proc_stat(pid) else {
            continue;
        };
        if pid == fpm_master || stat.ppid == fpm_master {
            snap.fpm += total(&stat);
        } else if std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "beam.smp")
        {
            snap.rabbitmq += total(&stat);
        } else if pid == std::process::id() {
            snap.bench += total(&stat);
        }
    }
    snap
}

/// CPUs this process may use (the machine's load is a share of them).
fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

fn clock_ticks_per_sec() -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

// ---------------------------------------------------------------------------------------------
// What the handler recorded

/// Incrementally reads `<records>/<run>.<pid>.log` files ("<index> <start µs>" lines).
struct Records {
    dir: PathBuf,
    prefix: String,
    offsets: HashMap<PathBuf, u64>,
    /// (message index, handler start in µs since the epoch)
    entries: Vec<(u32, u64)>,
    /// Handler starts per file, i.e. per FPM child.
    per_child: HashMap<PathBuf, Vec<u64>>,
    /// Lines that were not "<index> <µs>" (never expected).
    malformed: usize,
}

impl Records {
    fn new(dir: &Path, run: &str) -> Self {
        Self {
            dir: dir.to_owned(),
            prefix: format!("{run}."),
            offsets: HashMap::new(),
            entries: Vec::new(),
            per_child: HashMap::new(),
            malformed: 0,
        }
    }

    /// Reads what was appended since the last call; returns the number of records so far.
    fn poll(&mut self) -> anyhow::Result<usize> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !name.starts_with(&self.prefix) || !name.ends_with(".log") {
                continue;
            }
            let offset = self.offsets.entry(path.clone()).or_insert(0);
            let mut file = std::fs::File::open(&path)?;
            file.seek(SeekFrom::Start(*offset))?;
            let mut buf = Vec::new();
            file.read_to_end(&mut buf)?;
            // Only complete lines; a line being written is read next time.
            let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            *offset += u64::try_from(end + 1)?;
            for line in buf[..end].split(|b| *b == b'\n') {
                let parsed = std::str::from_utf8(line).ok().and_then(|l| {
                    let (id, t) = l.split_once(' ')?;
                    Some((id.parse::<u32>().ok()?, t.trim().parse::<u64>().ok()?))
                });
                match parsed {
                    Some(entry) => {
                        self.entries.push(entry);
                        self.per_child
                            .entry(path.clone())
                            .or_default()
                            .push(entry.1);
                    }
                    None => self.malformed += 1,
                }
            }
        }
        Ok(self.entries.len())
    }

    /// Lost, duplicate and unknown ids compared with the published indexes 0..n.
    fn check(&self, n: usize) -> Check {
        let mut seen = vec![0u32; n];
        let mut foreign = self.malformed;
        for (id, _) in &self.entries {
            match seen.get_mut(*id as usize) {
                Some(count) => *count += 1,
                None => foreign += 1,
            }
        }
        Check {
            lost: seen.iter().filter(|c| **c == 0).count(),
            duplicates: seen.iter().map(|c| c.saturating_sub(1) as usize).sum(),
            foreign,
        }
    }

    /// Time between consecutive handler starts on the same FPM child (µs), over the middle
    /// 80 % of the run (start and end are ramps): handler time + turnaround of the client.
    fn child_cycles(&self) -> Vec<i64> {
        let (first, last) = self.first_last();
        let span = last.saturating_sub(first);
        let (from, to) = (first + span / 10, last - span / 10);
        let mut out = Vec::new();
        for starts in self.per_child.values() {
            let mut starts = starts.clone();
            starts.sort_unstable();
            for w in starts.windows(2) {
                if w[0] >= from && w[1] <= to {
                    out.push(w[1] as i64 - w[0] as i64);
                }
            }
        }
        out
    }

    fn first_last(&self) -> (u64, u64) {
        let first = self.entries.iter().map(|e| e.1).min().unwrap_or(0);
        let last = self.entries.iter().map(|e| e.1).max().unwrap_or(0);
        (first, last)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Check {
    lost: usize,
    duplicates: usize,
    foreign: usize,
}

impl Check {
    fn add(&mut self, other: Check) {
        self.lost += other.lost;
        self.duplicates += other.duplicates;
        self.foreign += other.foreign;
    }
    fn clean(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.foreign == 0
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Latency {
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    samples: usize,
}

fn latency_of(mut samples: Vec<i64>) -> Latency {
    if samples.is_empty() {
        return Latency::default();
    }
    samples.sort_unstable();
    let n = samples.len();
    let rank = |q: f64| samples[((q * n as f64).ceil() as usize).clamp(1, n) - 1] as f64;
    Latency {
        p50_us: rank(0.50),
        p99_us: rank(0.99),
        max_us: samples[n - 1] as f64,
        samples: n,
    }
}

// ---------------------------------------------------------------------------------------------
// Messages and FastCGI requests

/// `{"id":"<i>","run":"<run>","published_us":<µs>,"sleep_ms":<ms>,"pad":"…"}` of `size` bytes.
fn body(run: &str, index: usize, published_us: u64, sleep_ms: u64, size: usize) -> String {
    let head = format!(
        r#"{{"id":"{index}","run":"{run}","published_us":{published_us},"sleep_ms":{sleep_ms},"pad":""#
    );
    let pad = size.saturating_sub(head.len() + 2);
    let mut out = String::with_capacity(size);
    out.push_str(&head);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out
}

fn message_id(run: &str, index: usize) -> String {
    format!("{run}-{index}")
}

/// The fixed part of the requests the ceiling sends: the same params the agent sends.
struct RequestCtx {
    run: String,
    sleep_ms: u64,
    script_filename: String,
    script_name: String,
    document_root: String,
    body_bytes: usize,
}

type FcgiClient<S> = Client<TokioCompat<S>, KeepAlive>;

/// Where a ceiling connection takes its next request from.
#[derive(Clone)]
enum Source {
    /// As fast as possible: indexes 0..n from a shared counter, stamped when taken.
    Counter(Arc<AtomicUsize>, usize),
    /// Open loop: (index, release µs) from a scheduler that runs at a fixed rate.
    Paced(Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(usize, u64)>>>),
}

/// One ceiling connection: sends requests until the source is exhausted; returns failures.
async fn fcgi_worker<S>(
    mut client: FcgiClient<S>,
    ctx: Arc<RequestCtx>,
    source: Source,
) -> anyhow::Result<usize>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut failures = 0usize;
    loop {
        let (index, published) = match &source {
            Source::Counter(next, n) => {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= *n {
                    break;
                }
                (i, now_us())
            }
            Source::Paced(rx) => {
                let item = rx.lock().await.recv().await;
                match item {
                    Some(item) => item,
                    None => break,
                }
            }
        };
        if !ctx.call(&mut client, index, published).await? {
            failures += 1;
        }
    }
    Ok(failures)
}

impl RequestCtx {
    fn new(run: &str, script: &Path, body_bytes: usize, sleep_ms: u64) -> Self {
        let script_filename = script.display().to_string();
        let document_root = script
            .parent()
            .map_or_else(|| "/".to_owned(), |p| p.display().to_string());
        let script_name = script_filename
            .strip_prefix(&document_root)
            .unwrap_or(&script_filename)
            .to_owned();
        Self {
            run: run.to_owned(),
            sleep_ms,
            script_filename,
            script_name,
            document_root,
            body_bytes,
        }
    }

    /// One request as the agent would send it; true when PHP acked (2xx + X-Agent-Ack: 1).
    async fn call<S>(
        &self,
        client: &mut FcgiClient<S>,
        index: usize,
        published_us: u64,
    ) -> anyhow::Result<bool>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let subject = SUBJECTS[index % 2];
        let body = body(
            &self.run,
            index,
            published_us,
            self.sleep_ms,
            self.body_bytes,
        );
        let id = message_id(&self.run, index);
        let uri = format!("/bench/{subject}");
        let routing_key = format!("bench.{}.{subject}", self.run);
        let params = Params::default()
            .custom("GATEWAY_INTERFACE", "FastCGI/1.0")
            .custom("SERVER_SOFTWARE", "amqp-agent")
            .custom("SERVER_PROTOCOL", "HTTP/1.1")
            .custom("REQUEST_METHOD", "POST")
            .custom("SCRIPT_FILENAME", self.script_filename.as_str())
            .custom("SCRIPT_NAME", self.script_name.as_str())
            .custom("DOCUMENT_ROOT", self.document_root.as_str())
            .custom("REQUEST_URI", uri.as_str())
            .custom("QUERY_STRING", "")
            .custom("SERVER_NAME", "amqp-agent")
            .custom("SERVER_PORT", "80")
            .custom("REMOTE_ADDR", "127.0.0.1")
            .custom("CONTENT_TYPE", "application/json")
            .custom("CONTENT_LENGTH", body.len().to_string())
            .custom("HTTP_X_AGENT_SUBJECT", subject)
            .custom("HTTP_X_AGENT_MESSAGE_ID", id.as_str())
            .custom("HTTP_X_AGENT_ATTEMPT", "1")
            .custom("HTTP_X_AGENT_REDELIVERED", "0")
            .custom("HTTP_X_AGENT_ROUTING_KEY", routing_key.as_str())
            .custom("HTTP_X_AGENT_EXCHANGE", "")
            .custom("HTTP_X_AGENT_HEADERS", "{}");
        let response = client
            .execute(Request::new_tokio(params, body.as_bytes()))
            .await?;
        Ok(acked(response.stdout.as_deref().unwrap_or_default()))
    }
}

/// 2xx (or no Status) and `X-Agent-Ack: 1` in the CGI head.
fn acked(stdout: &[u8]) -> bool {
    let head_end = stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(stdout.len());
    let head = String::from_utf8_lossy(&stdout[..head_end]);
    let mut ok_status = true;
    let mut ack = false;
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            ok_status = value.starts_with('2');
        } else if name.eq_ignore_ascii_case("x-agent-ack") {
            ack = value == "1";
        }
    }
    ok_status && ack
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Debug, Clone, Default)]
struct CeilingResult {
    rate: f64,
    /// CPU of the bench process (the FastCGI client) per request.
    client_us_per_req: f64,
    /// Cores used by unrelated processes during the run.
    background_cores: f64,
    /// Time between consecutive handler starts on one FPM child.
    cycle: Latency,
    failures: usize,
    check: Check,
    latency: Option<Latency>,
}

#[derive(Debug, Clone, Default)]
struct AgentResult {
    pool: u16,
    /// Messages / (agent start -> last handler start).
    rate: f64,
    /// Messages / (first -> last handler start).
    rate_active: f64,
    /// Agent start -> first handler start.
    startup_ms: f64,
    publish_rate: f64,
    cpu_us_per_msg: f64,
    /// Context switches of the agent's threads per message (start-up included).
    switches_per_msg: f64,
    cpu_user_us_per_msg: f64,
    cpu_sys_us_per_msg: f64,
    /// CPU µs per message of php-fpm, RabbitMQ and the bench process during the run.
    fpm_us_per_msg: f64,
    rabbitmq_us_per_msg: f64,
    bench_us_per_msg: f64,
    peak_rss_kib: u64,
    /// Cores used by unrelated processes during the run.
    background_cores: f64,
    /// Share of the machine's CPU time (user + nice + system, all processes) used during the
    /// run: the machine's load.
    machine_busy: f64,
    /// Time between consecutive handler starts on one FPM child.
    cycle: Latency,
    max_in_flight: usize,
    check: Check,
    left_in_queues: u32,
    exit_code: i32,
    latency: Option<Latency>,
    /// Measured publish rate of the steady-state run.
    offered_rate: f64,
}

#[derive(Debug, Default)]
struct Round {
    ceiling: CeilingResult,
    /// The ceiling with fastcgi-client on a bare TcpStream (one send per FastCGI record).
    ceiling_unbuffered: CeilingResult,
    /// Steady state at `machine_load` × the machine's capacity, and the broker alone (publish ->
    /// delivery to a bare consumer) at the same rate.
    steady_capacity: Option<(AgentResult, Latency)>,
    io_direct: CeilingResult,
    drain: AgentResult,
    steady: AgentResult,
    steady_direct: CeilingResult,
    io: AgentResult,
    rss: AgentResult,
    sweep: Vec<(CeilingResult, AgentResult)>,
    /// Reference: one `php` process per message (msg/s, ids recorded).
    spawn: Option<(f64, Check)>,
}

struct Report {
    rounds: Vec<Round>,
}

// ---------------------------------------------------------------------------------------------
// The bench

struct Bench {
    args: Args,
    dir: PathBuf,
    records: PathBuf,
    script: PathBuf,
    fpm_address: String,
    fpm_pid: u32,
    conn: Connection,
    publish: Channel,
    admin: Channel,
    /// Queues to delete at the end.
    leftovers: Vec<String>,
    /// What is left of `--quiet-wait`.
    quiet_budget: Duration,
    /// The agent knows `[admin]` (newer versions): the config then sets its listen address.
    admin_section: bool,
}

/// What one agent run does.
#[derive(Clone)]
struct AgentPlan {
    label: String,
    pool: u16,
    prefetch_per_worker: Option<u16>,
    sleep_ms: u64,
    messages: usize,
    /// Steady state: publish at this rate (msg/s) after the agent consumes, for warm-up + secs.
    steady: Option<(f64, u64)>,
    track_in_flight: bool,
    perf: Option<PathBuf>,
}

impl AgentPlan {
    /// A backlog drain of `messages` with `pool` workers per subject.
    fn drain(pool: u16, messages: usize, prefetch_per_worker: Option<u16>) -> Self {
        Self {
            label: format!("drain pool={pool}"),
            pool,
            prefetch_per_worker,
            sleep_ms: 0,
            messages,
            steady: None,
            track_in_flight: false,
            perf: None,
        }
    }
}

const WARMUP_SECS: u64 = 1;

fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

fn queue_name(run: &str, subject: &str) -> String {
    format!("bench.{run}.{subject}")
}

impl Bench {
    /// The I/O-bound pair: the agent with the sleeping handler, then direct FastCGI with the same
    /// handler and concurrency.
    async fn io_bound(&mut self) -> anyhow::Result<(AgentResult, CeilingResult)> {
        let io_pool = self.args.io_pool;
        let plan = AgentPlan {
            label: format!("io-bound pool={io_pool}"),
            pool: io_pool,
            prefetch_per_worker: self.args.prefetch_per_worker,
            sleep_ms: self.args.io_sleep_ms,
            messages: self.args.io_messages,
            steady: None,
            track_in_flight: false,
            perf: None,
        };
        let agent = self.agent_run(&plan).await?;
        let direct = self
            .ceiling(
                usize::from(io_pool) * 2,
                self.args.io_messages,
                None,
                true,
                self.args.io_sleep_ms,
            )
            .await?;
        Ok((agent, direct))
    }

    /// `--quick --io`: the I/O-bound runs only, medians printed.
    async fn quick_io(&mut self) -> anyhow::Result<()> {
        let io_pool = self.args.io_pool;
        let bound = 1000.0 / self.args.io_sleep_ms as f64 * f64::from(io_pool) * 2.0;
        let (mut agent, mut direct) = (Vec::new(), Vec::new());
        for r in 1..=self.args.rounds {
            let (a, d) = self.io_bound().await?;
            println!(
                "[quick-io {r}] agent {:.0} msg/s ({:.1} % of {bound:.0}, turnaround p50 {:.2} ms p99 {:.2} ms), direct {:.0} req/s ({:.1} %, p50 {:.2} ms p99 {:.2} ms), lost/dup {}/{}",
                a.rate,
                a.rate / bound * 100.0,
                a.cycle.p50_us / 1e3,
                a.cycle.p99_us / 1e3,
                d.rate,
                d.rate / bound * 100.0,
                d.cycle.p50_us / 1e3,
                d.cycle.p99_us / 1e3,
                a.check.lost,
                a.check.duplicates,
            );
            ensure!(a.check.clean(), "messages lost or duplicated");
            agent.push(a.rate);
            direct.push(d.rate);
        }
        let (a, d) = (median(agent), median(direct));
        println!(
            "[quick-io] medians of {}: agent {a:.0} msg/s ({:.1} %), direct {d:.0} req/s ({:.1} %), agent/direct {:.3}",
            self.args.rounds,
            a / bound * 100.0,
            d / bound * 100.0,
            a / d
        );
        Ok(())
    }

    /// The agent's steady state at `rate` msg/s for `--steady-secs` (after the warm-up).
    async fn steady_at(&mut self, plan: &AgentPlan, rate: f64) -> anyhow::Result<AgentResult> {
        let secs = self.args.steady_secs;
        let plan = AgentPlan {
            label: format!("steady {rate:.0}/s"),
            messages: (rate * (secs + WARMUP_SECS) as f64).round() as usize,
            steady: Some((rate, secs)),
            ..plan.clone()
        };
        self.agent_run(&plan).await
    }

    /// `--quick --steady-rate R`: the agent's steady state and RabbitMQ alone at R msg/s.
    async fn quick_steady(&mut self, rate: f64) -> anyhow::Result<()> {
        let (pool, secs) = (self.args.pool, self.args.steady_secs);
        let (mut agent99, mut broker99) = (Vec::new(), Vec::new());
        for r in 1..=self.args.rounds {
            let plan = AgentPlan::drain(pool, 0, self.args.prefetch_per_worker);
            let a = self.steady_at(&plan, rate).await?;
            let window = pool * self.args.prefetch_per_worker.unwrap_or(8);
            let b = self.broker_alone(rate, secs, window).await?;
            let l = a.latency.unwrap_or_default();
            println!(
                "[quick-steady {r}] {:.0} msg/s, machine {:.0} % busy: agent p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({:.1} µs CPU/msg); RabbitMQ alone p50 {:.2} ms p99 {:.2} ms max {:.2} ms; lost/dup {}/{}",
                a.offered_rate,
                a.machine_busy * 100.0,
                l.p50_us / 1e3,
                l.p99_us / 1e3,
                l.max_us / 1e3,
                a.cpu_us_per_msg,
                b.p50_us / 1e3,
                b.p99_us / 1e3,
                b.max_us / 1e3,
                a.check.lost,
                a.check.duplicates,
            );
            ensure!(a.check.clean(), "messages lost or duplicated");
            agent99.push(l.p99_us);
            broker99.push(b.p99_us);
        }
        println!(
            "[quick-steady] medians of {}: p99 agent {:.2} ms, RabbitMQ alone {:.2} ms",
            self.args.rounds,
            median(agent99) / 1e3,
            median(broker99) / 1e3
        );
        Ok(())
    }

    /// `--quick`: ceiling and drain only, medians printed.
    async fn quick(&mut self) -> anyhow::Result<()> {
        if self.args.io {
            return self.quick_io().await;
        }
        if let Some(rate) = self.args.steady_rate {
            return self.quick_steady(rate).await;
        }
        let (pool, n) = (self.args.pool, self.args.messages);
        let concurrency = usize::from(pool) * 2;
        let (mut ceilings, mut drains, mut cpus) = (Vec::new(), Vec::new(), Vec::new());
        for r in 1..=self.args.rounds {
            let ceiling = self.ceiling(concurrency, n, None, true, 0).await?;
            let plan = AgentPlan::drain(pool, n, self.args.prefetch_per_worker);
            let drain = self.agent_run(&plan).await?;
            println!(
                "[quick {r}] ceiling {:.0} req/s ({:.1} µs client CPU/req), drain {:.0} msg/s ({:.2}), agent {:.1} µs CPU/msg, {:.2} context switches/msg, {:.1} MiB, lost/dup {}/{}",
                ceiling.rate,
                ceiling.client_us_per_req,
                drain.rate,
                drain.rate / ceiling.rate,
                drain.cpu_us_per_msg,
                drain.switches_per_msg,
                drain.peak_rss_kib as f64 / 1024.0,
                drain.check.lost,
                drain.check.duplicates,
            );
            ensure!(drain.check.clean(), "messages lost or duplicated");
            ceilings.push(ceiling.rate);
            drains.push(drain.rate);
            cpus.push(drain.cpu_us_per_msg);
        }
        let (c, d) = (median(ceilings), median(drains));
        let least = cpus.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "[quick] medians of {}: ceiling {c:.0} req/s, drain {d:.0} msg/s ({:.2}), agent {:.1} µs CPU/msg (least {least:.1})",
            self.args.rounds,
            d / c,
            median(cpus)
        );
        Ok(())
    }

    async fn all(&mut self) -> anyhow::Result<Report> {
        let mut rounds = Vec::new();
        let total_rounds = self.args.rounds;
        for r in 0..total_rounds {
            let round = self.round(r + 1, total_rounds).await?;
            rounds.push(round);
        }
        if let Some(perf) = self.args.perf.clone() {
            eprintln!(
                "[perf] extra drain under perf record --call-graph dwarf -> {}",
                perf.display()
            );
            let plan = AgentPlan {
                label: "perf drain".into(),
                pool: self.args.pool,
                prefetch_per_worker: self.args.prefetch_per_worker,
                sleep_ms: 0,
                messages: self.args.messages,
                steady: None,
                track_in_flight: false,
                perf: Some(perf),
            };
            let r = self.agent_run(&plan).await?;
            eprintln!("[perf] drain under perf: {:.0} msg/s", r.rate);
        }
        Ok(Report { rounds })
    }

    async fn round(&mut self, number: usize, of: usize) -> anyhow::Result<Round> {
        let tag = format!("[round {number}/{of}]");
        let args = &self.args;
        let (pool, n) = (args.pool, args.messages);
        let concurrency = usize::from(pool) * 2;
        let mut round = Round {
            ceiling: self.ceiling(concurrency, n, None, true, 0).await?,
            ..Round::default()
        };
        eprintln!(
            "{tag} ceiling c={concurrency}: {:.0} req/s",
            round.ceiling.rate
        );
        round.ceiling_unbuffered = self.ceiling(concurrency, n, None, false, 0).await?;
        eprintln!(
            "{tag} ceiling c={concurrency}, unbuffered writes: {:.0} req/s",
            round.ceiling_unbuffered.rate
        );

        let plan = AgentPlan::drain(pool, n, self.args.prefetch_per_worker);
        round.drain = self.agent_run(&plan).await?;
        eprintln!(
            "{tag} drain {n} msgs pool={pool}+{pool}: {:.0} msg/s ({:.1} µs CPU/msg)",
            round.drain.rate, round.drain.cpu_us_per_msg
        );

        let rate = round.ceiling.rate * self.args.steady_load;
        let secs = self.args.steady_secs;
        let steady_n = (rate * (secs + WARMUP_SECS) as f64).round() as usize;
        let plan = AgentPlan {
            label: format!("steady {rate:.0}/s"),
            messages: steady_n,
            steady: Some((rate, secs)),
            ..plan
        };
        round.steady = self.agent_run(&plan).await?;
        let lat = round.steady.latency.unwrap_or_default();
        eprintln!(
            "{tag} steady {:.0} msg/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            round.steady.offered_rate,
            lat.p50_us / 1e3,
            lat.p99_us / 1e3,
            lat.max_us / 1e3
        );
        round.steady_direct = self
            .ceiling(concurrency, steady_n, Some((rate, secs)), true, 0)
            .await?;
        let lat = round.steady_direct.latency.unwrap_or_default();
        eprintln!(
            "{tag} direct FastCGI at {:.0}/s: p50 {:.2} ms, p99 {:.2} ms",
            round.steady_direct.rate,
            lat.p50_us / 1e3,
            lat.p99_us / 1e3
        );

        if self.args.machine_load > 0.0 {
            let cores = cores();
            let load = self.args.machine_load;
            let rate_for = |a: &AgentResult| {
                let path_us = a.cpu_us_per_msg
                    + a.fpm_us_per_msg
                    + a.rabbitmq_us_per_msg
                    + a.bench_us_per_msg;
                load * cores * 1e6 / path_us.max(1.0)
            };
            // First estimate from run 3; the CPU per message of the whole path grows at lower
            // rates (less batching everywhere), so correct once from the run itself.
            let mut rate = rate_for(&round.steady);
            let mut agent = self.steady_at(&plan, rate).await?;
            let corrected = rate_for(&agent);
            if (corrected / rate - 1.0).abs() > 0.15 {
                eprintln!(
                    "{tag} steady {rate:.0} msg/s kept the machine {:.0} % busy; again at {corrected:.0} msg/s",
                    agent.machine_busy * 100.0
                );
                rate = corrected;
                agent = self.steady_at(&plan, rate).await?;
            }
            let lat = agent.latency.unwrap_or_default();
            eprintln!(
                "{tag} steady {:.0} msg/s (machine {:.0} % busy): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                agent.offered_rate,
                agent.machine_busy * 100.0,
                lat.p50_us / 1e3,
                lat.p99_us / 1e3,
                lat.max_us / 1e3
            );
            let window = pool * self.args.prefetch_per_worker.unwrap_or(8);
            let broker = self.broker_alone(rate, secs, window).await?;
            eprintln!(
                "{tag} RabbitMQ alone at {rate:.0}/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                broker.p50_us / 1e3,
                broker.p99_us / 1e3,
                broker.max_us / 1e3
            );
            round.steady_capacity = Some((agent, broker));
        }

        let io_pool = self.args.io_pool;
        (round.io, round.io_direct) = self.io_bound().await?;
        eprintln!(
            "{tag} I/O-bound ({} ms) pool={io_pool}+{io_pool}: {:.0} msg/s",
            self.args.io_sleep_ms, round.io.rate
        );
        eprintln!(
            "{tag} I/O-bound ({} ms), direct FastCGI c={}: {:.0} req/s",
            self.args.io_sleep_ms,
            usize::from(io_pool) * 2,
            round.io_direct.rate
        );

        let per_worker = self
            .args
            .rss_in_flight
            .div_ceil(usize::from(io_pool) * 2)
            .max(1);
        // The I/O-bound setup (pool, handler sleep), with a window of about `rss_in_flight`.
        let plan = AgentPlan {
            label: "rss".into(),
            pool: io_pool,
            prefetch_per_worker: Some(u16::try_from(per_worker).unwrap_or(u16::MAX)),
            sleep_ms: self.args.io_sleep_ms,
            messages: self.args.rss_messages,
            steady: None,
            track_in_flight: true,
            perf: None,
        };
        round.rss = self.agent_run(&plan).await?;
        eprintln!(
            "{tag} RSS run: up to {} in flight, peak RSS {:.1} MiB",
            round.rss.max_in_flight,
            round.rss.peak_rss_kib as f64 / 1024.0
        );

        if self.args.spawn_messages > 0 {
            let (rate, check) = self.process_per_message(self.args.spawn_messages).await?;
            eprintln!("{tag} one php process per message: {rate:.0} msg/s");
            round.spawn = Some((rate, check));
        }

        if self.args.sweep == OnOff::On {
            for p in self.args.sweep_pools.clone() {
                let n = self.args.sweep_messages;
                let c = self.ceiling(usize::from(p) * 2, n, None, true, 0).await?;
                let plan = AgentPlan {
                    label: format!("sweep pool={p}"),
                    pool: p,
                    prefetch_per_worker: self.args.prefetch_per_worker,
                    sleep_ms: 0,
                    messages: n,
                    steady: None,
                    track_in_flight: false,
                    perf: None,
                };
                let a = self.agent_run(&plan).await?;
                eprintln!(
                    "{tag} sweep pool={p}+{p}: ceiling {:.0} req/s, agent {:.0} msg/s",
                    c.rate, a.rate
                );
                round.sweep.push((c, a));
            }
        }
        Ok(round)
    }

    /// Direct FastCGI: `n` requests over `concurrency` keep-alive connections, as fast as
    /// possible, or open-loop at `paced = (rate, secs)` (then latency is measured).
    async fn ceiling(
        &mut self,
        concurrency: usize,
        n: usize,
        paced: Option<(f64, u64)>,
        buffered: bool,
        sleep_ms: u64,
    ) -> anyhow::Result<CeilingResult> {
        let run = run_id();
        let ctx = Arc::new(RequestCtx::new(
            &run,
            &self.script,
            self.args.body_bytes,
            sleep_ms,
        ));
        self.wait_quiet().await;
        let before = cpu_snapshot(self.fpm_pid);
        // Paced mode: a scheduler releases (index, due µs) at the rate; idle connections take them.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(usize, u64)>();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let source = if paced.is_some() {
            Source::Paced(rx.clone())
        } else {
            Source::Counter(Arc::new(AtomicUsize::new(0)), n)
        };
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            let stream = connect_fpm(&self.fpm_address).await?;
            let (ctx, source) = (ctx.clone(), source.clone());
            tasks.push(if buffered {
                let client = Client::new_keep_alive_tokio(tokio::io::BufWriter::new(stream));
                tokio::spawn(fcgi_worker(client, ctx, source))
            } else {
                tokio::spawn(fcgi_worker(
                    Client::new_keep_alive_tokio(stream),
                    ctx,
                    source,
                ))
            });
        }
        drop(rx);
        let mut due_us = vec![0u64; if paced.is_some() { n } else { 0 }];
        let mut offered = 0.0;
        if let Some((rate, _)) = paced {
            let mut sent = 0;
            while sent < n {
                let due = ((started.elapsed().as_secs_f64() * rate) as usize + 1).min(n);
                while sent < due {
                    let t = now_us();
                    due_us[sent] = t;
                    tx.send((sent, t)).ok().context("FastCGI workers gone")?;
                    sent += 1;
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            offered = n as f64 / started.elapsed().as_secs_f64();
        }
        drop(tx);
        let mut failures = 0;
        for task in tasks {
            failures += task.await??;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let after = cpu_snapshot(self.fpm_pid);
        let background = after.background_cores(&before, 0);
        let client_us_per_req =
            after.bench.saturating_sub(before.bench) as f64 / clock_ticks_per_sec() * 1e6
                / n as f64;
        let mut records = Records::new(&self.records, &run);
        let deadline = Instant::now() + Duration::from_secs(10);
        while records.poll()? < n && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        let latency = paced.map(|_| {
            let warm_end = due_us.first().copied().unwrap_or(0) + WARMUP_SECS * 1_000_000;
            latency_of(
                records
                    .entries
                    .iter()
                    .filter_map(|(i, t)| {
                        let p = *due_us.get(*i as usize)?;
                        (p >= warm_end).then(|| *t as i64 - p as i64)
                    })
                    .collect(),
            )
        });
        Ok(CeilingResult {
            client_us_per_req,
            rate: if paced.is_some() {
                offered
            } else {
                n as f64 / elapsed
            },
            failures,
            check: records.check(n),
            latency,
            background_cores: background,
            cycle: latency_of(records.child_cycles()),
        })
    }

    fn agent_toml(&self, run: &str, plan: &AgentPlan) -> String {
        let mut amqp = format!("url = \"{}\"\n", self.args.amqp_url);
        if let Some(p) = plan.prefetch_per_worker {
            let _ = writeln!(amqp, "prefetch_per_worker = {p}");
        }
        let mut subjects = String::new();
        for subject in SUBJECTS {
            let _ = write!(
                subjects,
                "[subjects.{subject}]\nqueue = \"{}\"\npool_size = {}\n\n",
                queue_name(run, subject),
                plan.pool
            );
        }
        format!(
            "# generated by examples/bench.rs ({label})\n[amqp]\n{amqp}\n[fpm]\n\
             address = \"{address}\"\nscript_filename = \"{script}\"\n\
             request_uri = \"/bench/{{subject}}\"\ntimeout = \"30s\"\nsigning_secrets = []\n\
             require_ack_header = true\n\n[retry]\ndelays = [\"1s\"]\n\n{subjects}\
             [agent]\nshutdown_timeout = \"30s\"\n{threads}{admin}",
            threads = self
                .args
                .agent_worker_threads
                .map(|n| format!("worker_threads = {n}\n"))
                .unwrap_or_default(),
            admin = if self.admin_section {
                // Keep the admin listener (on by default) but off the default port, which
                // another agent on the machine may hold.
                format!(
                    "\n[admin]\nlisten = \"127.0.0.1:{}\"\n",
                    free_port().unwrap_or(0)
                )
            } else {
                String::new()
            },
            label = plan.label,
            address = self.fpm_address,
            script = self.script.display(),
        )
    }

    /// The queues of a run: main, dead-letter and the one delay queue.
    fn run_queues(run: &str) -> Vec<String> {
        let mut out = Vec::new();
        for subject in SUBJECTS {
            let q = queue_name(run, subject);
            out.push(format!("{q}.retry.1000ms"));
            out.push(format!("{q}.dead"));
            out.push(q);
        }
        out
    }

    async fn declare(&mut self, run: &str) -> anyhow::Result<()> {
        self.leftovers.extend(Self::run_queues(run));
        for subject in SUBJECTS {
            self.admin
                .queue_declare(
                    queue_name(run, subject).as_str().into(),
                    QueueDeclareOptions::durable(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    async fn ready_count(&self, queue: &str) -> anyhow::Result<(u32, u32)> {
        let opts = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = self
            .admin
            .queue_declare(queue.into(), opts, FieldTable::default())
            .await
            .with_context(|| format!("passive declare of {queue}"))?;
        Ok((q.message_count(), q.consumer_count()))
    }

    async fn delete_run_queues(&mut self, run: &str) {
        let names = Self::run_queues(run);
        for name in &names {
            let _ = self
                .admin
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        self.leftovers.retain(|q| !names.contains(q));
    }

    async fn cleanup(&mut self) {
        if !self.admin.status().connected() {
            match self.conn.create_channel().await {
                Ok(ch) => self.admin = ch,
                Err(_) => return,
            }
        }
        for name in std::mem::take(&mut self.leftovers) {
            let _ = self
                .admin
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }

    fn props(run: &str, index: usize) -> BasicProperties {
        BasicProperties::default()
            .with_message_id(message_id(run, index).as_str().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
    }

    async fn publish_one(
        &self,
        run: &str,
        index: usize,
        sleep_ms: u64,
    ) -> anyhow::Result<(PublisherConfirm, u64)> {
        let subject = SUBJECTS[index % 2];
        let published = now_us();
        let body = body(run, index, published, sleep_ms, self.args.body_bytes);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = self
            .publish
            .basic_publish(
                "".into(),
                queue_name(run, subject).as_str().into(),
                options,
                body.as_bytes(),
                Self::props(run, index),
            )
            .await?;
        Ok((confirm, published))
    }

    /// Publishes messages 0..n, pipelined (up to CONFIRM_WINDOW unconfirmed); returns msg/s.
    async fn publish_backlog(&self, run: &str, n: usize, sleep_ms: u64) -> anyhow::Result<f64> {
        let started = Instant::now();
        let mut pending = VecDeque::with_capacity(CONFIRM_WINDOW);
        for index in 0..n {
            let (confirm, _) = self.publish_one(run, index, sleep_ms).await?;
            pending.push_back(confirm);
            if pending.len() >= CONFIRM_WINDOW {
                confirmed(pending.pop_front().expect("non-empty").await?)?;
            }
        }
        while let Some(confirm) = pending.pop_front() {
            confirmed(confirm.await?)?;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    }

    /// Reference: the model of rabbitmq-cli-consumer / `amqp-consume`. One consumer per subject
    /// (prefetch 1) starts `php bench-cli-handler.php` for every message, body on stdin, and
    /// acks when it exits 0. msg/s from the consumers' start to the last exit.
    async fn process_per_message(&mut self, n: usize) -> anyhow::Result<(f64, Check)> {
        use tokio::io::AsyncWriteExt as _;
        let run = run_id();
        self.declare(&run).await?;
        self.publish_backlog(&run, n, 0).await?;
        let conn = Connection::connect(&self.args.amqp_url, ConnectionProperties::default())
            .await
            .context("process-per-message reference: cannot connect")?;
        let started = Instant::now();
        let mut consumers = Vec::new();
        for (k, subject) in SUBJECTS.iter().enumerate() {
            // Index i goes to SUBJECTS[i % 2].
            let count = (n + SUBJECTS.len() - 1 - k) / SUBJECTS.len();
            let (channel, mut consumer) = consume(
                &conn,
                &queue_name(&run, subject),
                1,
                "bench-process-per-message",
            )
            .await?;
            let php = self.args.php_cli.clone();
            let records = self.records.clone();
            consumers.push(tokio::spawn(async move {
                for _ in 0..count {
                    let delivery = consumer
                        .next()
                        .await
                        .context("the consumer ended early")??;
                    let mut child = tokio::process::Command::new(&php)
                        .arg(CLI_HANDLER)
                        .env("RECORD_DIR", &records)
                        .stdin(Stdio::piped())
                        .stdout(Stdio::null())
                        .spawn()
                        .with_context(|| format!("cannot start {}", php.display()))?;
                    let mut stdin = child.stdin.take().context("no stdin")?;
                    stdin.write_all(&delivery.data).await?;
                    drop(stdin);
                    let status = child.wait().await?;
                    ensure!(status.success(), "{CLI_HANDLER} exited with {status}");
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                }
                anyhow::Ok(channel)
            }));
        }
        for consumer in consumers {
            consumer.await??;
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        let _ = conn.close(200, "bench done".into()).await;
        self.delete_run_queues(&run).await;
        let mut records = Records::new(&self.records, &run);
        records.poll()?;
        Ok((rate, records.check(n)))
    }

    /// The broker alone: the same paced publishing, consumed by a bare lapin consumer in this
    /// process (own connection, one channel per subject, the agent's window, each delivery
    /// acked on arrival). Publish -> delivery latency: what RabbitMQ costs any consumer.
    async fn broker_alone(&mut self, rate: f64, secs: u64, window: u16) -> anyhow::Result<Latency> {
        let run = run_id();
        self.declare(&run).await?;
        let n = (rate * (secs + WARMUP_SECS) as f64).round() as usize;
        let conn = Connection::connect(&self.args.amqp_url, ConnectionProperties::default())
            .await
            .context("broker baseline: cannot connect")?;
        let received = Arc::new(std::sync::Mutex::new(vec![0u64; n]));
        let count = Arc::new(AtomicUsize::new(0));
        let mut readers = Vec::new();
        for subject in SUBJECTS {
            let (channel, mut consumer) = consume(
                &conn,
                &queue_name(&run, subject),
                window,
                "bench-broker-baseline",
            )
            .await?;
            let prefix = format!("{run}-");
            let (received, count) = (received.clone(), count.clone());
            readers.push(tokio::spawn(async move {
                while let Some(delivery) = consumer.next().await {
                    let delivery = delivery?;
                    let at = now_us();
                    let index = delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .and_then(|id| id.as_str().strip_prefix(prefix.as_str()))
                        .and_then(|i| i.parse::<usize>().ok())
                        .context("broker baseline: a message without a bench id")?;
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    received.lock().expect("not poisoned")[index] = at;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(channel)
            }));
        }
        let (published, _) = self.publish_paced(&run, n, rate, 0).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while count.load(Ordering::Relaxed) < n {
            ensure!(
                Instant::now() < deadline,
                "broker baseline: only {} of {n} messages delivered within 30 s",
                count.load(Ordering::Relaxed)
            );
            tokio::time::sleep(POLL).await;
        }
        let _ = conn.close(200, "bench done".into()).await;
        for reader in readers {
            reader.abort();
        }
        self.delete_run_queues(&run).await;
        let received = received.lock().expect("not poisoned");
        let warm_end = published.first().copied().unwrap_or(0) + WARMUP_SECS * 1_000_000;
        Ok(latency_of(
            published
                .iter()
                .zip(received.iter())
                .filter(|(p, _)| **p >= warm_end)
                .map(|(p, r)| *r as i64 - *p as i64)
                .collect(),
        ))
    }

    /// Publishes messages 0..n at `rate`; returns each message's publish time (µs) and the
    /// achieved rate. Confirms are awaited by a separate task, so they do not pace publishing.
    async fn publish_paced(
        &self,
        run: &str,
        n: usize,
        rate: f64,
        sleep_ms: u64,
    ) -> anyhow::Result<(Vec<u64>, f64)> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PublisherConfirm>();
        let checker = tokio::spawn(async move {
            while let Some(confirm) = rx.recv().await {
                confirmed(confirm.await?)?;
            }
            anyhow::Ok(())
        });
        let mut published = vec![0u64; n];
        let started = Instant::now();
        let mut sent = 0;
        while sent < n {
            let due = ((started.elapsed().as_secs_f64() * rate) as usize + 1).min(n);
            while sent < due {
                let (confirm, at) = self.publish_one(run, sent, sleep_ms).await?;
                published[sent] = at;
                tx.send(confirm).ok().context("confirm checker gone")?;
                sent += 1;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let achieved = n as f64 / started.elapsed().as_secs_f64();
        drop(tx);
        checker.await??;
        Ok((published, achieved))
    }

    /// One agent run: backlog drain (publish first, then start the agent) or steady state.
    /// Whether `amqp-agent check-config` accepts a config with an `[admin]` table.
    fn agent_accepts_admin_section(&mut self) -> bool {
        self.admin_section = true;
        let plan = AgentPlan {
            label: "probe".into(),
            pool: 1,
            prefetch_per_worker: None,
            sleep_ms: 0,
            messages: 0,
            steady: None,
            track_in_flight: false,
            perf: None,
        };
        let path = self.dir.join("probe.toml");
        if std::fs::write(&path, self.agent_toml("probe", &plan)).is_err() {
            return false;
        }
        let mut cmd = Command::new(&self.args.agent_bin);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("AMQP_AGENT_") {
                cmd.env_remove(name);
            }
        }
        cmd.arg("check-config")
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits until unrelated processes use < 0.2 cores, within what is left of `--quiet-wait`.
    async fn wait_quiet(&mut self) {
        let started = Instant::now();
        let mut said = false;
        loop {
            let before = cpu_snapshot(self.fpm_pid);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let busy = cpu_snapshot(self.fpm_pid).background_cores(&before, 0);
            let waited = started.elapsed();
            if busy < 0.2 {
                break;
            }
            if waited >= self.quiet_budget {
                eprintln!(
                    "  other processes use {busy:.2} cores and the --quiet-wait budget is spent; measuring anyway"
                );
                break;
            }
            if !said {
                eprintln!(
                    "  other processes use {busy:.2} cores; waiting (up to {:.0} s) for quiet",
                    self.quiet_budget.as_secs_f64()
                );
                said = true;
            }
        }
        if said {
            self.quiet_budget = self.quiet_budget.saturating_sub(started.elapsed());
        }
    }

    async fn agent_run(&mut self, plan: &AgentPlan) -> anyhow::Result<AgentResult> {
        let run = run_id();
        self.declare(&run).await?;
        let result = self.agent_run_inner(&run, plan).await;
        self.delete_run_queues(&run).await;
        result.with_context(|| format!("agent run `{}` ({run})", plan.label))
    }

    async fn agent_run_inner(
        &mut self,
        run: &str,
        plan: &AgentPlan,
    ) -> anyhow::Result<AgentResult> {
        let n = plan.messages;
        let config = self.dir.join(format!("agent-{run}.toml"));
        std::fs::write(&config, self.agent_toml(run, plan))?;
        let log = self.dir.join(format!("agent-{run}.log"));
        let mut result = AgentResult {
            pool: plan.pool,
            ..AgentResult::default()
        };
        if plan.steady.is_none() {
            result.publish_rate = self.publish_backlog(run, n, plan.sleep_ms).await?;
        }
        self.wait_quiet().await;
        let before = cpu_snapshot(self.fpm_pid);
        let spawned_us = now_us();
        let mut agent = AgentProc::spawn(&self.args.agent_bin, &config, &log)?;
        let mut perf = match &plan.perf {
            Some(path) => Some(
                Command::new("perf")
                    .args(["record", "-F", "999", "--call-graph", "dwarf,16384", "-o"])
                    .arg(path)
                    .args(["-p", &agent.pid.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("cannot start perf")?,
            ),
            None => None,
        };
        let mut records = Records::new(&self.records, run);
        let mut published_at = Vec::new();
        if let Some((rate, _)) = plan.steady {
            // Publish only once the agent consumes both queues.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                agent.check_alive()?;
                let mut consuming = true;
                for subject in SUBJECTS {
                    consuming &= self.ready_count(&queue_name(run, subject)).await?.1 > 0;
                }
                if consuming {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "the agent did not consume within 30 s:\n{}",
                    agent.log_tail()
                );
                tokio::time::sleep(POLL).await;
            }
            let (at, achieved) = self.publish_paced(run, n, rate, plan.sleep_ms).await?;
            published_at = at;
            result.offered_rate = achieved;
        }
        // Wait for every id (generous deadline: 100 msg/s would be a failure anyway).
        let deadline = Instant::now() + Duration::from_secs(60 + n as u64 / 100);
        while records.poll()? < n {
            agent.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "only {} of {n} messages handled before the deadline:\n{}",
                records.entries.len(),
                agent.log_tail()
            );
            if plan.track_in_flight {
                let mut ready = 0u64;
                for subject in SUBJECTS {
                    ready += u64::from(self.ready_count(&queue_name(run, subject)).await?.0);
                }
                let held = (n as u64).saturating_sub(ready + records.entries.len() as u64);
                result.max_in_flight = result.max_in_flight.max(held as usize);
            }
            tokio::time::sleep(POLL).await;
        }
        let (user, sys) = agent.cpu_ticks()?;
        result.switches_per_msg = agent.context_switches() as f64 / n as f64;
        let after = cpu_snapshot(self.fpm_pid);
        result.peak_rss_kib = agent.peak_rss_kib()?;
        if let Some(mut perf) = perf.take() {
            signal(perf.id(), libc::SIGINT);
            if wait_exit(&mut perf, Duration::from_secs(60))
                .await
                .is_none()
            {
                let _ = perf.kill();
                let _ = perf.wait();
            }
        }
        result.exit_code = agent.stop().await?;
        records.poll()?;
        let (first, last) = records.first_last();
        result.rate = n as f64 / ((last.saturating_sub(spawned_us)) as f64 / 1e6);
        result.rate_active = n as f64 / ((last.saturating_sub(first)).max(1) as f64 / 1e6);
        result.startup_ms = first.saturating_sub(spawned_us) as f64 / 1e3;
        let per_msg = |ticks: u64| ticks as f64 / clock_ticks_per_sec() * 1e6 / n as f64;
        result.cpu_us_per_msg = per_msg(user + sys);
        result.cpu_user_us_per_msg = per_msg(user);
        result.cpu_sys_us_per_msg = per_msg(sys);
        result.fpm_us_per_msg = per_msg(after.fpm.saturating_sub(before.fpm));
        result.rabbitmq_us_per_msg = per_msg(after.rabbitmq.saturating_sub(before.rabbitmq));
        result.bench_us_per_msg = per_msg(after.bench.saturating_sub(before.bench));
        result.check = records.check(n);
        result.background_cores = after.background_cores(&before, user + sys);
        let cores = cores();
        result.machine_busy = after.busy.saturating_sub(before.busy) as f64
            / clock_ticks_per_sec()
            / (after.at - before.at).as_secs_f64().max(1e-3)
            / cores;
        result.cycle = latency_of(records.child_cycles());
        for subject in SUBJECTS {
            let q = queue_name(run, subject);
            result.left_in_queues += self.ready_count(&q).await?.0;
            result.left_in_queues += self.ready_count(&format!("{q}.dead")).await?.0;
        }
        if plan.steady.is_some() {
            let warm_end = published_at.first().copied().unwrap_or(0) + WARMUP_SECS * 1_000_000;
            if let Some(path) = std::env::var_os("BENCH_DUMP_LATENCY") {
                let mut out = String::new();
                for (i, t) in &records.entries {
                    if let Some(p) = published_at.get(*i as usize) {
                        let _ = writeln!(out, "{i} {p} {}", *t as i64 - *p as i64);
                    }
                }
                std::fs::write(path, out)?;
            }
            result.latency = Some(latency_of(
                records
                    .entries
                    .iter()
                    .filter_map(|(i, t)| {
                        let p = *published_at.get(*i as usize)?;
                        (p >= warm_end).then(|| *t as i64 - p as i64)
                    })
                    .collect(),
            ));
        }
        ensure!(
            result.exit_code == 0,
            "the agent exited with {} after SIGTERM:\n{}",
            result.exit_code,
            agent.log_tail()
        );
        Ok(result)
    }
}

/// A new channel on `conn` with `prefetch`, consuming `queue` (manual acks).
async fn consume(
    conn: &Connection,
    queue: &str,
    prefetch: u16,
    tag: &str,
) -> anyhow::Result<(Channel, lapin::Consumer)> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

fn confirmed(confirmation: Confirmation) -> anyhow::Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => bail!("publish returned unroutable"),
        other => bail!("publish not confirmed: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Report

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn med<T>(items: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(items.iter().map(f).collect())
}

fn checks<T>(items: &[T], f: impl Fn(&T) -> Check) -> Check {
    let mut total = Check::default();
    for item in items {
        total.add(f(item));
    }
    total
}

fn fmt_check(c: Check) -> String {
    if c.foreign > 0 {
        format!("{}/{} (+{} unknown)", c.lost, c.duplicates, c.foreign)
    } else {
        format!("{}/{}", c.lost, c.duplicates)
    }
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1e3)
}

fn met(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**not met**" }
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

struct Machine {
    cpus: usize,
    cpu_model: String,
    memory: String,
    kernel: String,
    rustc: String,
    php_fpm: String,
    rabbitmq: String,
    agent: String,
    commit: String,
    date: String,
}

fn machine(args: &Args, php_fpm: &Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_owned();
            let kib: f64 = line
                .trim_start_matches("MemTotal:")
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let dirty = !command_line("git", &["status", "--porcelain", "--untracked-files=no"])
        .trim()
        .is_empty();
    let php = command_line(&php_fpm.display().to_string(), &["-v"]);
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model,
        memory,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned()),
        rustc: command_line("rustc", &["-V"]),
        php_fpm: format!(
            "{}{}",
            php.lines().next().unwrap_or("unknown"),
            if php.contains("OPcache") {
                ", OPcache"
            } else {
                ""
            }
        ),
        rabbitmq: command_line("rabbitmqctl", &["version"]),
        agent: format!(
            "{} @ {}{}",
            command_line(&args.agent_bin.display().to_string(), &["--version"]),
            command_line("git", &["rev-parse", "--short", "HEAD"]),
            if dirty { " (uncommitted changes)" } else { "" }
        ),
        commit: command_line("git", &["rev-parse", "HEAD"]),
        date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    }
}

struct Rendered {
    terminal: String,
    markdown: String,
    svg: String,
}

/// Sweep medians: (pool, ceiling msg/s, agent msg/s, agent CPU µs/msg, check)
fn sweep_points(report: &Report) -> Vec<(u16, f64, f64, f64, Check)> {
    let Some(first) = report.rounds.first() else {
        return Vec::new();
    };
    (0..first.sweep.len())
        .map(|i| {
            let pool = first.sweep[i].1.pool;
            let ceiling = med(&report.rounds, |r| r.sweep[i].0.rate);
            let agent = med(&report.rounds, |r| r.sweep[i].1.rate);
            let cpu = med(&report.rounds, |r| r.sweep[i].1.cpu_us_per_msg);
            let mut check = checks(&report.rounds, |r| r.sweep[i].1.check);
            check.add(checks(&report.rounds, |r| r.sweep[i].0.check));
            (pool, ceiling, agent, cpu, check)
        })
        .collect()
}

#[allow(clippy::too_many_lines)]
fn render(args: &Args, report: &Report, total: Duration, php_fpm: &Path) -> Rendered {
    let rounds = &report.rounds;
    let m = machine(args, php_fpm);
    let pool = args.pool;
    let conc = usize::from(pool) * 2;
    let io_bound = (usize::from(args.io_pool) * 2) as f64 * 1000.0 / args.io_sleep_ms as f64;

    let ceiling = med(rounds, |r| r.ceiling.rate);
    let drain = med(rounds, |r| r.drain.rate);
    let drain_active = med(rounds, |r| r.drain.rate_active);
    let drain_cpu = med(rounds, |r| r.drain.cpu_us_per_msg);
    let steady_rate = med(rounds, |r| r.steady.offered_rate);
    let lat = |f: fn(&Latency) -> f64| med(rounds, |r| f(&r.steady.latency.unwrap_or_default()));
    let dlat =
        |f: fn(&Latency) -> f64| med(rounds, |r| f(&r.steady_direct.latency.unwrap_or_default()));
    let (p50, p99, pmax) = (lat(|l| l.p50_us), lat(|l| l.p99_us), lat(|l| l.max_us));
    let (d50, d99, dmax) = (dlat(|l| l.p50_us), dlat(|l| l.p99_us), dlat(|l| l.max_us));
    let io = med(rounds, |r| r.io.rate);
    let io_active = med(rounds, |r| r.io.rate_active);
    let rss_mib = med(rounds, |r| r.rss.peak_rss_kib as f64) / 1024.0;
    let rss_in_flight = med(rounds, |r| r.rss.max_in_flight as f64);
    let mib = |f: fn(&Round) -> u64| med(rounds, |r| f(r) as f64) / 1024.0;
    let cap_runs: Vec<&AgentResult> = rounds
        .iter()
        .filter_map(|r| r.steady_capacity.as_ref().map(|(a, _)| a))
        .collect();
    let cap_broker: Vec<Latency> = rounds
        .iter()
        .filter_map(|r| r.steady_capacity.as_ref().map(|(_, l)| *l))
        .collect();
    let cap_rate = med(&cap_runs, |a| a.offered_rate);
    let cap_busy = med(&cap_runs, |a| a.machine_busy);
    let cap_lat = |f: fn(&Latency) -> f64| med(&cap_runs, |a| f(&a.latency.unwrap_or_default()));
    let cap_blat = |f: fn(&Latency) -> f64| med(&cap_broker, f);
    let (cap_p99, cap_b99) = (cap_lat(|l| l.p99_us), cap_blat(|l| l.p99_us));
    // Latency the agent adds to what RabbitMQ costs any consumer (median over rounds of the
    // difference of the p99s).
    let cap_added99 = med(
        &rounds
            .iter()
            .filter_map(|r| r.steady_capacity.as_ref())
            .map(|(a, b)| a.latency.unwrap_or_default().p99_us - b.p99_us)
            .collect::<Vec<_>>(),
        |d| *d,
    );

    let mut all_checks = Check::default();
    let mut left = 0u32;
    for r in rounds {
        for a in [&r.drain, &r.steady, &r.io, &r.rss]
            .into_iter()
            .chain(r.steady_capacity.as_ref().map(|(a, _)| a))
        {
            all_checks.add(a.check);
            left += a.left_in_queues;
        }
        for c in [
            &r.ceiling,
            &r.ceiling_unbuffered,
            &r.steady_direct,
            &r.io_direct,
        ] {
            all_checks.add(c.check);
        }
        for (c, a) in &r.sweep {
            all_checks.add(c.check);
            all_checks.add(a.check);
            left += a.left_in_queues;
        }
        if let Some((_, check)) = r.spawn {
            all_checks.add(check);
        }
    }
    let ceiling_failures: usize = rounds
        .iter()
        .map(|r| {
            r.ceiling.failures
                + r.ceiling_unbuffered.failures
                + r.io_direct.failures
                + r.steady_direct.failures
                + r.sweep.iter().map(|s| s.0.failures).sum::<usize>()
        })
        .sum();

    let mut table = String::new();
    let _ = writeln!(
        table,
        "| Scenario | msg/s | vs ceiling / bound | p50 | p99 | max | agent CPU µs/msg | agent peak RSS | lost/dup |"
    );
    let _ = writeln!(table, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        table,
        "| 1. Ceiling: direct FastCGI, {conc} keep-alive conns, writes buffered like the agent's, {} req | {ceiling:.0} | 1.00 | | | | | | {} |",
        args.messages,
        fmt_check(checks(rounds, |r| r.ceiling.check))
    );
    let unbuffered = med(rounds, |r| r.ceiling_unbuffered.rate);
    let _ = writeln!(
        table,
        "| 1b. Ceiling without a write buffer: fastcgi-client on the bare socket, one send per FastCGI record | {unbuffered:.0} | {:.2} | | | | | | {} |",
        unbuffered / ceiling,
        fmt_check(checks(rounds, |r| r.ceiling_unbuffered.check))
    );
    let _ = writeln!(
        table,
        "| 2. Agent drain: {} msgs backlog, pool {pool}+{pool} | {drain:.0} | {:.2} | | | | {drain_cpu:.1} | {:.1} MiB | {} |",
        args.messages,
        drain / ceiling,
        mib(|r| r.drain.peak_rss_kib),
        fmt_check(checks(rounds, |r| r.drain.check))
    );
    let _ = writeln!(
        table,
        "| 3. Steady state: publish → handler start at {steady_rate:.0} msg/s ({:.0} % of ceiling), pool {pool}+{pool}, {:.0} samples | {steady_rate:.0} | {:.2} | {} | {} | {} | {:.1} | {:.1} MiB | {} |",
        args.steady_load * 100.0,
        lat(|l| l.samples as f64),
        steady_rate / ceiling,
        ms(p50),
        ms(p99),
        ms(pmax),
        med(rounds, |r| r.steady.cpu_us_per_msg),
        mib(|r| r.steady.peak_rss_kib),
        fmt_check(checks(rounds, |r| r.steady.check))
    );
    let _ = writeln!(
        table,
        "| 3b. Baseline: direct FastCGI at the same rate, request → handler start | {:.0} | | {} | {} | {} | | | {} |",
        med(rounds, |r| r.steady_direct.rate),
        ms(d50),
        ms(d99),
        ms(dmax),
        fmt_check(checks(rounds, |r| r.steady_direct.check))
    );
    if !cap_runs.is_empty() {
        let _ = writeln!(
            table,
            "| 3c. Steady state at {cap_rate:.0} msg/s, aimed at {:.0} % machine load (measured: {:.0} % busy), pool {pool}+{pool} | {cap_rate:.0} | {:.2} | {} | {} | {} | {:.1} | {:.1} MiB | {} |",
            args.machine_load * 100.0,
            cap_busy * 100.0,
            cap_rate / ceiling,
            ms(cap_lat(|x| x.p50_us)),
            ms(cap_p99),
            ms(cap_lat(|x| x.max_us)),
            med(&cap_runs, |a| a.cpu_us_per_msg),
            med(&cap_runs, |a| a.peak_rss_kib as f64) / 1024.0,
            fmt_check(checks(&cap_runs, |a| a.check))
        );
        let _ = writeln!(
            table,
            "| 3d. Baseline: RabbitMQ alone at the rate of 3c, publish → delivery to a bare consumer | {cap_rate:.0} | | {} | {} | {} | | | |",
            ms(cap_blat(|x| x.p50_us)),
            ms(cap_b99),
            ms(cap_blat(|x| x.max_us)),
        );
    }
    let _ = writeln!(
        table,
        "| 4. I/O-bound: handler sleeps {} ms, {} msgs, pool {}+{} | {io:.0} | {:.3} of {io_bound:.0} | | | | {:.1} | {:.1} MiB | {} |",
        args.io_sleep_ms,
        args.io_messages,
        args.io_pool,
        args.io_pool,
        io / io_bound,
        med(rounds, |r| r.io.cpu_us_per_msg),
        mib(|r| r.io.peak_rss_kib),
        fmt_check(checks(rounds, |r| r.io.check))
    );
    let io_direct = med(rounds, |r| r.io_direct.rate);
    let _ = writeln!(
        table,
        "| 4a. Direct FastCGI with the same handler sleep, {} keep-alive conns | {io_direct:.0} | {:.3} of {io_bound:.0} | | | | | | {} |",
        usize::from(args.io_pool) * 2,
        io_direct / io_bound,
        fmt_check(checks(rounds, |r| r.io_direct.check))
    );
    let _ = writeln!(
        table,
        "| 4b. RSS: as 4 with prefetch_per_worker {}, {} msgs, up to {rss_in_flight:.0} held by the agent | {:.0} | | | | | {:.1} | {rss_mib:.1} MiB | {} |",
        args.rss_in_flight.div_ceil(usize::from(args.io_pool) * 2),
        args.rss_messages,
        med(rounds, |r| r.rss.rate),
        med(rounds, |r| r.rss.cpu_us_per_msg),
        fmt_check(checks(rounds, |r| r.rss.check))
    );
    let spawn_runs: Vec<(f64, Check)> = rounds.iter().filter_map(|r| r.spawn).collect();
    if !spawn_runs.is_empty() {
        let rate = med(&spawn_runs, |(r, _)| *r);
        let _ = writeln!(
            table,
            "| 5. Reference: one `php` process per message (rabbitmq-cli-consumer model), {} msgs, a consumer per subject, prefetch 1 | {rate:.0} | | | | | | | {} |",
            args.spawn_messages,
            fmt_check(checks(&spawn_runs, |(_, c)| *c))
        );
    }

    let sweep = sweep_points(report);
    let mut sweep_table = String::new();
    if !sweep.is_empty() {
        let _ = writeln!(
            sweep_table,
            "| pool per subject | total concurrency | ceiling req/s | agent msg/s | agent / ceiling | agent CPU µs/msg | lost/dup |"
        );
        let _ = writeln!(sweep_table, "|---:|---:|---:|---:|---:|---:|---:|");
        for (p, c, a, cpu, check) in &sweep {
            let _ = writeln!(
                sweep_table,
                "| {p} | {} | {c:.0} | {a:.0} | {:.2} | {cpu:.1} | {} |",
                usize::from(*p) * 2,
                a / c,
                fmt_check(*check)
            );
        }
    }

    // Other load on the machine during the measurements.
    let mut background: Vec<(String, f64)> = Vec::new();
    for (i, r) in rounds.iter().enumerate() {
        let round = i + 1;
        for (name, c) in [
            ("ceiling", &r.ceiling),
            ("ceiling unbuffered", &r.ceiling_unbuffered),
            ("direct at steady rate", &r.steady_direct),
            ("direct I/O-bound", &r.io_direct),
        ] {
            background.push((format!("round {round} {name}"), c.background_cores));
        }
        for (name, a) in [
            ("drain", &r.drain),
            ("steady", &r.steady),
            ("I/O-bound", &r.io),
            ("RSS", &r.rss),
        ] {
            background.push((format!("round {round} {name}"), a.background_cores));
        }
        if let Some((a, _)) = &r.steady_capacity {
            background.push((
                format!("round {round} steady at machine load"),
                a.background_cores,
            ));
        }
        for (c, a) in &r.sweep {
            background.push((
                format!("round {round} sweep {} ceiling", a.pool),
                c.background_cores,
            ));
            background.push((
                format!("round {round} sweep {} agent", a.pool),
                a.background_cores,
            ));
        }
    }
    let (worst_name, worst) = background
        .iter()
        .cloned()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or_default();
    let mut disturbed: Vec<&(String, f64)> = background.iter().filter(|(_, c)| *c > 0.2).collect();
    disturbed.sort_by(|a, b| b.1.total_cmp(&a.1));
    let background_note = if disturbed.is_empty() {
        format!(
            "Other processes on the machine used at most {worst:.2} cores during any measured run ({worst_name}): the numbers are not disturbed by another workload."
        )
    } else {
        let shown: Vec<String> = disturbed
            .iter()
            .take(6)
            .map(|(n, c)| format!("{n} ({c:.2})"))
            .collect();
        format!(
            "**Warning:** other processes used more than 0.2 cores during {} of {} measured runs, so those numbers are disturbed; worst: {}{}.",
            disturbed.len(),
            background.len(),
            shown.join(", "),
            if disturbed.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        )
    };
    let io_cycle = |f: fn(&Latency) -> f64| med(rounds, |r| f(&r.io.cycle));
    let io_direct_cycle = |f: fn(&Latency) -> f64| med(rounds, |r| f(&r.io_direct.cycle));
    let cycle_note = format!(
        "I/O-bound turnaround: time from one handler start to the next on the same FPM child \
         (handler {} ms + reply + client turnaround), p50 / p99: agent {} / {}, direct FastCGI {} / {}.",
        args.io_sleep_ms,
        ms(io_cycle(|l| l.p50_us)),
        ms(io_cycle(|l| l.p99_us)),
        ms(io_direct_cycle(|l| l.p50_us)),
        ms(io_direct_cycle(|l| l.p99_us)),
    );

    // Where the CPU goes, per message.
    let mut budget = String::new();
    let _ = writeln!(
        budget,
        "| Run | agent user | agent sys | agent total | php-fpm | RabbitMQ | bench process |"
    );
    let _ = writeln!(budget, "|---|---:|---:|---:|---:|---:|---:|");
    let mut budget_rows: Vec<(String, Vec<&AgentResult>)> = vec![
        (
            format!("drain, pool {pool}+{pool}"),
            rounds.iter().map(|r| &r.drain).collect(),
        ),
        (
            format!("steady state {:.0} %", args.steady_load * 100.0),
            rounds.iter().map(|r| &r.steady).collect(),
        ),
    ];
    if !cap_runs.is_empty() {
        budget_rows.push((
            format!(
                "steady state {:.0} % machine load",
                args.machine_load * 100.0
            ),
            cap_runs.clone(),
        ));
    }
    budget_rows.push((
        format!("I/O-bound, pool {}+{}", args.io_pool, args.io_pool),
        rounds.iter().map(|r| &r.io).collect(),
    ));
    for (name, runs) in &budget_rows {
        let _ = writeln!(
            budget,
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            med(runs, |a| a.cpu_user_us_per_msg),
            med(runs, |a| a.cpu_sys_us_per_msg),
            med(runs, |a| a.cpu_us_per_msg),
            med(runs, |a| a.fpm_us_per_msg),
            med(runs, |a| a.rabbitmq_us_per_msg),
            med(runs, |a| a.bench_us_per_msg),
        );
    }

    // Targets.
    let mut candidates: Vec<(u16, f64, f64)> = vec![(pool, ceiling, drain)];
    candidates.extend(sweep.iter().map(|(p, c, a, _, _)| (*p, *c, *a)));
    let best = candidates
        .iter()
        .copied()
        .max_by(|x, y| x.2.total_cmp(&y.2))
        .unwrap_or((pool, ceiling, drain));
    let best_ratio = best.2 / best.1;
    let mut targets = String::new();
    let _ = writeln!(targets, "| Target | Measured | |");
    let _ = writeln!(targets, "|---|---|---|");
    let _ = writeln!(
        targets,
        "| Drain ≥ 0.85 × ceiling at the best pool size | pool {}+{}: agent {:.0} msg/s vs ceiling {:.0} req/s = {:.2} | {} |",
        best.0,
        best.0,
        best.2,
        best.1,
        best_ratio,
        met(best_ratio >= 0.85)
    );
    let _ = writeln!(
        targets,
        "| I/O-bound ≥ 95 % of {io_bound:.0} msg/s | {io:.0} msg/s = {:.1} % (first → last handler start: {io_active:.0} msg/s = {:.1} %) | {} |",
        io / io_bound * 100.0,
        io_active / io_bound * 100.0,
        met(io / io_bound >= 0.95)
    );
    let _ = writeln!(
        targets,
        "| Agent CPU ≤ 40 µs/msg | {drain_cpu:.1} µs/msg (drain, pool {pool}+{pool}){} | {} |",
        sweep
            .iter()
            .min_by(|a, b| a.3.total_cmp(&b.3))
            .map(|(p, _, _, cpu, _)| format!("; least in the sweep {cpu:.1} at pool {p}+{p}"))
            .unwrap_or_default(),
        met(drain_cpu <= 40.0)
    );
    let rss_ok = rss_mib <= 40.0 && rss_in_flight >= 0.9 * args.rss_in_flight as f64;
    let _ = writeln!(
        targets,
        "| Peak RSS ≤ 40 MiB with {} in flight | {rss_mib:.1} MiB with up to {rss_in_flight:.0} held | {} |",
        args.rss_in_flight,
        met(rss_ok)
    );
    let _ = writeln!(
        targets,
        "| p99 added latency ≤ 5 ms at {:.0} % of the ceiling | publish → handler start p99 {} (direct FastCGI at the same rate: {}) | {} |",
        args.steady_load * 100.0,
        ms(p99),
        ms(d99),
        met(p99 <= 5000.0)
    );
    if !cap_runs.is_empty() {
        let _ = writeln!(
            targets,
            "| p99 added latency ≤ 5 ms at {:.0} % machine load | {cap_rate:.0} msg/s, machine {:.0} % busy: publish → handler start p99 {}; RabbitMQ alone p99 {}; added by the agent and FPM: {} | {} |",
            args.machine_load * 100.0,
            cap_busy * 100.0,
            ms(cap_p99),
            ms(cap_b99),
            ms(cap_added99),
            met(cap_added99 <= 5000.0)
        );
    }
    let _ = writeln!(
        targets,
        "| No lost or duplicate message | {} lost, {} duplicate, {} unknown over all runs; {left} left in queues; {ceiling_failures} failed direct requests | {} |",
        all_checks.lost,
        all_checks.duplicates,
        all_checks.foreign,
        met(all_checks.clean() && left == 0 && ceiling_failures == 0)
    );

    let invocation = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let mut terminal = String::new();
    let _ = writeln!(
        terminal,
        "\namqp-agent benchmark: {} round(s), median; {} CPUs ({}); {}\n",
        rounds.len(),
        m.cpus,
        m.cpu_model,
        m.date
    );
    terminal.push_str(&table);
    if !sweep_table.is_empty() {
        let _ = writeln!(
            terminal,
            "\nPool-size sweep ({} msgs per point):\n",
            args.sweep_messages
        );
        terminal.push_str(&sweep_table);
    }
    let _ = writeln!(terminal, "\nCPU µs per message, by process:\n");
    terminal.push_str(&budget);
    let _ = writeln!(terminal, "\nTargets:\n");
    terminal.push_str(&targets);
    let _ = writeln!(
        terminal,
        "\nDrain from first to last handler start: {drain_active:.0} msg/s; agent start-up to first message: {:.0} ms. Total bench time {:.0} s.\n{cycle_note}\n{background_note}",
        med(rounds, |r| r.drain.startup_ms),
        total.as_secs_f64()
    );

    let mut md = String::new();
    let _ = writeln!(md, "# amqp-agent benchmark results\n");
    let _ = writeln!(
        md,
        "Generated by `scripts/bench{}{invocation}` ({} round(s), medians; {:.0} s in total). \
         `scripts/bench` regenerates this file and `throughput.svg`; the notes at the end are kept.\n",
        if invocation.is_empty() { "" } else { " " },
        rounds.len(),
        total.as_secs_f64()
    );
    let _ = writeln!(md, "## Machine\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| Date | {} |", m.date);
    let _ = writeln!(md, "| CPU | {} × {} |", m.cpus, m.cpu_model);
    let _ = writeln!(md, "| Memory | {} |", m.memory);
    let _ = writeln!(md, "| Kernel | {} |", m.kernel);
    let _ = writeln!(md, "| rustc | {} |", m.rustc);
    let _ = writeln!(md, "| php-fpm | {} |", m.php_fpm);
    let _ = writeln!(md, "| RabbitMQ | {} |", m.rabbitmq);
    let _ = writeln!(md, "| amqp-agent | {} (`{}`) |\n", m.agent, m.commit);
    let _ = writeln!(md, "## Setup\n");
    let _ = writeln!(
        md,
        "- Everything runs on this one machine: RabbitMQ, one php-fpm pool (`pm = static`, \
         {} children, OPcache as installed, listening on {}), the agent (release build, \
         `RUST_LOG=warn`) and the bench itself (which also publishes and, for the ceiling, plays \
         the FastCGI client).\n\
         - Handler `examples/php/bench-handler.php`: reads `php://input`, `json_decode`, appends \
         `\"<id> <start µs>\"` to a file of its own per FPM child, `usleep` if `sleep_ms` is set, \
         answers `X-Agent-Ack: 1`. Signing is off (`signing_secrets = []`).\n\
         - Messages: {} B JSON bodies, persistent (`delivery_mode` 2), half `event`, half \
         `command`, published with publisher confirms ({CONFIRM_WINDOW} unconfirmed at most). \
         Fresh queues per run (`bench.<id>.<subject>`), deleted afterwards.\n\
         - **Ceiling**: the bench sends the agent's params (`REQUEST_METHOD=POST`, \
         `SCRIPT_FILENAME`, `HTTP_X_AGENT_*`, …) and the same bodies straight to php-fpm, one \
         keep-alive connection (`TCP_NODELAY` over TCP) per concurrent worker, as many workers as the \
         agent's two pools together, `fastcgi-client` as in the agent, and like the agent \
         with a write buffer, so a request is one send. Row 1b is the same without the \
         buffer: fastcgi-client then sends every record (headers, params, body, \
         terminators) separately, about 9 sends per request. Rows 3b and \
         4a and the sweep use the buffered client.\n\
         - **Drain**: the backlog is published first, then `amqp-agent run` starts; msg/s = \
         messages / (agent start → last handler start), so connecting and declaring count.\n\
         - **Steady state**: the agent consumes, then messages are published at \
         {:.0} % of the ceiling for {WARMUP_SECS} s (warm-up, not counted) + {} s; latency = \
         handler `microtime(true)` − publish time (same wall clock). Row 3b sends the same \
         rate straight to FastCGI: what FPM alone adds. Row 3c is the same at a share of \
         the machine's capacity instead of the ceiling: the ceiling has no broker and no \
         publisher, so 50 % of it saturates this machine once RabbitMQ and the publisher share \
         its cores. Rate = share × cores / (CPU µs per message of agent + php-fpm + \
         RabbitMQ + bench), first as measured in run 3, then corrected once from the run \
         itself when that differs by more than 15 % (the path costs more per message at lower \
         rates); the machine's measured busy share is shown. Row 3d publishes at that rate to a bare lapin consumer \
         (own connection, the agent's window, ack on arrival): what RabbitMQ costs any consumer; \
         the agent's added latency is 3c's p99 minus 3d's.\n\
         - **Row 5** is the model of rabbitmq-cli-consumer and `amqp-consume`: a consumer per \
         subject (prefetch 1, in the bench process) starts `php \
         examples/php/bench-cli-handler.php` for every message with the body on stdin (the same \
         decode-and-record work) and acks when it exits 0.\n\
         - **CPU** = (utime + stime of the agent process, from `/proc/<pid>/stat`) / messages, \
         start-up included. **Peak RSS** = `VmHWM` from `/proc/<pid>/status`. Both are read \
         once every message was handled, before SIGTERM.\n\
         - **lost/dup** compares published ids with the ids the handler recorded; the agent \
         must also exit 0 after SIGTERM and leave its queues and `.dead` queues empty.\n",
        (usize::from(
            args.sweep_pools
                .iter()
                .copied()
                .chain([pool, args.io_pool])
                .max()
                .unwrap_or(1)
        ) * 2)
            .max(16),
        match args.fpm_listen {
            Listen::Unix =>
                "a Unix socket, as Debian's php-fpm does by default (`--fpm-listen tcp`: loopback TCP)",
            Listen::Tcp => "loopback TCP (`--fpm-listen tcp`; the default is a Unix socket)",
        },
        args.body_bytes,
        args.steady_load * 100.0,
        args.steady_secs
    );
    let _ = writeln!(md, "## Results\n");
    md.push_str(&table);
    let _ = writeln!(
        md,
        "\nDrain from first to last handler start: {drain_active:.0} msg/s; agent start-up to \
         first message: {:.0} ms. Backlog publishing ran at {:.0} msg/s.\n\n{cycle_note}\n\n{background_note}\n",
        med(rounds, |r| r.drain.startup_ms),
        med(rounds, |r| r.drain.publish_rate)
    );
    if !sweep_table.is_empty() {
        let _ = writeln!(
            md,
            "## Pool-size sweep\n\n{} messages per point; the ceiling uses the same total concurrency.\n",
            args.sweep_messages
        );
        md.push_str(&sweep_table);
        let _ = writeln!(md, "\n![throughput](throughput.svg)\n");
    }
    let _ = writeln!(
        md,
        "## Where the CPU goes\n\nCPU time per message (µs, utime + stime from /proc, clock tick \
         {:.0} ms) of each process while the agent ran: from the agent's start to the last \
         handler start. Steady-state runs include publishing.\n",
        1000.0 / clock_ticks_per_sec()
    );
    md.push_str(&budget);
    md.push('\n');
    let _ = writeln!(md, "## Targets\n");
    md.push_str(&targets);
    md.push('\n');

    let svg = svg_chart(&sweep, args, &m);
    Rendered {
        terminal,
        markdown: md,
        svg,
    }
}

/// A small hand-written line chart: ceiling and agent throughput against total concurrency.
fn svg_chart(points: &[(u16, f64, f64, f64, Check)], args: &Args, m: &Machine) -> String {
    let (w, h) = (840.0_f64, 440.0_f64);
    let (left, right, top, bottom) = (80.0, 240.0, 60.0, 70.0);
    // Points stay this far from the plot's left and right edges, clear of the axis labels.
    let inset = 40.0;
    let (pw, ph) = (w - left - right, h - top - bottom);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">amqp-agent throughput vs concurrency ({} msgs of {} B, trivial PHP handler)</text>"#,
        w / 2.0,
        args.sweep_messages,
        args.body_bytes
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="42" text-anchor="middle" fill="#555">{} × {}, php-fpm pm.static, RabbitMQ {}; {}</text>"##,
        w / 2.0,
        m.cpus,
        xml(&m.cpu_model),
        xml(&m.rabbitmq),
        xml(&m.date)
    );
    if points.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">sweep not run (--sweep off)</text></svg>"#,
            w / 2.0,
            h / 2.0
        );
        return s;
    }
    let max = points
        .iter()
        .map(|p| p.1.max(p.2))
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let step = nice_step(max * 1.1 / 5.0);
    let ymax = (max * 1.1 / step).ceil() * step;
    let conc: Vec<f64> = points.iter().map(|p| f64::from(p.0) * 2.0).collect();
    let (lx0, lx1) = (
        conc.iter().copied().fold(f64::MAX, f64::min).log2(),
        conc.iter().copied().fold(f64::MIN, f64::max).log2(),
    );
    let x = |c: f64| {
        if lx1 > lx0 {
            left + inset + (c.log2() - lx0) / (lx1 - lx0) * (pw - 2.0 * inset)
        } else {
            left + pw / 2.0
        }
    };
    let y = |v: f64| top + ph - v / ymax * ph;
    // Grid and axes.
    let mut v = 0.0;
    while v <= ymax + step / 2.0 {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{x2}" y2="{yy:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{v:.0}</text>"##,
            yy = y(v),
            x2 = left + pw,
            tx = left - 8.0,
            ty = y(v) + 4.0
        );
        v += step;
    }
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{b}" stroke="black"/><line x1="{left}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>"#,
        b = top + ph,
        r = left + pw
    );
    for c in &conc {
        let _ = writeln!(
            s,
            r#"<line x1="{xx:.1}" y1="{b}" x2="{xx:.1}" y2="{b2}" stroke="black"/><text x="{xx:.1}" y="{ty}" text-anchor="middle">{c}</text>"#,
            xx = x(*c),
            b = top + ph,
            b2 = top + ph + 5.0,
            ty = top + ph + 20.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">total concurrency (pool_size per subject × 2 subjects)</text>"#,
        left + pw / 2.0,
        h - 22.0
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="{}" text-anchor="middle" transform="rotate(-90 20 {})">messages / s</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    // Series.
    let series = [
        ("ceiling: direct FastCGI", "#1f77b4", 1usize),
        ("amqp-agent backlog drain", "#d62728", 2usize),
    ];
    for (i, (name, color, field)) in series.iter().enumerate() {
        let value = |p: &(u16, f64, f64, f64, Check)| if *field == 1 { p.1 } else { p.2 };
        let path: Vec<String> = points
            .iter()
            .zip(&conc)
            .map(|(p, c)| format!("{:.1},{:.1}", x(*c), y(value(p))))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2.5" points="{}"/>"#,
            path.join(" ")
        );
        for (p, c) in points.iter().zip(&conc) {
            let (px, py) = (x(*c), y(value(p)));
            let dy = if *field == 1 { -9.0 } else { 17.0 };
            let _ = writeln!(
                s,
                r#"<circle cx="{px:.1}" cy="{py:.1}" r="4" fill="{color}"/><text x="{px:.1}" y="{:.1}" text-anchor="middle" fill="{color}">{:.0}</text>"#,
                py + dy,
                value(p)
            );
        }
        let ly = top + 10.0 + i as f64 * 22.0;
        let lx = left + pw + 20.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2.5"/><text x="{}" y="{}">{name}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0
        );
    }
    let lx = left + pw + 20.0;
    let mut ly = top + 70.0;
    let _ = writeln!(
        s,
        r##"<text x="{lx}" y="{ly}" fill="#555">agent / ceiling:</text>"##
    );
    for (p, c) in points.iter().zip(&conc) {
        ly += 18.0;
        let _ = writeln!(
            s,
            r##"<text x="{lx}" y="{ly}" fill="#555">{c}: {:.2}</text>"##,
            p.2 / p.1
        );
    }
    s.push_str("</svg>\n");
    s
}

fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    let r = raw / magnitude;
    let nice = if r <= 1.0 {
        1.0
    } else if r <= 2.0 {
        2.0
    } else if r <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
