<?php
/**
 * Benchmark handler for scripts/bench (examples/bench.rs). Deliberately trivial.
 *
 * Reads the JSON body {"id": "...", "run": "...", "sleep_ms": N, ...}, records
 * "<id> <start µs>\n" in $RECORD_DIR/<run>.<pid>.log, sleeps sleep_ms if asked
 * and acknowledges with "X-Agent-Ack: 1". One file per FPM child and run, opened
 * in append mode for each request, so no locking is needed and nothing is lost
 * or interleaved under concurrency. The bench merges the files to count lost and
 * duplicate ids and to compute publish -> handler-start latency (both clocks are
 * the machine's wall clock).
 *
 * No signature check: the bench runs the agent without signing secrets.
 */

declare(strict_types=1);

$start = microtime(true);
require __DIR__ . '/bench-record.php';

if (isset($_SERVER['HTTP_X_AGENT_BATCH'])) {
    // batch_max > 1 (docs/batches.md): the receiver package's parser and outcome writer (the
    // bench copies php/receiver next to this file); each entry is recorded at its own start.
    require __DIR__ . '/receiver/autoload.php';
    $out = AmqpAgent\Receiver\BatchOutput::sapi();
    $entries = AmqpAgent\Receiver\Batch::parse($_SERVER, (string) file_get_contents('php://input'));
    foreach ($entries as $entry) {
        $message = bench_record($entry->body, microtime(true));
        $sleep = (int) ($message['sleep_ms'] ?? 0);
        if ($sleep > 0) {
            usleep($sleep * 1000);
        }
        $out->outcome($entry->index, $message === null
            ? AmqpAgent\Receiver\Response::permanent('bench-handler: body must be the bench JSON')
            : AmqpAgent\Receiver\Response::ack());
    }
    $out->done(count($entries));
    return;
}
$message = bench_record((string) file_get_contents('php://input'), $start);
if ($message === null) {
    http_response_code(422);
    echo "bench-handler: body must be JSON with string fields id and run\n";
    return;
}
$sleep = (int) ($message['sleep_ms'] ?? 0);
if ($sleep > 0) {
    usleep($sleep * 1000);
}
header('X-Agent-Ack: 1');
header('Content-Type: text/plain');
echo "ok\n";
