//! The bench's command line.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// amqp-agent benchmark: ceiling (direct FastCGI), backlog drain, steady-state latency,
/// I/O-bound handler, RSS with ~1000 messages in flight, pool-size sweep.
#[derive(Debug, Parser)]
pub struct Args {
    /// Messages of the main drain (and requests of the main ceiling run).
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// Run the pool-size sweep (chart data).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub sweep: OnOff,
    /// Messages per sweep point (CPU time is read in 10 ms ticks: 20,000 messages resolve
    /// 0.5 µs per message).
    #[arg(long, default_value_t = 20_000)]
    pub sweep_messages: usize,
    /// Pool sizes per subject of the sweep (total concurrency is twice this).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub sweep_pools: Vec<u16>,
    /// Repetitions of every measurement; the report shows medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Pool size per subject of the main ceiling, drain and steady-state runs.
    #[arg(long, default_value_t = 4)]
    pub pool: u16,
    /// Measured duration of the steady-state run, in seconds (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    pub steady_secs: u64,
    /// Steady-state publish rate as a fraction of the measured ceiling.
    #[arg(long, default_value_t = 0.5)]
    pub steady_load: f64,
    /// An extra steady-state run at this share of the machine's capacity for the whole path
    /// (0 = skip): cores / the CPU per message of publisher, RabbitMQ, agent and php-fpm
    /// together in run 3. RabbitMQ alone (a bare consumer) is measured at the same rate.
    #[arg(long, default_value_t = 0.5)]
    pub machine_load: f64,
    /// Messages of the I/O-bound run.
    #[arg(long, default_value_t = 8_000)]
    pub io_messages: usize,
    /// Handler sleep of the I/O-bound and RSS runs, in ms.
    #[arg(long, default_value_t = 10)]
    pub io_sleep_ms: u64,
    /// Pool size per subject of the I/O-bound and RSS runs.
    #[arg(long, default_value_t = 8)]
    pub io_pool: u16,
    /// Messages of the reference run with one `php` process per message (0 = skip).
    #[arg(long, default_value_t = 300)]
    pub spawn_messages: usize,
    /// PHP CLI binary of that reference run.
    #[arg(long, default_value = "php")]
    pub php_cli: PathBuf,
    /// Messages the agent should hold at once in the RSS run (sets prefetch_per_worker).
    #[arg(long, default_value_t = 1_000)]
    pub rss_in_flight: usize,
    /// Messages of the RSS run.
    #[arg(long, default_value_t = 4_000)]
    pub rss_messages: usize,
    /// Size of each JSON body in bytes.
    #[arg(long, default_value_t = 1024)]
    pub body_bytes: usize,
    /// RabbitMQ.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// The agent binary.
    #[arg(long, default_value = "target/release/amqp-agent")]
    pub agent_bin: PathBuf,
    /// php-fpm binary (default: $PHP_FPM_BIN, else the newest /usr/sbin/php-fpm*).
    #[arg(long, env = "PHP_FPM_BIN")]
    pub php_fpm: Option<PathBuf>,
    /// Before each measured run, wait for other processes to use less than 0.2 cores; at most
    /// this many seconds over the whole bench (disturbed runs are flagged in the report).
    #[arg(long, default_value_t = 30)]
    pub quiet_wait: u64,
    /// Where RESULTS.md and throughput.svg are written.
    #[arg(long, default_value = "bench")]
    pub out_dir: PathBuf,
    /// Keep the work directory (agent configs and logs, php-fpm's config and log, the handler's
    /// records: `records/<run>.<FPM child pid>.log`, one "<id> <start µs>" line per message)
    #[arg(long)]
    pub keep: bool,
    /// Print only; do not write RESULTS.md and throughput.svg.
    #[arg(long)]
    pub no_write: bool,
    /// Also run one extra drain (not part of the results) under `perf record --call-graph dwarf`,
    /// into this file (with `--quick`: the quick drain's plan, `--quick-batch` included).
    #[arg(long)]
    pub perf: Option<PathBuf>,
    /// `--quick`: each round drains twice, without and with a dashboard open (page loaded, its
    /// data and history fetched every `--dashboard-every-ms`, 5000 as the page does), and
    /// prints the agent's CPU per message of both.
    #[arg(long, requires = "quick")]
    pub dashboard: bool,
    /// See `--dashboard`.
    #[arg(long, default_value_t = 5000)]
    pub dashboard_every_ms: u64,
    /// `--quick`: the drain with this `batch_max` (default 1: one request per message).
    #[arg(long, default_value_t = 1)]
    pub quick_batch: u16,
    /// Quick check while optimising: only the ceiling and the drain, `--rounds` times; prints
    /// one line per round and the medians, writes nothing.
    #[arg(long)]
    pub quick: bool,
    /// With `--quick`: the I/O-bound runs (agent and direct FastCGI) instead of ceiling and drain.
    #[arg(long, requires = "quick")]
    pub io: bool,
    /// With `--quick`: steady state only, at this rate (msg/s), with RabbitMQ alone (a bare
    /// consumer) at the same rate, `--rounds` times.
    #[arg(long, requires = "quick", conflicts_with = "io")]
    pub steady_rate: Option<f64>,
    /// With `--quick`: also drain the same backlog on quorum queues each round (row 2q of the
    /// full bench), and print both medians.
    #[arg(long, requires = "quick", conflicts_with_all = ["io", "steady_rate"])]
    pub quorum: bool,
    /// With `--quick`: drains of `--messages` by fixed pools of every `--sweep-pools` size, then
    /// by auto pools (`pool_mode = "auto"`, 1 to the largest sweep size per subject, FPM's
    /// status page read), `--rounds` times; prints the auto pools' drain against the best
    /// fixed pool (target ≥ 0.9). The full bench runs the auto drain after the sweep (row 6a).
    #[arg(long, requires = "quick", conflicts_with_all = ["io", "steady_rate", "quorum"])]
    pub auto: bool,
    /// With `--quick`: streamed batch replies on loopback TCP against a Unix socket (issue #24,
    /// item 0). At every `--sweep-pools` size, drains of `--messages` with `batch_max` the
    /// largest `--batches` value: PHP flushing every outcome line over TCP with the agent's
    /// `TCP_QUICKACK` off (`AMQP_AGENT_TCP_QUICKACK=0`, the agent before the fix) and on, PHP
    /// flushing the reply once at the end over TCP, and flushing every line over a Unix socket;
    /// then one request per message with the reply in two flushes (TCP off, on; Unix). php-fpm
    /// runs a second pool on the other listen type. Target: TCP per line ≥ 0.9 of both.
    #[arg(long, requires = "quick", conflicts_with_all = ["io", "steady_rate", "quorum", "auto"])]
    pub streamed: bool,
    /// With `--streamed`: only these rows of its table (0-based, in the order printed; the
    /// ratios need rows 1, 2, 3, 5, 6, 7 and 8). Default: every row.
    #[arg(long, requires = "streamed", value_delimiter = ',')]
    pub streamed_rows: Vec<usize>,
    /// `batch_max` values of extra drains in the full bench (rows 2b; `--batches ""` for none).
    /// The handler answers batches with php/receiver's parser.
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    pub batches: Vec<u16>,
    /// `agent.worker_threads` of every agent run (default: the agent's default, 1).
    #[arg(long)]
    pub agent_worker_threads: Option<u16>,
    /// How php-fpm listens, for the agent and the ceiling alike: a Unix socket (php-fpm's
    /// default on Debian, and cheaper per request) or loopback TCP.
    #[arg(long, value_enum, default_value_t = Listen::Unix)]
    pub fpm_listen: Listen,
    /// `amqp.prefetch_per_worker` of the drain, steady-state and sweep runs (default: the
    /// agent's default).
    #[arg(long)]
    pub prefetch_per_worker: Option<u16>,
}

impl Args {
    /// `pm.max_children` of the bench's pool: room for the largest pool of both subjects.
    pub fn fpm_children(&self) -> usize {
        let largest_pool = self
            .sweep_pools
            .iter()
            .copied()
            .chain([self.pool, self.io_pool])
            .max()
            .unwrap_or(1);
        (usize::from(largest_pool) * 2).max(16)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Listen {
    Unix,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}
