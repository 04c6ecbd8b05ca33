//! A RabbitMQ cluster of its own: N nodes started from the installed `rabbitmq-server`, each
//! with its own node name, AMQP and distribution ports, data and log directories, sharing the
//! machine's Erlang cookie (run as the `rabbitmq` user with its HOME). The machine's own node on
//! 5672 is never touched. Dropping the [`Cluster`] kills its nodes and removes their
//! directories, on a failed test too.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// One node of the test cluster.
pub struct Node {
    pub name: String,
    pub amqp_port: u16,
    pub dist_port: u16,
    pub dir: PathBuf,
    /// Extra lines for the node's rabbitmq.conf (e.g. a TLS listener).
    pub extra_conf: String,
}

impl Node {
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("node.pid")
    }

    /// The Erlang VM's pid, once the node wrote it.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    fn start(&self) {
        let conf = self.dir.join("rabbitmq.conf");
        // guest may log in from loopback only, which is where the tests are.
        std::fs::write(
            &conf,
            format!(
                "listeners.tcp.local = 127.0.0.1:{}\nloopback_users = none\n{}",
                self.amqp_port, self.extra_conf
            ),
        )
        .unwrap();
        let env_file = self.dir.join("rabbitmq-env.conf");
        std::fs::write(
            &env_file,
            "ERL_EPMD_ADDRESS=127.0.0.1\nexport ERL_FLAGS=\"-kernel inet_dist_use_interface {127,0,0,1}\"\n",
        )
        .unwrap();
        std::fs::write(self.dir.join("enabled_plugins"), "[].\n").unwrap();
        // RabbitMQ before 3.12.5: a quorum queue's at-least-once dead-letter worker whose first
        // forward fails (it asks the target queue's old leader, on a dead node) retries only
        // after this timeout, 180 s by default. docs/running-at-scale.md recommends the same.
        std::fs::write(
            self.dir.join("advanced.config"),
            "[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 5000}]}].\n",
        )
        .unwrap();
        let script = format!(
            "HOME=/var/lib/rabbitmq RABBITMQ_NODENAME={name} RABBITMQ_DIST_PORT={dist} \
             RABBITMQ_MNESIA_BASE={dir}/mnesia RABBITMQ_LOG_BASE={dir}/log \
             RABBITMQ_PID_FILE={dir}/node.pid RABBITMQ_CONFIG_FILE={dir}/rabbitmq.conf \
             RABBITMQ_ADVANCED_CONFIG_FILE={dir}/advanced.config \
             RABBITMQ_CONF_ENV_FILE={dir}/rabbitmq-env.conf \
             RABBITMQ_ENABLED_PLUGINS_FILE={dir}/enabled_plugins \
             /usr/lib/rabbitmq/bin/rabbitmq-server -detached",
            name = self.name,
            dist = self.dist_port,
            dir = self.dir.display(),
        );
        let status = Command::new("su")
            .args(["rabbitmq", "-s", "/bin/sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("su rabbitmq");
        assert!(
            status.success(),
            "rabbitmq-server -detached for {}",
            self.name
        );
    }

    /// Waits until the node runs its RabbitMQ application.
    fn await_startup(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = ctl(&self.name, &["await_startup", "--timeout", "10"]).0;
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not start within {timeout:?} (logs in {})",
                self.name,
                self.dir.display()
            );
        }
    }

    /// `kill -9` the node's Erlang VM.
    pub fn kill(&self) {
        if let Some(pid) = self.pid() {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Runs `rabbitmqctl -n node args`; (success, output).
pub fn ctl(node: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("rabbitmqctl")
        .arg("-n")
        .arg(node)
        .args(args)
        .output()
        .expect("rabbitmqctl");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The test cluster. Dropping it stops and removes every node.
pub struct Cluster {
    pub nodes: Vec<Node>,
    root: PathBuf,
}

impl Cluster {
    /// Starts `n` nodes and joins them into one cluster.
    pub fn start(n: usize, tag: &str) -> Self {
        Self::start_with(n, tag, |_| String::new())
    }

    /// As [`Cluster::start`], with extra rabbitmq.conf lines per node index.
    pub fn start_with(n: usize, tag: &str, extra: impl Fn(usize) -> String) -> Self {
        let root = std::env::temp_dir().join(format!("amqp-agent-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let dir = root.join(format!("n{i}"));
                std::fs::create_dir_all(dir.join("log")).unwrap();
                Node {
                    name: format!("{tag}{i}-{}@localhost", std::process::id()),
                    amqp_port: free_port(),
                    dist_port: free_port(),
                    dir,
                    extra_conf: extra(i),
                }
            })
            .collect();
        let cluster = Self { nodes, root };
        chown_rabbitmq(&cluster.root);
        for node in &cluster.nodes {
            node.start();
        }
        for node in &cluster.nodes {
            node.await_startup(Duration::from_secs(120));
        }
        let first = cluster.nodes[0].name.clone();
        for node in &cluster.nodes[1..] {
            for args in [
                vec!["stop_app"],
                vec!["join_cluster", first.as_str()],
                vec!["start_app"],
            ] {
                let (ok, out) = ctl(&node.name, &args);
                assert!(ok, "rabbitmqctl -n {} {args:?}: {out}", node.name);
            }
        }
        cluster
    }

    /// Every node's URL, in node order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// The index of the node listening on `port`.
    pub fn by_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.amqp_port == port)
    }

    /// Kills node `i` (kill -9) and waits until its VM is gone.
    pub fn kill(&self, i: usize) {
        let node = &self.nodes[i];
        let pid = node.pid().expect("node pid");
        node.kill();
        super::wait_until(Duration::from_secs(30), "killed node exits", || unsafe {
            libc::kill(pid, 0) != 0
        });
    }

    /// Starts node `i` again (after [`Cluster::kill`]); it rejoins with its data directory.
    pub fn restart(&self, i: usize) {
        let node = &self.nodes[i];
        let _ = std::fs::remove_file(node.pid_file());
        node.start();
        node.await_startup(Duration::from_secs(120));
    }

    /// Leader node name of a quorum queue (`rabbitmq-queues quorum_status` is costly; this reads
    /// `list_queues leader`).
    pub fn leader_of(&self, queue: &str) -> Option<usize> {
        let alive = self
            .nodes
            .iter()
            .find(|n| n.pid().is_some_and(|p| unsafe { libc::kill(p, 0) == 0 }))?;
        let (_, out) = ctl(
            &alive.name,
            &["list_queues", "-q", "--no-table-headers", "name", "leader"],
        );
        let leader = out
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(name, _)| *name == queue)?
            .1
            .trim()
            .to_owned();
        self.nodes.iter().position(|n| n.name == leader)
    }
}

fn chown_rabbitmq(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", "rabbitmq:rabbitmq"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.kill();
        }
        // Forget the node names in epmd is automatic once the VMs are gone.
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
