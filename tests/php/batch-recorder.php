<?php
/**
 * Test-harness receiver for batches (tests/it/batches.rs): the php/receiver package's own batch
 * path (Receiver::run), in the harness's php-fpm pool, next to its copy of the package
 * (php-receiver/). REQUEST_URI "/t/<testid>/<subject>".
 *
 * Each handled message appends one JSON line to "$RECORD_DIR/<testid>.jsonl" before its
 * behaviour runs: json_id, attempt, pid, request (one random token per FastCGI request),
 * batch_size (HTTP_X_AGENT_BATCH_SIZE, null for a single request), behave, traceparent.
 *
 * Behaviour from the JSON body's "behave" (the `-once` ones only on attempt 1):
 *   ok                 handled (ack)
 *   fail-once          RuntimeException: 500, retried
 *   reject             PermanentFailure: 422, dead-lettered
 *   kill-once          SIGKILL of this FPM child (the request dies mid-batch)
 *   sleep-once:MS      sleep MS milliseconds, then handled
 *   exit               exit() on every attempt (PHP ends the request mid-batch)
 *   print-exit         prints "1 ack\n2 ack\n" (a forged v1 reply) and exits, every attempt
 *   kill               SIGKILL of this FPM child on every attempt
 *   sleep:MS           sleep MS milliseconds on every attempt, then handled
 *   slow-on-flag:A:B   sleep A milliseconds, or B once "$RECORD_DIR/<testid>.slow" exists (the
 *                      test turns the handler slow mid-run), then handled
 *   reject-cut         PermanentFailure whose 1,001-byte reason holds a byte that is not UTF-8
 *                      and ends with a two-byte character cut by the 1,000-byte limit
 *   exit-in-reset-once handled, then exit() in the reset that follows it, on attempt 1: PHP dies
 *                      between two entries, after the next entry's `start` line
 *   kill-agent         kill -9 of the agent process (tests/it/poison.rs), every attempt: appends a
 *                      line to "$RECORD_DIR/<testid>.kills", kills the amqp-agent whose pid the
 *                      test wrote to "$RECORD_DIR/<testid>.agent-pid" (waiting up to 10 s for
 *                      the test to write the pid of a running agent), waits until it is gone,
 *                      then exits: the entries after it in a batch never run
 *
 * With "$RECORD_DIR/<testid>.no-batches" present, replies leave out the package's
 * `X-Agent-Accepts-Batches` (a receiver that does not say it takes batches).
 */

declare(strict_types=1);

require __DIR__ . '/php-receiver/autoload.php';

use AmqpAgent\Receiver\Message;
use AmqpAgent\Receiver\PermanentFailure;
use AmqpAgent\Receiver\Receiver;

if (!preg_match('#^/t/([A-Za-z0-9_-]+)/[A-Za-z0-9_.-]+$#D', (string) ($_SERVER['REQUEST_URI'] ?? ''), $m)) {
    http_response_code(400);
    echo "bad uri\n";
    exit;
}
$testId = $m[1];
$recordDir = getenv('RECORD_DIR') ?: (string) ($_SERVER['RECORD_DIR'] ?? '');
$request = bin2hex(random_bytes(8));
$batchSize = isset($_SERVER['HTTP_X_AGENT_BATCH_SIZE']) ? (int) $_SERVER['HTTP_X_AGENT_BATCH_SIZE'] : null;
$batchBytes = $batchSize !== null ? (int) ($_SERVER['CONTENT_LENGTH'] ?? 0) : null;

/** The pid in the test's file, if it is a running amqp-agent (a zombie has an empty cmdline). */
function agent_pid(string $file): ?int
{
    $pid = (int) trim((string) @file_get_contents($file));
    if ($pid <= 0) {
        return null;
    }

    return str_contains((string) @file_get_contents("/proc/{$pid}/cmdline"), 'amqp-agent') ? $pid : null;
}

/** kill -9 of the test's agent, once it is gone: exit (nobody reads the reply). */
function kill_agent(string $recordDir, string $testId, Message $message): never
{
    $file = "{$recordDir}/{$testId}.agent-pid";
    $deadline = microtime(true) + 10;
    while (($pid = agent_pid($file)) === null && microtime(true) < $deadline) {
        usleep(20_000);
    }
    $line = json_encode([
        'message_id' => $message->messageId,
        'attempt' => $message->attempt,
        'agent_pid' => $pid,
    ], JSON_THROW_ON_ERROR) . "\n";
    file_put_contents("{$recordDir}/{$testId}.kills", $line, FILE_APPEND | LOCK_EX);
    if ($pid === null) {
        throw new \RuntimeException('no agent pid to kill');
    }
    if (function_exists('posix_kill')) {
        posix_kill($pid, 9);
    } else {
        exec('kill -9 ' . $pid);
    }
    // The agent must not read this request's end: wait until the process is gone.
    $deadline = microtime(true) + 10;
    while (str_contains((string) @file_get_contents("/proc/{$pid}/cmdline"), 'amqp-agent') && microtime(true) < $deadline) {
        usleep(10_000);
    }
    exit(0);
}

if (file_exists("{$recordDir}/{$testId}.no-batches")) {
    header_register_callback(static function (): void {
        header_remove('X-Agent-Accepts-Batches');
    });
}

// Set by `exit-in-reset-once`: the reset after this entry exits.
$exitInReset = false;
Receiver::run(static function (Message $message) use ($testId, $recordDir, $request, $batchSize, $batchBytes, &$exitInReset): void {
    $json = $message->json() ?? [];
    $behave = is_string($json['behave'] ?? null) ? $json['behave'] : 'ok';
    $line = json_encode([
        'json_id' => $json['id'] ?? null,
        'message_id' => $message->messageId,
        'attempt' => $message->attempt,
        'pid' => getmypid(),
        'request' => $request,
        'batch_size' => $batchSize,
        'batch_bytes' => $batchBytes,
        'behave' => $behave,
        'traceparent' => $message->traceparent,
    ], JSON_THROW_ON_ERROR) . "\n";
    file_put_contents("{$recordDir}/{$testId}.jsonl", $line, FILE_APPEND | LOCK_EX);
    $first = $message->attempt === 1;
    if ($behave === 'fail-once' && $first) {
        throw new \RuntimeException('fails on its first attempt');
    }
    if ($behave === 'reject') {
        throw new PermanentFailure('rejected by the handler');
    }
    if ($behave === 'kill-once' && $first) {
        // 9: SIGKILL (the constant comes with pcntl, which FPM may not load).
        if (function_exists('posix_kill')) {
            posix_kill(getmypid(), 9);
        } else {
            exec('kill -9 ' . getmypid());
        }
        sleep(5);
    }
    if (str_starts_with($behave, 'sleep-once:') && $first) {
        usleep(1000 * (int) substr($behave, strlen('sleep-once:')));
    }
    if ($behave === 'kill-agent') {
        kill_agent($recordDir, $testId, $message);
    }
    if ($behave === 'exit') {
        exit(0);
    }
    if ($behave === 'print-exit') {
        echo "1 ack\n2 ack\n";
        exit(0);
    }
    if ($behave === 'kill') {
        if (function_exists('posix_kill')) {
            posix_kill(getmypid(), 9);
        } else {
            exec('kill -9 ' . getmypid());
        }
        sleep(5);
    }
    if (str_starts_with($behave, 'sleep:')) {
        usleep(1000 * (int) substr($behave, strlen('sleep:')));
    }
    if (str_starts_with($behave, 'slow-on-flag:')) {
        [, $fast, $slow] = explode(':', $behave);
        usleep(1000 * (int) (file_exists("{$recordDir}/{$testId}.slow") ? $slow : $fast));
    }
    if ($behave === 'reject-cut') {
        throw new PermanentFailure("bad \xff byte " . str_repeat('a', 988) . "\u{e9}");
    }
    if ($behave === 'exit-in-reset-once' && $first) {
        $exitInReset = true;
    }
}, null, static function () use (&$exitInReset): void {
    if ($exitInReset) {
        exit(0);
    }
});
