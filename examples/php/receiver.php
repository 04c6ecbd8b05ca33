<?php
/**
 * amqp-agent receiver — framework-agnostic PHP endpoint (PHP 8.2, no dependencies).
 *
 * amqp-agent consumes RabbitMQ messages and POSTs each one to PHP-FPM over
 * FastCGI. This file is both
 *
 *   - a small library (AgentSignature, AgentMessage, agent_handle(), ...) you can
 *     include from your own code or copy into a framework, and
 *   - a front controller: point the agent's SCRIPT_FILENAME at this file and it
 *     verifies, logs and acknowledges every message (see agent_default_handler()).
 *
 * Response contract (what the agent does with each answer):
 *
 *   200 + "X-Agent-Ack: 1"   handled — the agent acks the message
 *   401                      bad or missing signature — never handled
 *   405                      not a POST
 *   422                      PermanentFailure — the agent dead-letters at once
 *   503 + "Retry-After: N"   RetryLater — retry in N seconds
 *   500                      anything else thrown — the agent retries
 *
 * Notes for PHP configuration:
 *   - The raw message is read from php://input. For a multipart/form-data
 *     CONTENT_TYPE PHP consumes the body itself and php://input is empty (the
 *     signature check then fails): set enable_post_data_reading=Off in the pool
 *     if such messages can occur. Raise post_max_size above your largest
 *     message; php://input still works beyond it, but PHP logs a warning.
 *   - The agent speaks FastCGI directly to PHP-FPM: do not expose this script
 *     through the public web server.
 */

declare(strict_types=1);

/** Throw from a handler when retrying can never help: the agent dead-letters the message (422). */
class PermanentFailure extends RuntimeException
{
}

/** Throw from a handler to ask the agent to retry after a delay (503 + Retry-After). */
class RetryLater extends RuntimeException
{
    public function __construct(
        public readonly int $seconds,
        string $message = '',
        ?Throwable $previous = null,
    ) {
        parent::__construct($message, 0, $previous);
    }
}

/**
 * The "X-Agent-Signature" header:
 *
 *   t=<unix seconds>,v1=<hex>[,v1=<hex>...]
 *   v1 = hex(HMAC-SHA256(secret, "<t>.<subject>.<message_id>.<raw body>"))
 *
 * Several v1 values (and several secrets on our side) allow secret rotation.
 */
final class AgentSignature
{
    public const TOLERANCE_SECONDS = 300;

    /**
     * Secrets from AGENT_SIGNING_SECRET (comma separated), looked up with getenv()
     * and, as PHP-FPM pools often pass env only through $_SERVER, in $server too.
     *
     * @return list<string>
     */
    public static function secretsFromEnv(array $server = []): array
    {
        $raw = getenv('AGENT_SIGNING_SECRET');
        if ($raw === false || $raw === '') {
            $raw = (string) ($server['AGENT_SIGNING_SECRET'] ?? '');
        }

        return array_values(array_filter(
            array_map('trim', explode(',', $raw)),
            static fn (string $s): bool => $s !== '',
        ));
    }

    public static function sign(string $secret, int $timestamp, string $subject, string $messageId, string $body): string
    {
        return hash_hmac('sha256', "{$timestamp}.{$subject}.{$messageId}.{$body}", $secret);
    }

    /**
     * @param list<string> $secrets
     */
    public static function verify(
        string $header,
        string $subject,
        string $messageId,
        string $body,
        array $secrets,
        ?int $now = null,
    ): bool {
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
        if (abs(($now ?? time()) - $timestamp) > self::TOLERANCE_SECONDS) {
            return false;
        }

        $valid = false;
        foreach ($secrets as $secret) {
            $expected = self::sign($secret, $timestamp, $subject, $messageId, $body);
            foreach ($candidates as $candidate) {
                // No early exit: every comparison is constant time, and so is the loop.
                $valid = hash_equals($expected, $candidate) || $valid;
            }
        }

        return $valid;
    }
}

/** One delivered message, built from the FastCGI params the agent sends. */
final class AgentMessage
{
    /**
     * @param array<string, mixed> $headers AMQP application headers
     */
    public function __construct(
        public readonly string $subject,        // "event" or "command"
        public readonly string $messageId,
        public readonly int $attempt,           // 1-based
        public readonly bool $redelivered,
        public readonly string $routingKey,
        public readonly string $exchange,
        public readonly ?string $type,
        public readonly ?string $correlationId,
        public readonly ?int $timestamp,        // unix seconds
        public readonly array $headers,
        public readonly ?string $contentType,
        public readonly string $body,           // exact raw bytes, may be binary
        public readonly ?string $traceparent,
        public readonly ?string $tracestate,
    ) {
    }

    public static function fromServer(array $server, string $body): self
    {
        $optional = static fn (string $key): ?string =>
            isset($server[$key]) && $server[$key] !== '' ? (string) $server[$key] : null;

        $headers = json_decode((string) ($server['HTTP_X_AGENT_HEADERS'] ?? ''), true);
        $timestamp = $optional('HTTP_X_AGENT_TIMESTAMP');

        return new self(
            subject: (string) ($server['HTTP_X_AGENT_SUBJECT'] ?? ''),
            messageId: (string) ($server['HTTP_X_AGENT_MESSAGE_ID'] ?? ''),
            attempt: max(1, (int) ($server['HTTP_X_AGENT_ATTEMPT'] ?? 1)),
            redelivered: ($server['HTTP_X_AGENT_REDELIVERED'] ?? '0') === '1',
            routingKey: (string) ($server['HTTP_X_AGENT_ROUTING_KEY'] ?? ''),
            exchange: (string) ($server['HTTP_X_AGENT_EXCHANGE'] ?? ''),
            type: $optional('HTTP_X_AGENT_TYPE'),
            correlationId: $optional('HTTP_X_AGENT_CORRELATION_ID'),
            timestamp: $timestamp !== null && ctype_digit($timestamp) ? (int) $timestamp : null,
            headers: is_array($headers) ? $headers : [],
            contentType: $optional('CONTENT_TYPE'),
            body: $body,
            traceparent: $optional('HTTP_TRACEPARENT'),
            tracestate: $optional('HTTP_TRACESTATE'),
        );
    }

    /** The body decoded as a JSON object/array, or null if it is not JSON. */
    public function json(): ?array
    {
        $data = json_decode($this->body, true);

        return is_array($data) ? $data : null;
    }
}

final class AgentResponse
{
    /** @param array<string, string> $headers */
    public function __construct(
        public readonly int $status,
        public readonly array $headers = [],
        public readonly string $body = '',
    ) {
    }
}

/**
 * Verify the request, run $handler(AgentMessage) and map the outcome to a response.
 * Pure: reads nothing global, writes nothing but error_log(). Easy to test.
 *
 * @param callable(AgentMessage): mixed $handler
 * @param list<string>|null $secrets defaults to AgentSignature::secretsFromEnv($server)
 */
function agent_handle(array $server, string $body, callable $handler, ?array $secrets = null, ?int $now = null): AgentResponse
{
    if (($server['REQUEST_METHOD'] ?? '') !== 'POST') {
        return new AgentResponse(405, ['Allow' => 'POST'], "method not allowed\n");
    }

    $secrets ??= AgentSignature::secretsFromEnv($server);
    if ($secrets === []) {
        // Misconfiguration, not a bad request: fail closed, and let the agent retry.
        error_log('[amqp-agent] AGENT_SIGNING_SECRET is not set; refusing all messages');

        return new AgentResponse(500, [], "signing secret not configured\n");
    }

    $valid = AgentSignature::verify(
        (string) ($server['HTTP_X_AGENT_SIGNATURE'] ?? ''),
        (string) ($server['HTTP_X_AGENT_SUBJECT'] ?? ''),
        (string) ($server['HTTP_X_AGENT_MESSAGE_ID'] ?? ''),
        $body,
        $secrets,
        $now,
    );
    if (!$valid) {
        return new AgentResponse(401, [], "invalid signature\n");
    }

    $message = AgentMessage::fromServer($server, $body);
    $context = sprintf('message %s (attempt %d)', $message->messageId, $message->attempt);

    try {
        $handler($message);
    } catch (PermanentFailure $e) {
        error_log("[amqp-agent] {$context} failed permanently: {$e->getMessage()}");

        return new AgentResponse(422, [], "permanent failure\n");
    } catch (RetryLater $e) {
        $seconds = max(0, $e->seconds);
        $reason = $e->getMessage() !== '' ? ": {$e->getMessage()}" : '';
        error_log("[amqp-agent] {$context} retry in {$seconds}s{$reason}");

        return new AgentResponse(503, ['Retry-After' => (string) $seconds], "retry later\n");
    } catch (Throwable $e) {
        error_log(sprintf('[amqp-agent] %s failed: %s: %s', $context, $e::class, $e->getMessage()));

        return new AgentResponse(500, [], "handler failed\n");
    }

    return new AgentResponse(200, ['X-Agent-Ack' => '1'], "ok\n");
}

function agent_send(AgentResponse $response): void
{
    http_response_code($response->status);
    header('Content-Type: text/plain; charset=utf-8');
    foreach ($response->headers as $name => $value) {
        header("{$name}: {$value}");
    }
    echo $response->body;
}

/**
 * Demo handler: log the message in one line and succeed — unless the JSON body
 * asks to fail with {"fail": "always" | "once" | "permanent"}.
 */
function agent_default_handler(AgentMessage $message): void
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

// Front controller: only when this file is the executed script, so that tests
// and other scripts can include the library above without side effects.
if (realpath($_SERVER['SCRIPT_FILENAME'] ?? '') === __FILE__) {
    agent_send(agent_handle($_SERVER, (string) file_get_contents('php://input'), 'agent_default_handler'));
}
