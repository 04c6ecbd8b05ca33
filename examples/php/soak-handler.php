<?php
/**
 * Handler of scripts/soak (examples/soak/). Runs every message through the receiver package
 * (php/receiver: signature check, single requests and batches of format 2), and records each
 * run in $RECORD_DIR/<FPM child pid>.log, one line per event, appended (one file per child, so
 * no locking and no interleaving):
 *
 *     S <id> <attempt> <redelivered 0|1> <request> <µs>   the handler starts a run
 *     A <id> <µs>                                          the handler succeeded (it acks)
 *
 * <request> is drawn once per FastCGI request: entries of one batch share it.
 *
 * The body is {"id": "<n>", "kind": "...", ...}; the kind says what the handler does:
 *   ok           succeeds
 *   fail_once    throws on attempt 1 (a retry), succeeds after
 *   fail_always  throws on every attempt (dead-lettered after retry.max_attempts)
 *   exit         calls exit() mid-handling, on every attempt (in a batch: the entries after it
 *                never start; they must be retried alone, never dead-lettered)
 *   slow         sleeps $SOAK_SLOW_MS (longer than the agent's fpm.timeout) on every attempt,
 *                and writes no A line: its outcome can never reach the agent
 */

declare(strict_types=1);

require __DIR__ . '/receiver/autoload.php';

use AmqpAgent\Receiver\Message;
use AmqpAgent\Receiver\Receiver;

function soak_record(string $line): void
{
    file_put_contents(getenv('RECORD_DIR') . '/' . getmypid() . '.log', $line . "\n", FILE_APPEND);
}

function soak_now(): int
{
    return (int) round(microtime(true) * 1e6);
}

$GLOBALS['soak_request'] = bin2hex(random_bytes(6));

function soak_handler(Message $message): void
{
    $body = $message->json() ?? [];
    $id = preg_replace('/[^0-9A-Za-z_-]/', '', (string) ($body['id'] ?? '?'));
    $kind = (string) ($body['kind'] ?? 'ok');
    soak_record(sprintf(
        'S %s %d %d %s %d',
        $id,
        $message->attempt,
        (int) $message->redelivered,
        $GLOBALS['soak_request'],
        soak_now(),
    ));
    switch ($kind) {
        case 'fail_once':
            if ($message->attempt === 1) {
                throw new RuntimeException('soak: fail once');
            }
            break;
        case 'fail_always':
            throw new RuntimeException('soak: fail always');
        case 'exit':
            exit(1);
        case 'slow':
            usleep(((int) getenv('SOAK_SLOW_MS')) * 1000);

            return;
    }
    soak_record(sprintf('A %s %d', $id, soak_now()));
}

Receiver::run('soak_handler');
