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
//! 6. **Sweep**: ceiling and drain at several pool sizes (chart in `throughput.svg`); then
//!    (row 6a) the same drain by auto pools (`pool_mode = "auto"`, 1 to the largest sweep size,
//!    FPM's status page read), against the fastest fixed pool of the sweep.
//!
//! For every agent run it reads CPU time (utime + stime) and peak RSS (VmHWM) of the agent
//! process from /proc, and compares the published ids with the ids the handler recorded.
//! With `BENCH_DUMP_LATENCY=<file>`, each steady-state run writes "<index> <published µs>
//! <latency µs>" per message to that file (the last run wins), to see when slow messages came.
//!
//!
//! # Layout
//! - `args`: the flags.
//! - `procs`: the processes — the bench's php-fpm pool and the agent under test.
//! - `sampling`: what is read from /proc — CPU ticks, RSS, context switches, machine load.
//! - `records`: what the handlers recorded — ids and start times; lost/duplicate checks.
//! - `messages`: run ids, queue names, message ids and bodies.
//! - `fcgi_load`: load generator straight to php-fpm (the ceiling), with the agent's own
//!   `RequestTemplate` and `parse_head`.
//! - `amqp_load`: load generators through RabbitMQ — backlog and paced publishing, RabbitMQ alone
//!   (a bare consumer), one `php` process per message.
//! - `bench`: the bench's state — channels, queues, the generated agent config, quiet wait.
//! - `agent_run`: one measured run of the agent.
//! - `rounds` and `quick`: the full bench and `--quick`.
//! - `results`: what each run measured.
//! - `report`: medians, the terminal table, RESULTS.md and throughput.svg.

mod agent_run;
mod amqp_load;
mod args;
mod bench;
mod dashboard;
mod fcgi_load;
#[path = "../../tests/it/common/fpm_pool.rs"]
mod fpm_pool;
mod messages;
#[path = "../shared/os.rs"]
mod os;
mod procs;
mod quick;
mod records;
mod report;
mod results;
mod rounds;
mod sampling;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, ensure};
use clap::Parser as _;

use crate::args::Args;
use crate::bench::Bench;
use crate::procs::Fpm;

const SUBJECTS: [&str; 2] = ["event", "command"];
const HANDLER: &str = "examples/php/bench-handler.php";
/// What both handlers require: decode the body, record the id.
const RECORD_LIB: &str = "examples/php/bench-record.php";
/// The same work for the process-per-message reference (row 5), body on stdin.
const CLI_HANDLER: &str = "examples/php/bench-cli-handler.php";
/// The bench pool's `pm.status_path`, read by the agent in the auto-pool runs.
const FPM_STATUS_PATH: &str = "/fpm-status";
/// The receiver package, whose batch parser the handler uses for the batch rows.
const RECEIVER: &str = "php/receiver";
/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(20);
/// Unconfirmed publishes allowed in flight while loading a backlog.
const CONFIRM_WINDOW: usize = 2000;
/// Marker in RESULTS.md: hand-written notes below it survive a regeneration.
const NOTES_MARKER: &str = "<!-- notes: everything below this line is hand-written and kept when scripts/bench regenerates this file -->";

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
        None => procs::newest_php_fpm()?,
    };
    let dir = std::env::temp_dir().join(format!("amqp-agent-bench-{}", std::process::id()));
    let (records, script) = prepare_work_dir(&dir)?;
    let children = args.fpm_children();
    // `--quick --streamed` compares both listen types: a second pool listens the other way.
    let alt = args.streamed.then_some(match args.fpm_listen {
        args::Listen::Tcp => args::Listen::Unix,
        args::Listen::Unix => args::Listen::Tcp,
    });
    let fpm = Fpm::start(&php_fpm, &dir, &records, children, args.fpm_listen, alt)?;
    eprintln!(
        "php-fpm {} listening on {} (pm.max_children = {children}); work dir {}",
        php_fpm.display(),
        fpm.address,
        dir.display()
    );
    if let Some(alt) = &fpm.alt_address {
        eprintln!("  and a second pool on {alt}");
    }
    let mut bench = Bench::connect(args, dir.clone(), records, script, &fpm).await?;
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
        Ok(None) => {}
        Ok(Some(report)) => {
            let out = report::render(&bench.args, &report, started.elapsed(), &php_fpm);
            println!("{}", out.terminal);
            if !bench.args.no_write {
                write_results(&bench.args.out_dir, &out)?;
            }
        }
        Err(e) => {
            eprintln!("bench failed; logs kept in {}", dir.display());
            return Err(e);
        }
    }
    if bench.args.keep {
        eprintln!("work directory kept: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// Creates the work dir with the handler scripts and the records dir (writable by FPM's user);
/// returns (records dir, handler script).
fn prepare_work_dir(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let records = dir.join("records");
    std::fs::create_dir_all(&records)?;
    let script = dir.join("bench-handler.php");
    std::fs::copy(HANDLER, &script).with_context(|| format!("cannot copy {HANDLER}"))?;
    let record = dir.join("bench-record.php");
    std::fs::copy(RECORD_LIB, &record).with_context(|| format!("cannot copy {RECORD_LIB}"))?;
    for p in [dir, records.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777))?;
    }
    for p in [&script, &record] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644))?;
    }
    // The batch rows' handler parses batches with the receiver package (php/receiver).
    let receiver = dir.join("receiver");
    std::fs::create_dir_all(receiver.join("src"))?;
    std::fs::set_permissions(&receiver, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(receiver.join("src"), std::fs::Permissions::from_mode(0o755))?;
    let mut files = vec![(
        PathBuf::from(RECEIVER).join("autoload.php"),
        receiver.join("autoload.php"),
    )];
    for entry in std::fs::read_dir(Path::new(RECEIVER).join("src"))? {
        let path = entry?.path();
        files.push((
            path.clone(),
            receiver
                .join("src")
                .join(path.file_name().unwrap_or_default()),
        ));
    }
    for (from, to) in files {
        std::fs::copy(&from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok((records, script))
}

/// Rewrites RESULTS.md above the hand-written notes, and throughput.svg.
fn write_results(out_dir: &Path, out: &report::Rendered) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir)?;
    let results = out_dir.join("RESULTS.md");
    let kept = std::fs::read_to_string(&results)
        .ok()
        .and_then(|t| t.split_once(NOTES_MARKER).map(|(_, n)| n.to_owned()))
        .unwrap_or_else(|| "\n".to_owned());
    std::fs::write(&results, format!("{}{NOTES_MARKER}{kept}", out.markdown))?;
    let svg = out_dir.join("throughput.svg");
    std::fs::write(&svg, &out.svg)?;
    eprintln!("wrote {} and {}", results.display(), svg.display());
    Ok(())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
