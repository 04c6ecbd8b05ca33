<?php
/**
 * amqp-agent receiver — a framework-free front controller built on php/receiver.
 *
 * Point the agent's SCRIPT_FILENAME at this file: it verifies the signature, logs each message
 * in one line and acknowledges it — unless the JSON body asks to fail with
 * {"fail": "always" | "once" | "permanent"} (scripts/demo uses that).
 *
 * The library (php/receiver, package amqp-agent/receiver) is found through Composer's
 * autoloader if one is loaded, else next to this file (php-receiver/, as scripts/demo and the
 * test harness copy it) or in this repository (../../php/receiver).
 *
 * Environment: AGENT_SIGNING_SECRET (comma separated, rotation), AGENT_SIGNATURE_ALLOW_V1=1 to
 * also accept agents older than the v2 signature, AGENT_SIGNATURE_TOLERANCE (seconds, 300).
 *
 * Response contract: 200 + X-Agent-Ack ack, 401 bad signature, 405 not a POST,
 * 422 PermanentFailure (dead-letter), 503 + Retry-After RetryLater or a stale signature
 * timestamp, 500 anything else thrown (retry).
 *
 * PHP configuration: the raw message is always read from php://input (the agent sends
 * CONTENT_TYPE application/octet-stream for form/multipart originals, so PHP never parses it).
 * Raise post_max_size above your largest message. Do not expose this script through the public
 * web server: the agent speaks FastCGI to PHP-FPM directly.
 */

declare(strict_types=1);

use AmqpAgent\Receiver\Message;
use AmqpAgent\Receiver\PermanentFailure;
use AmqpAgent\Receiver\Receiver;

if (!class_exists(Receiver::class)) {
    foreach ([__DIR__ . '/php-receiver/autoload.php', __DIR__ . '/../../php/receiver/autoload.php'] as $autoload) {
        if (is_file($autoload)) {
            require_once $autoload;
            break;
        }
    }
}

/** Demo handler: log the message in one line and succeed, or fail as the body asks. */
function agent_default_handler(Message $message): void
{
    // Escape control characters so that the log entry stays on one line.
    $field = static fn (?string $value): string =>
        $value === null || $value === '' ? '-' : addcslashes($value, "\0..\37\177");

    error_log(sprintf(
        '[amqp-agent] %s id=%s attempt=%d redelivered=%d exchange=%s routing_key=%s type=%s bytes=%d',
        $field($message->subject),
        $field($message->messageId),
        $message->attempt,
        (int) $message->redelivered,
        $field($message->exchange),
        $field($message->routingKey),
        $field($message->type),
        strlen($message->body),
    ));

    $fail = $message->json()['fail'] ?? null;
    if ($fail === 'always') {
        throw new RuntimeException('asked to fail (fail=always)');
    }
    if ($fail === 'once' && $message->attempt === 1) {
        throw new RuntimeException('asked to fail on the first attempt (fail=once)');
    }
    if ($fail === 'permanent') {
        throw new PermanentFailure('asked to fail permanently (fail=permanent)');
    }
}

// Front controller: only when this file is the executed script, so that other scripts can
// include it for agent_default_handler() without side effects.
if (realpath($_SERVER['SCRIPT_FILENAME'] ?? '') === __FILE__) {
    Receiver::run('agent_default_handler');
}
