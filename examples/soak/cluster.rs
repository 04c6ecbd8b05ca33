//! `--cluster`: a 3-node RabbitMQ cluster of the soak's own, for the quorum lanes. The nodes
//! are built exactly as tests/it/cluster.rs builds its cluster: the test harness's
//! `tests/it/common/cluster.rs` is compiled in here (own node names `soak<i>-<pid>@localhost`,
//! own AMQP and distribution ports, data and log directories under the temp dir, the installed
//! `rabbitmq-server` run as the `rabbitmq` user; no Docker). The machine's own node on 5672 is
//! never touched. Dropping the [`Cluster`] kills its nodes and removes their directories.
//!
//! The node fault (`faults::Fault::ClusterNode`) runs here: `kill -9` of one node's Erlang VM,
//! a few seconds down, then the node started again on its data directory (it rejoins).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

#[allow(dead_code)]
#[path = "../../tests/it/common/cluster.rs"]
mod nodes;

pub use nodes::Cluster;

/// How long a killed node stays down before it is started again.
pub const NODE_DOWN: Duration = Duration::from_secs(5);

/// What `tests/it/common/cluster.rs` takes from its parent module.
fn free_port() -> u16 {
    crate::os::free_port().expect("a free port")
}

/// What `tests/it/common/cluster.rs` takes from its parent module.
fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(crate::POLL);
    }
}

/// Starts the 3 nodes and joins them (blocking: a minute or two on a busy machine).
pub fn start() -> anyhow::Result<Arc<Cluster>> {
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "--cluster needs root: the nodes run as the rabbitmq user (su rabbitmq), as in tests/it/cluster.rs"
    );
    std::panic::catch_unwind(|| Arc::new(Cluster::start(3, "soak"))).map_err(|p| {
        anyhow::anyhow!(
            "the soak's RabbitMQ cluster did not start: {}",
            panic_text(&p)
        )
    })
}

/// Whether node `i`'s Erlang VM runs.
pub fn node_up(cluster: &Cluster, i: usize) -> bool {
    cluster.nodes[i]
        .pid()
        .is_some_and(|p| unsafe { libc::kill(p, 0) } == 0)
}

/// The name of a node that runs (for `rabbitmqctl -n`).
pub fn live_node(cluster: &Cluster) -> Option<String> {
    (0..cluster.nodes.len())
        .find(|i| node_up(cluster, *i))
        .map(|i| cluster.nodes[i].name.clone())
}

/// kill -9 of node `i`, [`NODE_DOWN`] down, then started again and waited for (off the
/// runtime's thread: the load goes on meanwhile). Before it, a node that is still down (a
/// restart that failed) is started instead of killing another one: a quorum of 2 of 3 is kept.
pub async fn kill_and_restart(cluster: &Arc<Cluster>, i: usize) -> anyhow::Result<String> {
    if let Some(down) = (0..cluster.nodes.len()).find(|n| !node_up(cluster, *n)) {
        blocking(cluster, move |c| c.restart(down)).await?;
        anyhow::bail!("node {down} was still down: started it instead of killing node {i}");
    }
    let name = cluster.nodes[i].name.clone();
    let started = Instant::now();
    blocking(cluster, move |c| c.kill(i)).await?;
    tokio::time::sleep(NODE_DOWN).await;
    blocking(cluster, move |c| c.restart(i))
        .await
        .with_context(|| format!("restarting node {i}"))?;
    Ok(format!(
        "node {i} ({name}) killed, down {} s, running again after {:.1} s",
        NODE_DOWN.as_secs(),
        started.elapsed().as_secs_f64()
    ))
}

/// Starts every node that is down (before the drain).
pub async fn ensure_running(cluster: &Arc<Cluster>) -> anyhow::Result<()> {
    for i in 0..cluster.nodes.len() {
        if !node_up(cluster, i) {
            blocking(cluster, move |c| c.restart(i)).await?;
        }
    }
    Ok(())
}

/// Runs `f` (which may block for a minute, and panics on failure) on a blocking thread.
async fn blocking(
    cluster: &Arc<Cluster>,
    f: impl FnOnce(&Cluster) + Send + 'static,
) -> anyhow::Result<()> {
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&cluster)))
            .map_err(|p| anyhow::anyhow!("{}", panic_text(&p)))
    })
    .await
    .context("cluster task")?
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".into())
}
