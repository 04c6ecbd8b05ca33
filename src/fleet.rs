//! The fleet protocol: how the agents of one vhost see and steer each other over the broker
//! they already share ([docs/dashboard.md](../docs/dashboard.md#the-fleet)).
//!
//! - Every agent (`admin.fleet = true`) publishes a [`Heartbeat`] every `admin.fleet_interval`
//!   to a fanout exchange, with a message TTL of three intervals, and reads everyone's from a
//!   queue of its own; the [`Roster`] keeps the last heartbeat of each and marks one not heard
//!   for three of its intervals as unreachable (never as healthy), and forgets it after
//!   [`FORGET_MS`].
//! - A [`Command`] goes to one agent (a direct exchange, routing key = its id) and is answered
//!   by a [`Reply`] the same way.
//! - Every message is signed: HMAC-SHA256 with the fleet secret over a domain prefix, the kind
//!   and the JSON body ([`sign`], [`verify`]). An agent with a secret ignores unsigned or
//!   wrongly signed heartbeats and replies, and refuses such commands, as it refuses a command
//!   issued more than [`WINDOW_MS`] away from its clock or one whose id it has already seen
//!   ([`Replays`]): a replayed command is never executed twice.
//!
//! Invariant: pure. The clock is read by the caller and passed in as Unix milliseconds.

use std::collections::{BTreeMap, HashMap};

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Domain separation prefix of the signed bytes.
const DOMAIN: &[u8] = b"amqp-agent.fleet.v1\n";

/// A command issued further than this from the receiver's clock is refused (stale or from the
/// future), and the ids of the commands seen are kept at least this long.
pub const WINDOW_MS: u64 = 60_000;

/// An agent not heard for this long is dropped from the roster.
pub const FORGET_MS: u64 = 5 * 60_000;

/// The AMQP `type` of each kind of fleet message.
pub mod kind {
    /// A [`super::Heartbeat`].
    pub const HEARTBEAT: &str = "heartbeat";
    /// A [`super::Command`].
    pub const COMMAND: &str = "command";
    /// A [`super::Reply`].
    pub const REPLY: &str = "reply";
}

/// One subject of an agent, as its heartbeat shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectSummary {
    /// Queue consumed.
    pub queue: String,
    /// `consuming`, `paused`, `circuit_open` or `disconnected`.
    pub state: String,
    /// When an operator's timed pause ends (RFC 3339), if one runs.
    pub paused_until: Option<String>,
    /// Workers, and those handling a message.
    pub pool_size: u64,
    /// See `pool_size`.
    pub busy: u64,
    /// Deliveries held.
    pub in_flight: u64,
    /// Counters since the agent started.
    pub received: u64,
    /// See `received`.
    pub acked: u64,
    /// See `received`.
    pub retried: u64,
    /// See `received`.
    pub dead_lettered: u64,
}

/// What an agent announces about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The agent's fleet id (`host:pid:random`), its routing key for commands.
    pub agent: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// The agent's version.
    pub version: String,
    /// When it was sent (Unix ms, the sender's clock).
    pub sent_unix_ms: u64,
    /// The sender's `admin.fleet_interval`, in ms.
    pub interval_ms: u64,
    /// Ready (every subject connected, consuming, not paused).
    pub ready: bool,
    /// Per subject.
    pub subjects: BTreeMap<String, SubjectSummary>,
}

/// What one agent asks another to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Pause a subject, for `for_secs` or until resumed.
    Pause {
        /// The subject.
        subject: String,
        /// How long; `None`: until resumed.
        for_secs: Option<u64>,
    },
    /// Resume a subject.
    Resume {
        /// The subject.
        subject: String,
    },
    /// Pin a subject's pool size.
    SetPool {
        /// The subject.
        subject: String,
        /// Workers.
        size: usize,
    },
}

/// A command, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Unique per command: a second one with this id is a replay.
    pub id: String,
    /// The sender's fleet id (where the reply goes).
    pub from: String,
    /// The receiver's fleet id.
    pub to: String,
    /// When it was issued (Unix ms, the sender's clock).
    pub issued_unix_ms: u64,
    /// What to do.
    #[serde(flatten)]
    pub action: Action,
}

/// The answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The command's id.
    pub command: String,
    /// The answering agent's fleet id.
    pub from: String,
    /// Whether it was carried out.
    pub ok: bool,
    /// What happened, or why it was refused.
    pub message: String,
}

/// Why a command was not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No fleet secret here: no command is taken.
    #[error("this agent has no fleet secret (admin.fleet_secret or admin.token)")]
    NoSecret,
    /// The signature is missing or does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Issued too long ago, or in the future.
    #[error("issued more than 60 s from this agent's clock")]
    Stale,
    /// Its id was seen before.
    #[error("replayed (its id was seen before)")]
    Replayed,
    /// Addressed to another agent.
    #[error("addressed to another agent")]
    NotForMe,
}

/// The signature of a fleet message of `kind` with `body`.
#[must_use]
pub fn sign(secret: &[u8], kind: &str, body: &[u8]) -> String {
    hex::encode(mac(secret, kind, body).finalize().into_bytes())
}

/// Whether `signature` (hex) is `secret`'s for `kind` and `body` (constant-time compare).
#[must_use]
pub(crate) fn verify(secret: &[u8], kind: &str, body: &[u8], signature: &str) -> bool {
    let Ok(bytes) = hex::decode(signature) else {
        return false;
    };
    mac(secret, kind, body).verify_slice(&bytes).is_ok()
}

fn mac(secret: &[u8], kind: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(DOMAIN);
    mac.update(kind.as_bytes());
    mac.update(b"\n");
    mac.update(body);
    mac
}

/// The ids of the commands taken, to refuse a replay.
#[derive(Debug, Default)]
pub struct Replays {
    seen: HashMap<String, u64>,
}

impl Replays {
    /// Accepts `command` for `me` at `now_ms` (and remembers its id), or says why not. Call it
    /// only for a command whose signature verified.
    ///
    /// # Errors
    /// [`Refusal::NotForMe`], [`Refusal::Stale`] or [`Refusal::Replayed`].
    pub(crate) fn admit(
        &mut self,
        command: &Command,
        me: &str,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        if command.to != me {
            return Err(Refusal::NotForMe);
        }
        if command.issued_unix_ms.abs_diff(now_ms) > WINDOW_MS {
            return Err(Refusal::Stale);
        }
        // Ids older than twice the window can go: a command that old is refused as stale.
        self.seen
            .retain(|_, issued| now_ms.saturating_sub(*issued) <= 2 * WINDOW_MS);
        if self.seen.contains_key(&command.id) {
            return Err(Refusal::Replayed);
        }
        self.seen.insert(command.id.clone(), command.issued_unix_ms);
        Ok(())
    }
}

/// One agent of the fleet as this one last heard it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Its last heartbeat.
    #[serde(flatten)]
    pub heartbeat: Heartbeat,
    /// Since it was received, in ms.
    pub heard_ms_ago: u64,
    /// Heard within three of its intervals. An unreachable agent's figures are its last known.
    pub reachable: bool,
    /// This agent itself.
    pub me: bool,
}

/// The agents heard from, by id.
#[derive(Debug, Default)]
pub struct Roster {
    agents: BTreeMap<String, (Heartbeat, u64)>,
}

impl Roster {
    /// Records `heartbeat`, received at `now_ms`.
    pub(crate) fn heard(&mut self, heartbeat: Heartbeat, now_ms: u64) {
        self.agents
            .insert(heartbeat.agent.clone(), (heartbeat, now_ms));
    }

    /// The fleet at `now_ms`, `me` marked, agents not heard for [`FORGET_MS`] dropped.
    pub(crate) fn view(&mut self, me: &str, now_ms: u64) -> Vec<Member> {
        self.agents
            .retain(|_, (_, at)| now_ms.saturating_sub(*at) <= FORGET_MS);
        self.agents
            .values()
            .map(|(heartbeat, at)| {
                let ago = now_ms.saturating_sub(*at);
                Member {
                    reachable: ago <= 3 * heartbeat.interval_ms.max(1000),
                    me: heartbeat.agent == me,
                    heard_ms_ago: ago,
                    heartbeat: heartbeat.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"fleet-secret-0123456789";

    fn command(id: &str, to: &str, issued: u64) -> Command {
        Command {
            id: id.to_owned(),
            from: "b".to_owned(),
            to: to.to_owned(),
            issued_unix_ms: issued,
            action: Action::Pause {
                subject: "event".to_owned(),
                for_secs: Some(60),
            },
        }
    }

    fn heartbeat(agent: &str, interval_ms: u64) -> Heartbeat {
        Heartbeat {
            agent: agent.to_owned(),
            host: "h".to_owned(),
            pid: 1,
            version: "0".to_owned(),
            sent_unix_ms: 0,
            interval_ms,
            ready: true,
            subjects: BTreeMap::new(),
        }
    }

    #[test]
    fn a_signature_binds_the_secret_the_kind_and_every_byte() {
        let body = br#"{"id":"1"}"#;
        let sig = sign(KEY, kind::COMMAND, body);
        assert!(verify(KEY, kind::COMMAND, body, &sig));
        assert!(!verify(
            b"another-secret-0123456",
            kind::COMMAND,
            body,
            &sig
        ));
        assert!(
            !verify(KEY, kind::REPLY, body, &sig),
            "a reply cannot pass for a command"
        );
        assert!(!verify(KEY, kind::COMMAND, br#"{"id":"2"}"#, &sig));
        assert!(!verify(KEY, kind::COMMAND, body, "zz"));
        assert!(!verify(KEY, kind::COMMAND, body, ""));
        // A known answer (Python's hmac module, from the docs' description of the bytes).
        assert_eq!(
            sign(b"k", "command", b"{}"),
            "f1b39789249c86a4da1c7ce9b8edea2e3be51de6cae70343431a65e26353a3cd"
        );
    }

    #[test]
    fn a_command_is_taken_once_within_the_window() {
        let mut replays = Replays::default();
        let now = 10_000_000;
        assert_eq!(replays.admit(&command("1", "a", now), "a", now), Ok(()));
        assert_eq!(
            replays.admit(&command("1", "a", now), "a", now + 1),
            Err(Refusal::Replayed)
        );
        assert_eq!(
            replays.admit(&command("2", "c", now), "a", now),
            Err(Refusal::NotForMe)
        );
        assert_eq!(
            replays.admit(&command("3", "a", now - WINDOW_MS - 1), "a", now),
            Err(Refusal::Stale)
        );
        assert_eq!(
            replays.admit(&command("4", "a", now + WINDOW_MS + 1), "a", now),
            Err(Refusal::Stale)
        );
        // Much later, the old id is forgotten, and its command is stale anyway.
        let later = now + 3 * WINDOW_MS;
        assert_eq!(
            replays.admit(&command("1", "a", now), "a", later),
            Err(Refusal::Stale)
        );
        assert!(replays.seen.len() <= 1);
    }

    #[test]
    fn the_wire_form_of_a_command_is_flat_json() {
        let text = serde_json::to_string(&command("1", "a", 5)).unwrap();
        assert_eq!(
            text,
            r#"{"id":"1","from":"b","to":"a","issued_unix_ms":5,"action":"pause","subject":"event","for_secs":60}"#
        );
        let back: Command = serde_json::from_str(&text).unwrap();
        assert_eq!(back, command("1", "a", 5));
        assert!(
            serde_json::from_str::<Command>(
                r#"{"id":"1","from":"b","to":"a","issued_unix_ms":5,"action":"format_disk"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn an_agent_not_heard_for_three_intervals_is_unreachable_then_forgotten() {
        let mut roster = Roster::default();
        roster.heard(heartbeat("a", 5000), 0);
        roster.heard(heartbeat("b", 1000), 0);
        let at = |roster: &mut Roster, now| -> Vec<(String, bool)> {
            roster
                .view("a", now)
                .into_iter()
                .map(|m| (m.heartbeat.agent, m.reachable))
                .collect()
        };
        assert_eq!(
            at(&mut roster, 3000),
            [("a".to_owned(), true), ("b".to_owned(), true)]
        );
        assert_eq!(
            at(&mut roster, 3001),
            [("a".to_owned(), true), ("b".to_owned(), false)]
        );
        assert_eq!(
            at(&mut roster, 15_001),
            [("a".to_owned(), false), ("b".to_owned(), false)]
        );
        assert!(roster.view("a", 1000)[0].me);
        assert!(at(&mut roster, FORGET_MS + 1).is_empty());
    }
}
