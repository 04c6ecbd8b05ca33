//! Which of a delivery's agent state headers the agent may believe.
//!
//! `x-agent-attempt`, `x-agent-original-exchange` and `x-agent-original-routing-key` steer the
//! retry count and what PHP is told about the route, and any publisher can set them. The agent
//! therefore believes them only when it set them itself:
//!
//! - With signing secrets (`fpm.signing_secrets`), every retry and dead-letter copy carries
//!   `x-agent-seal`: an HMAC (first secret; any configured secret verifies) over the queue, the
//!   message id, the three headers and the SHA-256 of the body. Nothing else is trusted.
//! - Without secrets there is no key, and the weaker check is used: the newest `x-death` entry
//!   must say the message expired in one of this queue's delay queues. RabbitMQ 3.10 (tested)
//!   passes a publisher's own `x-death` through unchanged, so this only stops accidental copies.
//!
//! Invariant: untrusted state is ignored as a whole (attempt 1, the delivery's own exchange and
//! routing key), never partly believed.

use hmac::{Hmac, KeyInit, Mac};
use lapin::types::{AMQPValue, FieldTable, LongString};
use sha2::{Digest, Sha256};

use crate::contract::{
    self, ATTEMPT_HEADER, ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER,
};
use crate::signature::length_prefixed;

/// AMQP header of the agent's seal over its state headers.
pub(crate) const SEAL_HEADER: &str = "x-agent-seal";

/// Domain separation prefix of the seal.
const SEAL_PREFIX: &[u8] = b"amqp-agent.seal.v1";

/// The agent's state of a delivery, as far as it can be believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AgentState<'a> {
    /// 1-based attempt number.
    pub attempt: u32,
    /// Exchange the message was first published to, when the agent recorded it.
    pub original_exchange: Option<&'a str>,
    /// Routing key the message was first published with, when the agent recorded it.
    pub original_routing_key: Option<&'a str>,
}

impl AgentState<'_> {
    /// A first delivery: attempt 1, its own route.
    pub(crate) const FIRST: AgentState<'static> = AgentState {
        attempt: 1,
        original_exchange: None,
        original_routing_key: None,
    };
}

/// What identifies the message a seal is bound to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Binding<'a> {
    /// The subject's queue.
    pub queue: &'a str,
    /// The AMQP `message_id` (empty when none).
    pub message_id: &'a str,
    /// The body.
    pub body: &'a [u8],
}

/// Why a delivery's state headers were ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Untrusted {
    /// No seal, or one that does not verify.
    BadSeal,
    /// No secrets, and the newest `x-death` entry is not an expiry in this queue's delay queue.
    NotFromDelayQueue,
    /// A state header has a value the agent never writes (the raw value, for the log).
    Malformed(String),
}

impl Untrusted {
    /// Short reason for the log.
    #[must_use]
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::BadSeal => "no valid x-agent-seal",
            Self::NotFromDelayQueue => "not returned by the agent's delay queue (x-death)",
            Self::Malformed(_) => "malformed value",
        }
    }
}

/// Reads the agent state of a delivery: [`AgentState::FIRST`] plus the reason when its state
/// headers cannot be believed.
#[must_use]
pub(crate) fn read<'a>(
    headers: Option<&'a FieldTable>,
    secrets: &[String],
    binding: &Binding<'_>,
) -> (AgentState<'a>, Option<Untrusted>) {
    let Some(h) = headers else {
        return (AgentState::FIRST, None);
    };
    let present = |name: &str| h.inner().contains_key(name);
    if !present(ATTEMPT_HEADER)
        && !present(ORIGINAL_EXCHANGE_HEADER)
        && !present(ORIGINAL_ROUTING_KEY_HEADER)
    {
        return (AgentState::FIRST, None);
    }
    let state = match claimed(h) {
        Ok(state) => state,
        Err(raw) => return (AgentState::FIRST, Some(Untrusted::Malformed(raw))),
    };
    let trusted = if secrets.is_empty() {
        returned_from_delay_queue(h, binding.queue)
            .then_some(())
            .ok_or(Untrusted::NotFromDelayQueue)
    } else {
        let seal = contract::string_header(headers, SEAL_HEADER).and_then(|s| hex::decode(s).ok());
        let valid = seal.is_some_and(|seal| {
            secrets.iter().any(|secret| {
                mac(secret.as_bytes(), binding, h)
                    .verify_slice(&seal)
                    .is_ok()
            })
        });
        valid.then_some(()).ok_or(Untrusted::BadSeal)
    };
    match trusted {
        Ok(()) => (state, None),
        Err(why) => (AgentState::FIRST, Some(why)),
    }
}

/// Seals the state headers of a copy the agent publishes (retry, dead letter, replay): sets
/// [`SEAL_HEADER`] from the first secret, or removes it when there is none.
pub(crate) fn seal(headers: &mut FieldTable, secrets: &[String], binding: &Binding<'_>) {
    let Some(secret) = secrets.first() else {
        if headers.contains_key(SEAL_HEADER) {
            let mut kept = headers.inner().clone();
            kept.retain(|name, _| name.as_str() != SEAL_HEADER);
            *headers = FieldTable::from(kept);
        }
        return;
    };
    let tag = hex::encode(
        mac(secret.as_bytes(), binding, headers)
            .finalize()
            .into_bytes(),
    );
    headers.insert(
        SEAL_HEADER.into(),
        AMQPValue::LongString(LongString::from(tag.into_bytes())),
    );
}

/// The state the headers claim, unverified.
fn claimed(h: &FieldTable) -> Result<AgentState<'_>, String> {
    let table = Some(h);
    let text = |name: &str| match h.inner().get(name) {
        None => Ok(None),
        Some(value) => contract::string_header(table, name)
            .map(Some)
            .ok_or_else(|| format!("{name} = {value:?}")),
    };
    let attempt =
        contract::attempt_from_headers(table).map_err(|raw| format!("{ATTEMPT_HEADER} = {raw}"))?;
    Ok(AgentState {
        attempt,
        original_exchange: text(ORIGINAL_EXCHANGE_HEADER)?,
        original_routing_key: text(ORIGINAL_ROUTING_KEY_HEADER)?,
    })
}

fn mac(secret: &[u8], binding: &Binding<'_>, h: &FieldTable) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("any key length");
    m.update(SEAL_PREFIX);
    length_prefixed(&mut m, binding.queue.as_bytes());
    length_prefixed(&mut m, binding.message_id.as_bytes());
    let table = Some(h);
    // Absent is empty; present is `=` and the value, so absent and empty differ.
    let attempt = h
        .inner()
        .contains_key(ATTEMPT_HEADER)
        .then(|| contract::attempt_from_headers(table).map_or(0, |n| n));
    let optional = |m: &mut Hmac<Sha256>, value: Option<&[u8]>| match value {
        None => length_prefixed(m, b""),
        Some(v) => length_prefixed(m, &[b"=", v].concat()),
    };
    optional(
        &mut m,
        attempt.map(|n| n.to_string()).as_deref().map(str::as_bytes),
    );
    for name in [ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER] {
        optional(
            &mut m,
            contract::string_header(table, name).map(str::as_bytes),
        );
    }
    length_prefixed(&mut m, &Sha256::digest(binding.body));
    m
}

/// True when the newest `x-death` entry is an expiry in one of `queue`'s delay queues.
fn returned_from_delay_queue(h: &FieldTable, queue: &str) -> bool {
    let Some(AMQPValue::FieldArray(deaths)) = h.inner().get("x-death") else {
        return false;
    };
    let Some(AMQPValue::FieldTable(newest)) = deaths.as_slice().first() else {
        return false;
    };
    let newest = Some(newest);
    let from = contract::string_header(newest, "queue").unwrap_or_default();
    let is_delay_queue = from
        .strip_prefix(queue)
        .and_then(|rest| rest.strip_prefix(".retry."))
        .and_then(|rest| rest.strip_suffix("ms"))
        .is_some_and(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()));
    is_delay_queue && contract::string_header(newest, "reason") == Some("expired")
}

#[cfg(test)]
mod tests;
