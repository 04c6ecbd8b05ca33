<?php
/**
 * Reference handler for scripts/bench: the "one PHP process per message" model of
 * rabbitmq-cli-consumer and `amqp-consume`, which start a command for every message with the
 * body on stdin and ack it when the command exits 0.
 *
 * Does what bench-handler.php does under FPM: decodes the JSON body and records
 * "<id> <start µs>\n" in $RECORD_DIR/<run>.<pid>.log, so the bench checks for lost and
 * duplicate ids the same way.
 */

declare(strict_types=1);

$start = microtime(true);
$message = json_decode((string) stream_get_contents(STDIN), true);
if (!is_array($message) || !is_string($message['id'] ?? null) || !is_string($message['run'] ?? null)) {
    fwrite(STDERR, "bench-cli-handler: body must be JSON with string fields id and run\n");
    exit(2);
}
$run = preg_replace('/[^A-Za-z0-9_-]/', '', $message['run']);
$id = str_replace(["\n", ' '], '', $message['id']);
file_put_contents(
    getenv('RECORD_DIR') . '/' . $run . '.' . getmypid() . '.log',
    $id . ' ' . (int) round($start * 1e6) . "\n",
    FILE_APPEND,
);
exit(0);
