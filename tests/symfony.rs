//! End to end with a real Symfony app (tests/apps/symfony: FrameworkBundle, Messenger's AMQP
//! transport, the bundle, prod environment): the app's own bus publishes (events inside a
//! current trace context, commands with a TraceparentStamp), the agent consumes and php-fpm
//! serves the bundle's /_agent/messages route, which dispatches on the same bus.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messenger_published_events_and_commands_reach_their_handlers_once() {
    // RecoverableMessageHandlingException once; UnrecoverableMessageHandlingException always.
    common::apps::hundred_of_each("symfony", "recover-once", "unrecoverable", None).await;
}

/// The same with the events in batches of up to 10 (docs/batches.md): each event still reaches
/// its handler once, `e7` is retried alone, and the container is reset (services_resetter) between entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messenger_published_events_and_commands_reach_their_handlers_once_in_batches() {
    common::apps::hundred_of_each(
        "symfony",
        "recover-once",
        "unrecoverable",
        Some("batch_max = 10\nbatch_wait = \"200ms\"\n"),
    )
    .await;
}
