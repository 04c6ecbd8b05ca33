//! The circuit breaker: while FPM is unreachable, consumption pauses and FPM is probed with a
//! growing delay; the first probe that connects resumes it.

use ractor::{ActorProcessingErr, ActorRef};
use tracing::{info, warn};

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
    if !state.runtime.upstreams.probe(true).await {
        let next = (delay * 2).min(PROBE_MAX);
        state.circuit = Some(next);
        myself.send_after(next, || ConsumerMsg::Probe);
        return Ok(());
    }
    info!(subject = %state.runtime.name, "An FPM upstream answers again; resuming consumption");
    state.circuit = None;
    sync_consuming(myself, state).await
}
