<?php
/**
 * Test-harness receiver for amqp-agent integration tests.
 *
 * Runs in a php-fpm pool started by the Rust test harness, with
 * env[RECORD_DIR]=<dir> (and optionally env[AGENT_SIGNING_SECRET]=<s1,s2>).
 *
 * REQUEST_URI must be "/t/<testid>/<subject>" (testid: [A-Za-z0-9_-]+), otherwise 400.
 * Every request appends exactly one JSON line to "$RECORD_DIR/<testid>.jsonl"
 * BEFORE the behaviour runs, with the keys:
 *   test_id, params, body_b64 (null if body > 65536 bytes), body_len, body_sha256,
 *   json_id, pid, t_start_us, sig_ok (null if no secret configured), behave,
 *   ini_memory_limit
 *
 * Behaviour comes from the JSON body key "behave" (default "ok"):
 *   ok                   200 + X-Agent-Ack: 1
 *   noack                200 without X-Agent-Ack
 *   status:NNN           status NNN, no ack
 *   retry-after:NNN:S    status NNN + Retry-After: S, no ack
 *   fail-until:N         500 while HTTP_X_AGENT_ATTEMPT < N, then ok
 *   sleep:MS             sleep MS milliseconds, then ok
 *   fatal                call an undefined function (PHP fatal error, nothing output before)
 *   fatal-after-output   echo some output, then the same fatal error
 *   stderr-only          write to stderr (error_log + php://stderr), exit with no output
 *   huge                 200 + ack, then 50 MiB of 'x' in 1 MiB chunks
 *   exit-midway          200 + ack, partial output flushed, then SIGKILL of the worker
 *   anything else        400 "unknown behave"
 */

declare(strict_types=1);

$tStartUs = (int) (microtime(true) * 1e6);

const SIGNATURE_TOLERANCE_SECONDS = 300;
const BODY_B64_MAX = 65536;
const RECORDED_PARAMS = [
    'REQUEST_METHOD', 'SCRIPT_FILENAME', 'SCRIPT_NAME', 'DOCUMENT_ROOT', 'REQUEST_URI',
    'SERVER_NAME', 'SERVER_PORT', 'REMOTE_ADDR', 'CONTENT_TYPE', 'CONTENT_LENGTH',
    'PHP_VALUE', 'PHP_ADMIN_VALUE',
];

function env_value(string $name): ?string
{
    $value = getenv($name);
    if ($value === false || $value === '') {
        $value = $_SERVER[$name] ?? '';
    }

    return is_string($value) && $value !== '' ? $value : null;
}

/** Same algorithm as examples/php/receiver.php (AgentSignature::verify). */
function verify_signature(string $header, string $subject, string $messageId, string $body, array $secrets): bool
{
    $timestamp = null;
    $candidates = [];
    foreach (explode(',', $header) as $part) {
        [$key, $value] = array_pad(explode('=', trim($part), 2), 2, '');
        if ($key === 't' && ctype_digit($value)) {
            $timestamp = (int) $value;
        } elseif ($key === 'v1' && $value !== '') {
            $candidates[] = strtolower($value);
        }
    }
    if ($timestamp === null || $candidates === [] || $secrets === []) {
        return false;
    }
    if (abs(time() - $timestamp) > SIGNATURE_TOLERANCE_SECONDS) {
        return false;
    }

    $valid = false;
    foreach ($secrets as $secret) {
        $expected = hash_hmac('sha256', "{$timestamp}.{$subject}.{$messageId}.{$body}", $secret);
        foreach ($candidates as $candidate) {
            $valid = hash_equals($expected, $candidate) || $valid;
        }
    }

    return $valid;
}

function respond(int $status, string $body = '', array $headers = []): never
{
    http_response_code($status);
    foreach ($headers as $name => $value) {
        header("{$name}: {$value}");
    }
    echo $body;
    exit;
}

function status_code(string $value): int
{
    $code = (int) $value;
    if ($code < 100 || $code > 599) {
        respond(400, "bad status in behave\n");
    }

    return $code;
}

function ok(): never
{
    respond(200, "ok\n", ['X-Agent-Ack' => '1']);
}

// --- route ---------------------------------------------------------------

$uri = (string) ($_SERVER['REQUEST_URI'] ?? '');
if (!preg_match('#^/t/([A-Za-z0-9_-]+)/([A-Za-z0-9_.-]+)(?:\?.*)?$#D', $uri, $m)) {
    respond(400, "bad uri\n");
}
$testId = $m[1];

$recordDir = env_value('RECORD_DIR');
if ($recordDir === null) {
    error_log('recorder.php: RECORD_DIR is not set');
    respond(500, "RECORD_DIR not set\n");
}

// --- inspect the request -------------------------------------------------

$body = (string) file_get_contents('php://input');
$json = json_decode($body, true);
$json = is_array($json) ? $json : null;
$behave = is_string($json['behave'] ?? null) ? $json['behave'] : 'ok';

$params = [];
foreach ($_SERVER as $key => $value) {
    if (is_string($key) && (str_starts_with($key, 'HTTP_') || in_array($key, RECORDED_PARAMS, true))) {
        $params[$key] = $value;
    }
}
ksort($params);

$secretsRaw = env_value('AGENT_SIGNING_SECRET');
$sigOk = null;
if ($secretsRaw !== null) {
    $secrets = array_values(array_filter(array_map('trim', explode(',', $secretsRaw)), 'strlen'));
    $sigOk = verify_signature(
        (string) ($_SERVER['HTTP_X_AGENT_SIGNATURE'] ?? ''),
        (string) ($_SERVER['HTTP_X_AGENT_SUBJECT'] ?? ''),
        (string) ($_SERVER['HTTP_X_AGENT_MESSAGE_ID'] ?? ''),
        $body,
        $secrets,
    );
}

$record = [
    'test_id' => $testId,
    'params' => $params,
    'body_b64' => strlen($body) <= BODY_B64_MAX ? base64_encode($body) : null,
    'body_len' => strlen($body),
    'body_sha256' => hash('sha256', $body),
    'json_id' => $json['id'] ?? null,
    'pid' => getmypid(),
    't_start_us' => $tStartUs,
    'sig_ok' => $sigOk,
    'behave' => $behave,
    'ini_memory_limit' => ini_get('memory_limit'),
];

// --- record (one line, appended under an exclusive lock) -----------------

$line = json_encode(
    $record,
    JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_INVALID_UTF8_SUBSTITUTE | JSON_PARTIAL_OUTPUT_ON_ERROR,
) . "\n";

$path = "{$recordDir}/{$testId}.jsonl";
$fh = fopen($path, 'a');
if ($fh === false || !flock($fh, LOCK_EX) || fwrite($fh, $line) !== strlen($line)) {
    error_log("recorder.php: cannot append to {$path}");
    respond(500, "cannot record\n");
}
fflush($fh);
flock($fh, LOCK_UN);
fclose($fh);

// --- behave --------------------------------------------------------------

$parts = explode(':', $behave);
switch ($parts[0]) {
    case 'ok':
        ok();

    case 'noack':
        respond(200, "ok (no ack)\n");

    case 'status':
        respond(status_code($parts[1] ?? ''), "{$behave}\n");

    case 'retry-after':
        respond(status_code($parts[1] ?? ''), "{$behave}\n", ['Retry-After' => (string) (int) ($parts[2] ?? 1)]);

    case 'fail-until':
        $until = (int) ($parts[1] ?? 0);
        if ((int) ($_SERVER['HTTP_X_AGENT_ATTEMPT'] ?? 1) < $until) {
            respond(500, "failing until attempt {$until}\n");
        }
        ok();

    case 'sleep':
        usleep(max(0, (int) ($parts[1] ?? 0)) * 1000);
        ok();

    case 'fatal':
        recorder_undefined_function();

    case 'fatal-after-output':
        echo "partial output before a fatal error\n";
        while (ob_get_level() > 0) {
            ob_end_flush();
        }
        flush(); // headers (status 200, no ack) are now sent
        recorder_undefined_function();

    case 'stderr-only':
        error_log("recorder.php: stderr-only via error_log ({$testId})");
        // STDERR is only defined in the CLI SAPI; php://stderr is the worker's fd 2.
        $stderr = fopen('php://stderr', 'w');
        fwrite($stderr, "recorder.php: stderr-only via php://stderr ({$testId})\n");
        fclose($stderr);
        exit;

    case 'huge':
        header('X-Agent-Ack: 1');
        $chunk = str_repeat('x', 1 << 20);
        for ($i = 0; $i < 50; $i++) {
            echo $chunk;
            flush();
        }
        exit;

    case 'exit-midway':
        header('X-Agent-Ack: 1');
        echo str_repeat('partial output ', 1000), "\n";
        while (ob_get_level() > 0) {
            ob_end_flush();
        }
        flush();
        usleep(50_000);
        if (function_exists('posix_kill')) {
            posix_kill(getmypid(), 9);
        } else {
            exec('kill -9 ' . getmypid());
        }
        sleep(5); // not reached
        exit;

    default:
        respond(400, "unknown behave\n");
}
