<?php
/**
 * Reference handler for scripts/bench: the "one PHP process per message" model of
 * rabbitmq-cli-consumer and `amqp-consume`, which start a command for every message with the
 * body on stdin and ack it when the command exits 0.
 *
 * Does what bench-handler.php does under FPM (bench-record.php), so the bench checks for lost
 * and duplicate ids the same way.
 */

declare(strict_types=1);

$start = microtime(true);
require __DIR__ . '/bench-record.php';
if (bench_record((string) stream_get_contents(STDIN), $start) === null) {
    fwrite(STDERR, "bench-cli-handler: body must be JSON with string fields id and run\n");
    exit(2);
}
exit(0);
