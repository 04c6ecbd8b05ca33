<?php
/**
 * Shared by the bench handlers (bench-handler.php under FPM, bench-cli-handler.php as one
 * process per message): decodes the bench's JSON body {"id": "...", "run": "...", ...} and
 * appends "<id> <start µs>\n" to $RECORD_DIR/<run>.<pid>.log. One file per process and run,
 * opened in append mode for each message, so no locking is needed and nothing is lost or
 * interleaved under concurrency.
 *
 * Returns the decoded message, or null when the body is not the bench's JSON.
 */

declare(strict_types=1);

function bench_record(string $body, float $start): ?array
{
    $message = json_decode($body, true);
    if (!is_array($message) || !is_string($message['id'] ?? null) || !is_string($message['run'] ?? null)) {
        return null;
    }
    $run = preg_replace('/[^A-Za-z0-9_-]/', '', $message['run']);
    $id = str_replace(["\n", ' '], '', $message['id']);
    file_put_contents(
        getenv('RECORD_DIR') . '/' . $run . '.' . getmypid() . '.log',
        $id . ' ' . (int) round($start * 1e6) . "\n",
        FILE_APPEND,
    );
    return $message;
}
