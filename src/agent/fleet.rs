//! The agent's side of the fleet ([`crate::fleet`]): one task keeps the link to the broker
//! (reopened with a backoff when lost), announces the agent every `admin.fleet_interval`, keeps
//! the roster, carries out the commands other agents send it, and sends this agent's commands
//! and waits for their replies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::AgentHandle;
use crate::broker::fleet::{Link, Received};
use crate::fleet::{
    Action, Command, Heartbeat, Member, Refusal, Replays, Reply, Roster, SubjectSummary, kind,
    sign, verify,
};

/// How long a command waits for its reply.
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The fleet as this agent sees it, and its outbox.
pub struct Fleet {
    me: String,
    key: Option<Vec<u8>>,
    roster: Mutex<Roster>,
    replays: Mutex<Replays>,
    pending: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
    outbox: mpsc::UnboundedSender<Outgoing>,
    connected: AtomicBool,
}

/// A fleet message to publish: to agent `to`, of the kind the body is.
type Outgoing = (String, Vec<u8>);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// This process's fleet id: `host:pid:random`.
fn fleet_id() -> (String, String) {
    let host = host_name();
    let id = format!(
        "{host}:{}:{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    (host, id)
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_owned();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl Fleet {
    /// This agent's fleet id.
    #[must_use]
    pub(crate) fn me(&self) -> &str {
        &self.me
    }

    /// Whether the link to the broker is up.
    #[must_use]
    pub(crate) fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Every agent heard from (this one included once its first heartbeat came back).
    #[must_use]
    pub(crate) fn members(&self) -> Vec<Member> {
        self.roster
            .lock()
            .expect("roster lock")
            .view(&self.me, now_ms())
    }

    /// Sends `action` to agent `to` and waits for its reply.
    ///
    /// # Errors
    /// Without a fleet secret, when the link is down, or when no reply came within
    /// [`REPLY_TIMEOUT`].
    pub(crate) async fn command(&self, to: &str, action: Action) -> anyhow::Result<Reply> {
        if self.key.is_none() {
            anyhow::bail!("{}", Refusal::NoSecret);
        }
        let command = Command {
            id: uuid::Uuid::new_v4().to_string(),
            from: self.me.clone(),
            to: to.to_owned(),
            issued_unix_ms: now_ms(),
            action,
        };
        let body = serde_json::to_vec(&command)?;
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("pending lock")
            .insert(command.id.clone(), tx);
        if self.outbox.send((to.to_owned(), body)).is_err() {
            anyhow::bail!("the fleet link is not running");
        }
        let reply = tokio::time::timeout(REPLY_TIMEOUT, rx).await;
        self.pending
            .lock()
            .expect("pending lock")
            .remove(&command.id);
        match reply {
            Ok(Ok(reply)) => Ok(reply),
            _ => anyhow::bail!(
                "no reply from {to} within {}s (unreachable, or it refused the command: see its log)",
                REPLY_TIMEOUT.as_secs()
            ),
        }
    }

    /// The signature of `body` as a message of `kind`, when there is a key.
    fn signature(&self, kind: &str, body: &[u8]) -> Option<String> {
        self.key.as_deref().map(|key| sign(key, kind, body))
    }

    /// Whether a received message's signature is acceptable: verified with the key, or any
    /// (none) when this agent has no key.
    fn authentic(&self, message: &Received) -> bool {
        match (&self.key, &message.signature) {
            (None, _) => true,
            (Some(key), Some(sig)) => verify(key, &message.kind, &message.body, sig),
            (Some(_), None) => false,
        }
    }
}

/// Starts the fleet task of `agent`; `None` when `admin.fleet` is off.
pub(super) fn start(agent: &AgentHandle) -> Option<(Arc<Fleet>, tokio::task::JoinHandle<()>)> {
    let config = agent.config();
    if !config.admin.fleet {
        return None;
    }
    let (host, me) = fleet_id();
    let (outbox, rx) = mpsc::unbounded_channel();
    let fleet = Arc::new(Fleet {
        me,
        key: config.admin.fleet_key().map(|k| k.as_bytes().to_vec()),
        roster: Mutex::default(),
        replays: Mutex::default(),
        pending: Mutex::default(),
        outbox,
        connected: AtomicBool::new(false),
    });
    if fleet.key.is_none() {
        warn!(
            "admin.fleet is on without admin.fleet_secret or admin.token: heartbeats go unsigned and commands from other agents are refused"
        );
    }
    let task = tokio::spawn(run(agent.clone(), fleet.clone(), host, rx));
    Some((fleet, task))
}

/// The link's life: (re)open, announce, listen, send; a lost link is reopened after a backoff.
async fn run(
    agent: AgentHandle,
    fleet: Arc<Fleet>,
    host: String,
    mut outbox: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let config = agent.config();
        let mut link = match Link::open(&config, &fleet.me).await {
            Ok(link) => link,
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "Fleet link: cannot open it");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        info!(agent = %fleet.me, "Fleet link open: announcing this agent");
        fleet.connected.store(true, Ordering::Relaxed);
        backoff = Duration::from_secs(1);
        let mut tick = tokio::time::interval(config.admin.fleet_interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let heartbeat = heartbeat(&agent, &fleet, &host);
                    let body = serde_json::to_vec(&heartbeat).unwrap_or_default();
                    let sig = fleet.signature(kind::HEARTBEAT, &body);
                    // Expires after three intervals: a dead agent's last word does not linger.
                    let ttl = Some(3 * heartbeat.interval_ms);
                    if link.publish(kind::HEARTBEAT, None, &body, sig.as_deref(), ttl).await.is_err() {
                        break;
                    }
                }
                Some((to, body)) = outbox.recv() => {
                    let sig = fleet.signature(kind::COMMAND, &body);
                    if link.publish(kind::COMMAND, Some(&to), &body, sig.as_deref(), None).await.is_err() {
                        break;
                    }
                }
                received = link.next() => {
                    let Some(message) = received else { break };
                    if let Some((to, reply)) = on_message(&agent, &fleet, &message).await {
                        let body = serde_json::to_vec(&reply).unwrap_or_default();
                        let sig = fleet.signature(kind::REPLY, &body);
                        let _ = link.publish(kind::REPLY, Some(&to), &body, sig.as_deref(), None).await;
                    }
                }
            }
        }
        fleet.connected.store(false, Ordering::Relaxed);
        warn!("Fleet link lost; reopening it");
        link.close().await;
    }
}

fn heartbeat(agent: &AgentHandle, fleet: &Fleet, host: &str) -> Heartbeat {
    let status = agent.status();
    let config = agent.config();
    Heartbeat {
        agent: fleet.me.clone(),
        host: host.to_owned(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        sent_unix_ms: now_ms(),
        interval_ms: u64::try_from(config.admin.fleet_interval.as_millis()).unwrap_or(5000),
        ready: status.ready,
        subjects: status
            .subjects
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    SubjectSummary {
                        queue: s.queue.clone(),
                        state: s.state.to_owned(),
                        paused_until: s.paused_until.clone(),
                        pool_size: s.stats.pool_size,
                        busy: s.stats.busy,
                        in_flight: s.stats.in_flight,
                        received: s.stats.received,
                        acked: s.stats.acked,
                        retried: s.stats.retried,
                        dead_lettered: s.stats.dead_lettered,
                    },
                )
            })
            .collect(),
    }
}

/// Acts on one received message; a command's reply is returned to be sent to its sender.
async fn on_message(
    agent: &AgentHandle,
    fleet: &Fleet,
    message: &Received,
) -> Option<(String, Reply)> {
    let authentic = fleet.authentic(message);
    match message.kind.as_str() {
        kind::HEARTBEAT if authentic => {
            if let Ok(heartbeat) = serde_json::from_slice::<Heartbeat>(&message.body) {
                fleet
                    .roster
                    .lock()
                    .expect("roster lock")
                    .heard(heartbeat, now_ms());
            }
            None
        }
        kind::REPLY if authentic => {
            if let Ok(reply) = serde_json::from_slice::<Reply>(&message.body)
                && let Some(waiter) = fleet
                    .pending
                    .lock()
                    .expect("pending lock")
                    .remove(&reply.command)
            {
                let _ = waiter.send(reply);
            }
            None
        }
        kind::COMMAND => {
            let Ok(command) = serde_json::from_slice::<Command>(&message.body) else {
                warn!("Fleet: a command that does not parse was ignored");
                return None;
            };
            let refused = if fleet.key.is_none() {
                Some(Refusal::NoSecret)
            } else if !authentic {
                Some(Refusal::BadSignature)
            } else {
                fleet
                    .replays
                    .lock()
                    .expect("replays lock")
                    .admit(&command, &fleet.me, now_ms())
                    .err()
            };
            if let Some(refusal) = refused {
                warn!(
                    command = %crate::printable::printable(&command.id),
                    from = %crate::printable::printable(&command.from),
                    reason = %refusal,
                    "Fleet: command refused"
                );
                // A forged command gets no answer: its sender could not read it anyway.
                return (refusal != Refusal::BadSignature && refusal != Refusal::NotForMe).then(
                    || {
                        (
                            command.from.clone(),
                            Reply {
                                command: command.id.clone(),
                                from: fleet.me.clone(),
                                ok: false,
                                message: format!("refused: {refusal}"),
                            },
                        )
                    },
                );
            }
            let (ok, text) = execute(agent, &command.action);
            info!(
                command = %command.id,
                from = %crate::printable::printable(&command.from),
                ok,
                result = %text,
                "Fleet: command from another agent"
            );
            Some((
                command.from.clone(),
                Reply {
                    command: command.id,
                    from: fleet.me.clone(),
                    ok,
                    message: text,
                },
            ))
        }
        _ => {
            warn!(
                kind = %crate::printable::printable(&message.kind),
                "Fleet: a message without a valid signature was ignored"
            );
            None
        }
    }
}

fn execute(agent: &AgentHandle, action: &Action) -> (bool, String) {
    let result = match action {
        Action::Pause {
            subject,
            for_secs: Some(secs),
        } => agent
            .pause_for(subject, Duration::from_secs(*secs))
            .map(|()| format!("{subject}: paused for {secs}s")),
        Action::Pause {
            subject,
            for_secs: None,
        } => agent
            .set_paused(subject, true)
            .map(|()| format!("{subject}: paused")),
        Action::Resume { subject } => agent
            .set_paused(subject, false)
            .map(|()| format!("{subject}: resumed")),
        Action::SetPool { subject, size } => agent
            .set_pool(subject, *size)
            .map(|n| format!("{subject}: pool set to {n}")),
    };
    match result {
        Ok(text) => (true, text),
        Err(e) => (false, e.to_string()),
    }
}
