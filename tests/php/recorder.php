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
 *   json_id, pid, t_start_us, sig_ok (v2 verifies; null if no secret configured),
 *   sig_v1_ok (a v1 value verifies; null likewise), behave, ini_memory_limit
 *
 * The signature check follows src/signature.rs (known answers: tests/vectors/signature.json).
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
 *   kill-silently        SIGKILL of the worker before any output (after the record is written)
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

/**
 * Verifies HTTP_X_AGENT_SIGNATURE as src/signature.rs does: "v2" (length-prefixed fields) or,
 * with $acceptV1, the legacy "v1" ("t.subject.id.body").
 */
function verify_signature(string $header, array $fields, string $body, array $secrets, bool $acceptV1): bool
{
    $timestamp = null;
    $v1 = [];
    $v2 = [];
    foreach (explode(',', $header) as $part) {
        [$key, $value] = array_pad(explode('=', trim($part), 2), 2, '');
        if ($key === 't' && ctype_digit($value)) {
            $timestamp = (int) $value;
        } elseif ($key === 'v1' && $value !== '' && $acceptV1) {
            $v1[] = strtolower($value);
        } elseif ($key === 'v2' && $value !== '') {
            $v2[] = strtolower($value);
        }
    }
    if ($timestamp === null || ($v1 === [] && $v2 === []) || $secrets === []) {
        return false;
    }
    if (abs(time() - $timestamp) > SIGNATURE_TOLERANCE_SECONDS) {
        return false;
    }

    $message = 'amqp-agent.v2';
    foreach ([
        (string) $timestamp,
        $fields['subject'],
        $fields['message_id'],
        $fields['attempt'],
        $fields['routing_key'],
        $fields['exchange'],
        $fields['content_type'],
        hash('sha256', $fields['headers_json']),
        $body,
    ] as $field) {
        $message .= pack('N', strlen($field)) . $field;
    }
    $legacy = "{$timestamp}.{$fields['subject']}.{$fields['message_id']}.{$body}";

    $valid = false;
    foreach ($secrets as $secret) {
        $expected2 = hash_hmac('sha256', $message, $secret);
        foreach ($v2 as $candidate) {
            $valid = hash_equals($expected2, $candidate) || $valid;
        }
        $expected1 = hash_hmac('sha256', $legacy, $secret);
        foreach ($v1 as $candidate) {
            $valid = hash_equals($expected1, $candidate) || $valid;
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
$sigV1Ok = null;
if ($secretsRaw !== null) {
    $secrets = array_values(array_filter(array_map('trim', explode(',', $secretsRaw)), 'strlen'));
    $header = (string) ($_SERVER['HTTP_X_AGENT_SIGNATURE'] ?? '');
    $fields = [];
    foreach ([
        'subject' => 'HTTP_X_AGENT_SUBJECT',
        'message_id' => 'HTTP_X_AGENT_MESSAGE_ID',
        'attempt' => 'HTTP_X_AGENT_ATTEMPT',
        'routing_key' => 'HTTP_X_AGENT_ROUTING_KEY',
        'exchange' => 'HTTP_X_AGENT_EXCHANGE',
        'content_type' => 'HTTP_X_AGENT_CONTENT_TYPE',
        'headers_json' => 'HTTP_X_AGENT_HEADERS',
    ] as $field => $param) {
        $fields[$field] = (string) ($_SERVER[$param] ?? '');
    }
    $sigOk = verify_signature($header, $fields, $body, $secrets, false);
    // v1 alone: the header without its v2 values, checked with v1 accepted.
    $v1Only = implode(',', array_filter(explode(',', $header), fn ($p) => !str_starts_with(trim($p), 'v2=')));
    $sigV1Ok = verify_signature($v1Only, $fields, $body, $secrets, true);
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
    'sig_v1_ok' => $sigV1Ok,
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

    case 'kill-silently':
        if (function_exists('posix_kill')) {
            posix_kill(getmypid(), 9);
        } else {
            exec('kill -9 ' . getmypid());
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
