//! What each run measured, and a round of runs.

use crate::records::{Check, Latency};

#[derive(Debug, Clone, Default)]
pub struct CeilingResult {
    pub rate: f64,
    /// CPU of the bench process (the FastCGI client) per request.
    pub client_us_per_req: f64,
    /// Cores used by unrelated processes during the run.
    pub background_cores: f64,
    /// Time between consecutive handler starts on one FPM child.
    pub cycle: Latency,
    pub failures: usize,
    pub check: Check,
    pub latency: Option<Latency>,
}

#[derive(Debug, Clone, Default)]
pub struct AgentResult {
    pub pool: u16,
    /// Messages / (agent start -> last handler start).
    pub rate: f64,
    /// Messages / (first -> last handler start).
    pub rate_active: f64,
    /// Agent start -> first handler start.
    pub startup_ms: f64,
    pub publish_rate: f64,
    pub cpu_us_per_msg: f64,
    /// Context switches of the agent's threads per message (start-up included).
    pub switches_per_msg: f64,
    pub cpu_user_us_per_msg: f64,
    pub cpu_sys_us_per_msg: f64,
    /// CPU µs per message of php-fpm, RabbitMQ and the bench process during the run.
    pub fpm_us_per_msg: f64,
    pub rabbitmq_us_per_msg: f64,
    pub bench_us_per_msg: f64,
    pub peak_rss_kib: u64,
    /// Cores used by unrelated processes during the run.
    pub background_cores: f64,
    /// Share of the machine's CPU time (user + nice + system, all processes) used during the
    /// run: the machine's load.
    pub machine_busy: f64,
    /// Time between consecutive handler starts on one FPM child.
    pub cycle: Latency,
    pub max_in_flight: usize,
    pub check: Check,
    pub left_in_queues: u32,
    pub exit_code: i32,
    pub latency: Option<Latency>,
    /// HTTP fetches a dashboard made during the run (`--dashboard`).
    pub dashboard_fetches: u64,
    /// Measured publish rate of the steady-state run.
    pub offered_rate: f64,
    /// Auto pools: the largest size the autoscaler gave each subject.
    pub autoscaled: String,
}

#[derive(Debug, Default)]
pub struct Round {
    pub ceiling: CeilingResult,
    /// The ceiling with fastcgi-client on a bare TcpStream (one send per FastCGI record).
    pub ceiling_unbuffered: CeilingResult,
    /// Steady state at `machine_load` × the machine's capacity, and the broker alone (publish ->
    /// delivery to a bare consumer) at the same rate.
    pub steady_capacity: Option<(AgentResult, Latency)>,
    pub io_direct: CeilingResult,
    pub drain: AgentResult,
    /// The same drain on quorum queues on the local node (row 2q).
    pub drain_quorum: AgentResult,
    /// The same drain with each `--batches` value as `batch_max` (rows 2b).
    pub drain_batches: Vec<(u16, AgentResult)>,
    pub steady: AgentResult,
    pub steady_direct: CeilingResult,
    pub io: AgentResult,
    pub rss: AgentResult,
    pub sweep: Vec<(CeilingResult, AgentResult)>,
    /// The sweep's drain by auto pools (1 to the largest sweep pool per subject), row 6a.
    pub auto: Option<AgentResult>,
    /// Reference: one `php` process per message (msg/s, ids recorded).
    pub spawn: Option<(f64, Check)>,
}

pub struct Report {
    pub rounds: Vec<Round>,
}
