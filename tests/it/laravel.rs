//! End to end with a real Laravel app (tests/apps/laravel: Bus, the sync queue, the package's
//! provider): the package's Publisher sends Laravel job payloads, the agent consumes and php-fpm
//! serves the package's /_agent/messages route, which runs each job with Bus::dispatchSync.
//! The commands (`ShipOrder`) are `ShouldBeEncrypted`: published encrypted with the app's
//! APP_KEY and decrypted by the route; the events stay plain.

use crate::common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_jobs_reach_their_handlers_once() {
    // RetryLater once; PermanentFailure always.
    common::apps::hundred_of_each("laravel", "retry-once", "permanent", None).await;
}

/// The same with the events in batches of up to 10 (docs/batches.md): each event still reaches
/// its handler once, `e7` is retried alone, and the app is reset as by queue:work between entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_jobs_reach_their_handlers_once_in_batches() {
    common::apps::hundred_of_each(
        "laravel",
        "retry-once",
        "permanent",
        Some("batch_max = 10\nbatch_wait = \"200ms\"\n"),
    )
    .await;
}

/// Publish rights are not PHP object injection (issue #22, hole 7): a job payload of an app class
/// outside `amqp-agent.allowed_jobs` (`App\Spy\Gadget`, which appends to a file when
/// unserialized) is dead-lettered with `class not allowed: App\Spy\Gadget` and never built, and
/// a `ShouldBeEncrypted` job (`ShipOrder`) published in plaintext is dead-lettered instead of
/// run; the jobs the package's Publisher sends are handled as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_outside_the_allowlist_and_plaintext_encrypted_jobs_are_dead_lettered() {
    common::apps::hostile_messages_are_dead_lettered(
        "laravel",
        &["{test}", "{gadget}"],
        &[
            ("gadget", r"class not allowed: App\Spy\Gadget"),
            (
                "plain",
                r"job App\Jobs\ShipOrder should be encrypted and arrived in plaintext",
            ),
        ],
    )
    .await;
}
