//! End to end with a real Laravel app (tests/apps/laravel: Bus, the sync queue, the package's
//! provider): the package's Publisher sends Laravel job payloads, the agent consumes and php-fpm
//! serves the package's /_agent/messages route, which runs each job with Bus::dispatchSync.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_jobs_reach_their_handlers_once() {
    // RetryLater once; PermanentFailure always.
    common::apps::hundred_of_each("laravel", "retry-once", "permanent").await;
}
