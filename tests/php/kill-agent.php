<?php
/**
 * Test-only receiver for tests/it/poison.rs: a message that kills the agent.
 *
 * A message whose JSON body has "behave": "kill-agent" makes this script append one line to
 * "$RECORD_DIR/<testid>.kills" and then `kill -9` the agent process whose pid the test wrote to
 * "$RECORD_DIR/<testid>.agent-pid" (rewritten by the test after each restart). The pid is only
 * used when /proc/<pid>/cmdline is an amqp-agent: if the file still names the agent that died,
 * the script waits (up to 10 s) for the test to write the new one.
 *
 * Every other message goes to recorder.php (copied next to this file by the test).
 */

declare(strict_types=1);

$body = (string) file_get_contents('php://input');
$json = json_decode($body, true);
if (!is_array($json) || ($json['behave'] ?? null) !== 'kill-agent') {
    require __DIR__ . '/recorder.php';
    exit;
}

$uri = (string) ($_SERVER['REQUEST_URI'] ?? '');
if (!preg_match('#^/t/([A-Za-z0-9_-]+)/#', $uri, $m)) {
    http_response_code(400);
    exit;
}
$recordDir = (string) getenv('RECORD_DIR');
$testId = $m[1];

/** The pid in the file, if it is a running amqp-agent. */
function agent_pid(string $file): ?int
{
    $pid = (int) trim((string) @file_get_contents($file));
    if ($pid <= 0) {
        return null;
    }
    $cmdline = (string) @file_get_contents("/proc/{$pid}/cmdline");

    return str_contains($cmdline, 'amqp-agent') ? $pid : null;
}

$deadline = microtime(true) + 10;
while (($pid = agent_pid("{$recordDir}/{$testId}.agent-pid")) === null && microtime(true) < $deadline) {
    usleep(20_000);
}
$line = json_encode([
    'message_id' => $_SERVER['HTTP_X_AGENT_MESSAGE_ID'] ?? null,
    'attempt' => $_SERVER['HTTP_X_AGENT_ATTEMPT'] ?? null,
    'redelivered' => $_SERVER['HTTP_X_AGENT_REDELIVERED'] ?? null,
    'agent_pid' => $pid,
]) . "\n";
file_put_contents("{$recordDir}/{$testId}.kills", $line, FILE_APPEND | LOCK_EX);
if ($pid === null) {
    http_response_code(500);
    echo "no agent pid to kill\n";
    exit;
}
if (function_exists('posix_kill')) {
    posix_kill($pid, 9);
} else {
    exec('kill -9 ' . $pid);
}
// The agent is gone: nobody reads the reply.
http_response_code(500);
exit;
