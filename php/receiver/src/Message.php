<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver;

/** One delivered message, built from the FastCGI params the agent sends and the raw body. */
final class Message
{
    /**
     * @param array<string, mixed> $headers AMQP application headers (decoded HTTP_X_AGENT_HEADERS)
     */
    public function __construct(
        /** "event" or "command": the agent's subject, not the routing key. */
        public readonly string $subject,
        /** The AMQP message_id, or the one the agent generated (stable across retries). */
        public readonly string $messageId,
        /** 1-based attempt number. */
        public readonly int $attempt,
        public readonly bool $redelivered,
        public readonly string $routingKey,
        public readonly string $exchange,
        public readonly ?string $type,
        public readonly ?string $correlationId,
        /** Unix seconds. */
        public readonly ?int $timestamp,
        public readonly array $headers,
        /** The original AMQP content type (not CONTENT_TYPE, which the agent may neutralise). */
        public readonly ?string $contentType,
        /** The exact raw bytes, possibly binary: always from php://input, never $_POST. */
        public readonly string $body,
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
        // Agents before the content-type param passed the original in CONTENT_TYPE.
        $contentType = array_key_exists('HTTP_X_AGENT_CONTENT_TYPE', $server)
            ? $optional('HTTP_X_AGENT_CONTENT_TYPE')
            : $optional('CONTENT_TYPE');

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
            contentType: $contentType,
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

    /** A string application header, or null. */
    public function header(string $name): ?string
    {
        $value = $this->headers[$name] ?? null;

        return is_string($value) ? $value : null;
    }
}
