//! End to end with a real Symfony app (tests/apps/symfony: FrameworkBundle, Messenger's AMQP
//! transport, the bundle, prod environment): the app's own bus publishes (events inside a
//! current trace context, commands with a TraceparentStamp), the agent consumes and php-fpm
//! serves the bundle's /_agent/messages route, which dispatches on the same bus. The app loads
//! the bundle's recipe (php/symfony-bundle/recipe/config) as shipped; every handled record also
//! shows the publisher's stamps as the transport serializer decoded them.

use crate::common;

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

/// The same with the app's transports on the Symfony Serializer (JSON body, `type` and
/// `X-Message-Stamp-*` headers) instead of PhpSerializer: the recipe's
/// `amqp_agent.transport_serializer` set to `messenger.transport.symfony_serializer`, so the
/// real AmqpSender publishes JSON and the bundle decodes with the same serializer. The bundle's
/// MessageIdStamp and TraceparentStamp come back from their stamp headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messenger_published_json_events_and_commands_reach_their_handlers_once() {
    common::apps::hundred_of_each_with(
        "symfony",
        "recover-once",
        "unrecoverable",
        None,
        "index.php",
        &[("APP_MESSENGER_SERIALIZER", "json")],
    )
    .await;
}

/// The same through the slim front controller `public/agent.php` (the bundle README's
/// "Throughput" section: the cached kernel and the bundle's controller, no HttpKernel), with the
/// events in batches of up to 10, as the README's snippet serves both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slim_front_controller_serves_single_messages_and_batches() {
    common::apps::hundred_of_each_with(
        "symfony",
        "recover-once",
        "unrecoverable",
        Some("batch_max = 10\nbatch_wait = \"200ms\"\n"),
        "agent.php",
        &[],
    )
    .await;
}

/// Publish rights are not PHP object injection (issue #22, hole 7): a PhpSerializer envelope whose
/// message is an app class that Messenger's routing does not name (`App\Spy\Gadget`, which
/// appends to a file when unserialized) is dead-lettered with `class not allowed: App\Spy\Gadget`
/// and never built; the app's routed messages are handled as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_class_outside_the_routing_is_dead_lettered_unbuilt() {
    common::apps::hostile_messages_are_dead_lettered(
        "symfony",
        &["{gadget}"],
        &[("gadget", r"class not allowed: App\Spy\Gadget")],
    )
    .await;
}
