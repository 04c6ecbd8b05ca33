//! The subscription: `basic.qos` and `basic.consume` following the pool and the pause state,
//! the forwarder task that moves deliveries into the mailbox, and the end of its stream.

use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use ractor::{ActorProcessingErr, ActorRef};

use super::{ConsumerMsg, ConsumerState, requeue};
use crate::actors::exit::ConnectionLost;

/// Consumes when nothing says not to (draining, open circuit, operator pause), and reflects
/// the state in the `paused` gauge.
pub(super) async fn sync_consuming(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
) -> Result<(), ActorProcessingErr> {
    let held = state.circuit.is_some() || state.signature.paused;
    let wanted = state.draining.is_none() && !held && !state.operator_paused;
    state
        .runtime
        .stats
        .paused
        .store(held || state.operator_paused, Ordering::Relaxed);
    match (wanted, state.consumer_tag.is_some()) {
        (true, false) => start_consuming(myself, state).await,
        (false, true) => {
            stop_consuming(state).await;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `basic.qos` for the current pool, then a new `basic.consume`. RabbitMQ applies a per-consumer
/// prefetch only to consumers created after it, which is why a resize re-consumes.
pub(super) async fn start_consuming(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
) -> Result<(), ActorProcessingErr> {
    let prefetch = crate::config::prefetch(state.pool.target(), super::per_worker(state));
    if prefetch != state.prefetch {
        state
            .channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        state.prefetch = prefetch;
        state.acks.set_window(prefetch);
    }
    let tag = new_consumer_tag(&state.runtime.name);
    let consumer = state
        .channel
        .basic_consume(
            state.runtime.subject().queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    state.consumer_tag = Some(tag);
    state.forwarder = Some(tokio::spawn(forward(consumer, myself.clone())));
    Ok(())
}

/// Cancels the consumer. Deliveries already received stay valid on the channel; the backlog
/// (not yet with a worker) goes back to the queue.
pub(super) async fn stop_consuming(state: &mut ConsumerState) {
    cancel_consumer(state).await;
    while let Some(delivery) = state.backlog.pop_front() {
        requeue(state, &delivery);
    }
}

/// RabbitMQ applies a new per-consumer prefetch only to consumers created after it: after a
/// resize, or when the receiver starts or stops taking batches, re-consume with the prefetch
/// wanted now. Deliveries already received stay valid on the channel.
pub(super) async fn follow_prefetch(
    myself: &ActorRef<ConsumerMsg>,
    state: &mut ConsumerState,
) -> Result<(), ActorProcessingErr> {
    let wanted = crate::config::prefetch(state.pool.target(), super::per_worker(state));
    if state.consumer_tag.is_some() && wanted != state.prefetch {
        cancel_consumer(state).await;
        start_consuming(myself, state).await?;
    }
    Ok(())
}

pub(super) async fn cancel_consumer(state: &mut ConsumerState) {
    if let Some(tag) = state.consumer_tag.take() {
        let _ = state
            .channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }
    // The forwarder is not aborted: it hands over what the cancelled consumer had buffered and
    // ends with the stream (a stale `StreamEnded` is ignored by tag).
    state.forwarder = None;
}

/// The delivery stream of consumer `tag` ended: an error for the current consumer (a lost
/// connection is [`ConnectionLost`], not a crash); nothing for one cancelled on purpose.
pub(super) fn on_stream_ended(
    state: &ConsumerState,
    tag: &str,
    reason: Option<String>,
) -> Result<(), ActorProcessingErr> {
    if state.consumer_tag.as_deref() != Some(tag) {
        // A consumer we cancelled ourselves (drain, pause, resize).
        return Ok(());
    }
    let reason = reason.unwrap_or_else(|| "consumer cancelled by the broker".to_owned());
    if !state.connection.status().connected() {
        // Not a crash: the root reconnects without counting it towards the restart intensity.
        return Err(ConnectionLost(reason).into());
    }
    Err(format!(
        "delivery stream of `{}` ended: {reason}",
        state.runtime.subject().queue
    )
    .into())
}

fn new_consumer_tag(subject: &str) -> String {
    format!(
        "amqp-agent.{subject}.{}.{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Most deliveries the forwarder hands over in one mailbox message.
const FORWARD_MAX: usize = 256;

/// Forwards deliveries from the lapin consumer stream to the actor's mailbox: every delivery
/// the stream already holds goes in one message (one wake-up of the consumer, one dispatch).
async fn forward(mut consumer: lapin::Consumer, actor: ActorRef<ConsumerMsg>) {
    use futures_util::FutureExt;
    let tag = consumer.tag().to_string();
    // Room for as many as the last run held: under a backlog a run is tens of deliveries, and
    // growing the vector from 16 each time moved them two or three times over (callgrind:
    // about 160 instructions per delivery less at batch 50).
    let mut last = 0;
    // The stream's item that ends a run of deliveries (an error, or its end).
    let end = loop {
        let first = match consumer.next().await {
            Some(Ok(delivery)) => delivery,
            other => break other,
        };
        let mut deliveries = Vec::with_capacity(last.clamp(16, FORWARD_MAX));
        deliveries.push(first);
        let mut end = None;
        while deliveries.len() < FORWARD_MAX {
            // What the stream holds already; `None`: it would wait.
            match consumer.next().now_or_never() {
                None => break,
                Some(Some(Ok(delivery))) => deliveries.push(delivery),
                Some(other) => {
                    end = Some(other);
                    break;
                }
            }
        }
        last = deliveries.len();
        if actor.cast(ConsumerMsg::Deliveries(deliveries)).is_err() {
            return;
        }
        if let Some(end) = end {
            break end;
        }
    };
    let reason = match end {
        Some(Err(e)) => Some(e.to_string()),
        _ => None,
    };
    let _ = actor.cast(ConsumerMsg::StreamEnded { tag, reason });
}
