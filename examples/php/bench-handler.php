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
    // Every line is flushed at once, as the docs say (BatchOutput::sapi()), unless the request
    // URI asks for `flush=once` (scripts/bench --quick --streamed): the whole reply then leaves
    // PHP in one write at the end.
    require __DIR__ . '/receiver/autoload.php';
    $once = str_contains($_SERVER['REQUEST_URI'] ?? '', 'flush=once');
    $reply = '';
    if ($once) {
        http_response_code(200);
        foreach (AmqpAgent\Receiver\BatchOutput::HEADERS as $name => $value) {
            header("{$name}: {$value}");
        }
        $out = new AmqpAgent\Receiver\BatchOutput(static function (string $chunk) use (&$reply): void {
            $reply .= $chunk;
        });
    } else {
        $out = AmqpAgent\Receiver\BatchOutput::sapi();
    }
    // One write per entry, as the receiver's runBatch() writes: the first `start` line alone,
    // then each outcome line with the next entry's `start` line, the last with the trailer.
    $entries = AmqpAgent\Receiver\Batch::parse($_SERVER, (string) file_get_contents('php://input'));
    $last = count($entries) - 1;
    if ($last >= 0) {
        $out->start($entries[0]);
    }
    foreach ($entries as $i => $entry) {
        $message = bench_record($entry->body, microtime(true));
        $sleep = (int) ($message['sleep_ms'] ?? 0);
        if ($sleep > 0) {
            usleep($sleep * 1000);
        }
        $response = $message === null
            ? AmqpAgent\Receiver\Response::permanent('bench-handler: body must be the bench JSON')
            : AmqpAgent\Receiver\Response::ack();
        if ($i === $last) {
            $out->finish($entry, $response, count($entries));
        } else {
            $out->outcome($entry, $response, $entries[$i + 1]);
        }
    }
    echo $reply;
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
// `flushes=N` in the request URI (scripts/bench --quick --streamed): the reply leaves PHP in N
// writes, as a handler that calls flush() does; php-fpm sends each as its own record.
$flushes = preg_match('/flushes=(\d+)/', $_SERVER['REQUEST_URI'] ?? '', $m) === 1 ? (int) $m[1] : 1;
while (ob_get_level() > 0 && $flushes > 1) {
    ob_end_clean();
}
for ($i = 1; $i < $flushes; $i++) {
    echo "part {$i}\n";
    flush();
}
echo "ok\n";
