//! The circuit breaker: while FPM is unreachable, consumption pauses and FPM is probed with a
//! growing delay; the first probe that connects resumes it.

use ractor::{ActorProcessingErr, ActorRef};
use tracing::{error, info, warn};

use super::subscription::sync_consuming;
use super::{ConsumerMsg, ConsumerState};

/// First and largest delay between FPM probes while the circuit is open.
const PROBE_FIRST: std::time::Duration = std::time::Duration::from_millis(200);
const PROBE_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the circuit: stop taking deliveries while FPM is unreachable, so workers do not burn
/// through the queue. Messages already taken are retried by their workers (an unreachable FPM
/// does not use up attempts); the backlog goes back to the queue.
pub(super) async fn open_circuit(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
) -> Result<(), ActorProcessingErr> {
    warn!(subject = %state.runtime.name, fpm = %state.runtime.config.fpm.address, "No FPM upstream reachable; pausing consumption until one answers");
    state.circuit = Some(PROBE_FIRST);
    myself.send_after(PROBE_FIRST, || ConsumerMsg::Probe);
    sync_consuming(myself, state).await
}

/// While the circuit is open: probe FPM; close it when FPM accepts connections, else back off.
pub(super) async fn probe(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
) -> Result<(), ActorProcessingErr> {
    let Some(delay) = state.circuit else {
        return Ok(());
    };
    if !state
        .runtime
        .upstreams
        .probe(crate::upstreams::Probe::Now)
        .await
    {
        let next = (delay * 2).min(PROBE_MAX);
        state.circuit = Some(next);
        myself.send_after(next, || ConsumerMsg::Probe);
        return Ok(());
    }
    info!(subject = %state.runtime.name, "An FPM upstream answers again; resuming consumption");
    state.circuit = None;
    sync_consuming(myself, state).await
}

/// First and largest pause of a subject whose requests PHP refuses for their signature.
const SIGNATURE_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
const SIGNATURE_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// PHP refused a request's signature (401): the agent's and PHP's secrets differ, which every
/// message would meet. Pause the subject (once per episode; the refused messages were retried
/// without using an attempt) and try again after a growing pause: a message then tests it.
pub(super) async fn signature_rejected(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
) -> Result<(), ActorProcessingErr> {
    if state.signature.paused {
        return Ok(());
    }
    let pause = state
        .signature
        .backoff
        .map_or(SIGNATURE_FIRST, |d| (d * 2).min(SIGNATURE_MAX));
    state.signature.backoff = Some(pause);
    state.signature.paused = true;
    error!(subject = %state.runtime.name, pause = ?pause, "PHP refuses every request for its configuration: a refused signature (401: fpm.signing_secrets and PHP's AGENT_SIGNING_SECRET differ) or the package's own `amqp-agent: …` answer (e.g. no AGENT_SIGNING_SECRET in the pool; the message's x-agent-last-error says which). Pausing the subject; refused messages keep their attempts (docs/endpoint-contract.md)");
    myself.send_after(pause, || ConsumerMsg::SignatureRetry);
    sync_consuming(myself, state).await
}

/// The pause after a refused signature is over: consume again; the next reply says whether
/// the secrets agree now.
pub(super) async fn signature_retry(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
) -> Result<(), ActorProcessingErr> {
    state.signature.paused = false;
    info!(subject = %state.runtime.name, "Trying the signature again after a pause");
    sync_consuming(myself, state).await
}

/// A request went through without a refused signature: the episode is over.
pub(super) fn signature_accepted(state: &mut ConsumerState) {
    if !state.signature.paused && state.signature.backoff.take().is_some() {
        info!(subject = %state.runtime.name, "PHP accepts the agent's signature again");
    }
}
