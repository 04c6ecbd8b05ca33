//! End to end with a real Symfony app (tests/apps/symfony: FrameworkBundle, Messenger's AMQP
//! transport, the bundle, prod environment): the app's own bus publishes (events inside a
//! current trace context, commands with a TraceparentStamp), the agent consumes and php-fpm
//! serves the bundle's /_agent/messages route, which dispatches on the same bus.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messenger_published_events_and_commands_reach_their_handlers_once() {
    // RecoverableMessageHandlingException once; UnrecoverableMessageHandlingException always.
    common::apps::hundred_of_each("symfony", "recover-once", "unrecoverable").await;
}
