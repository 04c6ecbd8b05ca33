//! The faults, injected in turn at a fixed pace while the load runs, each logged with its time
//! (the report explains messages handled twice with them).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::{self, Cluster};
use crate::procs::{Agent, Fpm};
use crate::{Rng, now_us};

/// The order of the faults: the heavy ones (agent killed, FPM children killed, FPM stopped,
/// connections closed, with `--cluster` a cluster node killed) are spread between the light
/// ones.
const TURN: [Fault; 8] = [
    Fault::AgentKill,
    Fault::Sighup,
    Fault::FpmChildren,
    Fault::Admin,
    Fault::Connections,
    Fault::Sigttin,
    Fault::FpmStop,
    Fault::Sigttou,
];
/// With `--cluster`: [`TURN`] and the node fault after the last light one.
const TURN_CLUSTER: [Fault; 9] = [
    Fault::AgentKill,
    Fault::Sighup,
    Fault::FpmChildren,
    Fault::Admin,
    Fault::Connections,
    Fault::Sigttin,
    Fault::FpmStop,
    Fault::Sigttou,
    Fault::ClusterNode,
];

/// How long FPM stays stopped.
const FPM_STOPPED: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    AgentKill,
    FpmChildren,
    FpmStop,
    Connections,
    Sighup,
    Sigttin,
    Sigttou,
    Admin,
    ClusterNode,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Self::AgentKill => "agent kill -9",
            Self::FpmChildren => "FPM children kill -9",
            Self::FpmStop => "FPM stopped",
            Self::Connections => "broker connections closed",
            Self::Sighup => "SIGHUP",
            Self::Sigttin => "SIGTTIN",
            Self::Sigttou => "SIGTTOU",
            Self::Admin => "admin GET /status /metrics",
            Self::ClusterNode => "cluster node kill -9, restarted",
        }
    }

    /// A fault that can make a handled message run again (its outcome or ack lost).
    pub fn can_duplicate(self) -> bool {
        matches!(
            self,
            Self::AgentKill
                | Self::FpmChildren
                | Self::FpmStop
                | Self::Connections
                | Self::Sighup
                | Self::ClusterNode
        )
    }
}

/// One injected fault.
#[derive(Debug, Clone)]
pub struct Event {
    pub fault: Fault,
    pub at_us: u64,
    pub end_us: u64,
    pub target: String,
    /// What happened (pids killed, connections closed, answers) or what failed.
    pub note: String,
    pub ok: bool,
}

#[derive(Debug, Clone, Default)]
pub struct FaultLog(Arc<Mutex<Vec<Event>>>);

impl FaultLog {
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    fn push(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

pub struct Faults {
    rng: Rng,
    interval: Duration,
    log: FaultLog,
    turn: usize,
    /// Per fault, how many times it ran (agent faults alternate between the agents).
    count: [usize; 9],
    /// `--cluster`'s nodes: the node fault is in the rotation.
    cluster: Option<Arc<Cluster>>,
}

impl Faults {
    pub fn new(
        seed: u64,
        interval: Duration,
        log: FaultLog,
        cluster: Option<Arc<Cluster>>,
    ) -> Self {
        Self {
            rng: Rng::new(seed ^ 0xD1B5_4A32_D192_ED03),
            interval,
            log,
            turn: 0,
            count: [0; 9],
            cluster,
        }
    }

    fn turn(&self) -> &'static [Fault] {
        if self.cluster.is_some() {
            &TURN_CLUSTER
        } else {
            &TURN
        }
    }

    /// Injects one fault every `interval` until `deadline`; meanwhile restarts an agent that
    /// died on its own and samples the agents' RSS (every 10 s and at each `window` boundary).
    pub async fn run(
        &mut self,
        agents: &mut [Agent],
        fpm: &mut Fpm,
        deadline: Instant,
        window: Duration,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let sample_every = window.min(Duration::from_secs(10));
        let mut next_sample = started + sample_every;
        let mut next_fault = started + self.interval;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            for agent in agents.iter_mut() {
                if !agent.alive() {
                    eprintln!(
                        "  agent {} died on its own; restarting it:\n{}",
                        agent.name,
                        agent.log_tail()
                    );
                    agent.ensure_running().await?;
                }
            }
            if Instant::now() >= next_sample {
                for agent in agents.iter_mut() {
                    agent.sample_rss();
                }
                next_sample += sample_every;
            }
            if Instant::now() >= next_fault && Instant::now() < deadline {
                let turn = self.turn();
                let fault = turn[self.turn % turn.len()];
                self.turn += 1;
                self.inject(fault, agents, fpm).await;
                next_fault = Instant::now() + self.interval;
            }
        }
        Ok(())
    }

    async fn inject(&mut self, fault: Fault, agents: &mut [Agent], fpm: &mut Fpm) {
        let nth = self.count[fault as usize];
        self.count[fault as usize] += 1;
        let agent = &mut agents[nth % 2];
        let at_us = now_us();
        let (target, result) = match fault {
            Fault::AgentKill => {
                let old = agent.pid;
                let r = agent.kill_and_restart().await;
                (
                    format!("agent {}", agent.name),
                    r.map(|()| format!("pid {old} killed, pid {} ready", agent.pid)),
                )
            }
            Fault::FpmChildren => {
                let n = 3;
                let killed = fpm.kill_children(n, &mut self.rng);
                ("php-fpm".into(), Ok(format!("children {killed:?} killed")))
            }
            Fault::FpmStop => {
                fpm.stop().await;
                // The soak's pacing: FPM stays down this long, then starts on the same port.
                tokio::time::sleep(FPM_STOPPED).await;
                let r = fpm.ensure_running();
                (
                    "php-fpm".into(),
                    r.map(|()| format!("down {} s, restarted", FPM_STOPPED.as_secs())),
                )
            }
            Fault::Connections => {
                // Agent b's connections are on the soak's cluster with `--cluster`.
                let node = match &self.cluster {
                    Some(c) if agent.on_cluster => cluster::live_node(c),
                    _ => None,
                };
                (
                    format!("agent {}", agent.name),
                    close_connections(agent.pid, node.as_deref()).await,
                )
            }
            Fault::ClusterNode => match self.cluster.clone() {
                Some(c) => {
                    // The node agent b's subject (event, then command, in turn) consumes from:
                    // its connection breaks and a quorum queue may lose its leader. Else any.
                    let subject = ["event", "command"][nth % 2];
                    let port = match agents.iter().find(|a| a.on_cluster) {
                        Some(b) => b.node_port(subject).await,
                        None => None,
                    };
                    let i = port
                        .and_then(|p| c.by_port(p))
                        .unwrap_or(nth % c.nodes.len());
                    let how = if port.is_some() {
                        format!(" (agent b's {subject} node)")
                    } else {
                        String::new()
                    };
                    (
                        format!("cluster node {i}{how}"),
                        cluster::kill_and_restart(&c, i).await,
                    )
                }
                None => ("cluster".into(), Err(anyhow::anyhow!("no --cluster"))),
            },
            Fault::Sighup => (
                format!("agent {}", agent.name),
                agent
                    .reload()
                    .map(|()| "batch_wait switched, SIGHUP".into()),
            ),
            Fault::Sigttin => {
                agent.signal(libc::SIGTTIN);
                (format!("agent {}", agent.name), Ok(String::new()))
            }
            Fault::Sigttou => {
                agent.signal(libc::SIGTTOU);
                (format!("agent {}", agent.name), Ok(String::new()))
            }
            Fault::Admin => {
                let mut answers = Vec::new();
                let mut ok = true;
                for agent in agents.iter() {
                    for path in ["/status", "/metrics"] {
                        match agent.get(path).await {
                            Ok((status, body)) => {
                                ok &= status == 200;
                                answers.push(format!(
                                    "{} {path} {status} ({} bytes)",
                                    agent.name,
                                    body.len()
                                ));
                            }
                            Err(e) => {
                                ok = false;
                                answers.push(format!("{} {path}: {e:#}", agent.name));
                            }
                        }
                    }
                }
                let note = answers.join(", ");
                (
                    "both agents".into(),
                    if ok {
                        Ok(note)
                    } else {
                        Err(anyhow::anyhow!(note))
                    },
                )
            }
        };
        let (ok, note) = match result {
            Ok(note) => (true, note),
            Err(e) => (false, format!("FAILED: {e:#}")),
        };
        eprintln!("  fault: {} on {target}: {note}", fault.name());
        self.log.push(Event {
            fault,
            at_us,
            end_us: now_us(),
            target,
            note,
            ok,
        });
    }
}

/// Closes, through `rabbitmqctl` (`-n node`, for the soak's cluster), every broker connection
/// of the agent process `pid` (the agent names them `amqp-agent <role> (pid N)`); the soak's own
/// connections stay.
async fn close_connections(pid: u32, node: Option<&str>) -> anyhow::Result<String> {
    // `client_properties` holds `{"connection_name",longstr,"amqp-agent … (pid N)"}` (the info
    // key `user_provided_name` is not known to every RabbitMQ version).
    let target: Vec<&str> = node.map(|n| vec!["-n", n]).unwrap_or_default();
    let list = [
        &target[..],
        &["-q", "list_connections", "pid", "client_properties"],
    ]
    .concat();
    let out = rabbitmqctl(&list).await?;
    let needle = format!("(pid {pid})");
    let mut closed = 0;
    for line in out.lines().filter(|l| l.contains(&needle)) {
        let Some(conn) = line.split('\t').next() else {
            continue;
        };
        let close = [
            &target[..],
            &["-q", "close_connection", conn, "soak: connection closed"],
        ]
        .concat();
        rabbitmqctl(&close).await?;
        closed += 1;
    }
    anyhow::ensure!(closed > 0, "no connection named {needle}");
    Ok(format!("{closed} connections closed"))
}

async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("rabbitmqctl")
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("rabbitmqctl {args:?} took over 60 s"))??;
    anyhow::ensure!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
