<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver;

/** The request fields the v2 signature covers, exactly as the agent sent them. */
final class SignedFields
{
    public function __construct(
        public readonly string $subject,
        public readonly string $messageId,
        public readonly int $attempt,
        public readonly string $routingKey,
        public readonly string $exchange,
        /** The original AMQP content type (HTTP_X_AGENT_CONTENT_TYPE), '' when none. */
        public readonly string $contentType,
        /** The raw HTTP_X_AGENT_HEADERS value (its SHA-256 is signed). */
        public readonly string $headersJson,
        public readonly string $body,
    ) {
    }

    public static function fromServer(array $server, string $body): self
    {
        $attempt = (string) ($server['HTTP_X_AGENT_ATTEMPT'] ?? '');

        return new self(
            (string) ($server['HTTP_X_AGENT_SUBJECT'] ?? ''),
            (string) ($server['HTTP_X_AGENT_MESSAGE_ID'] ?? ''),
            // A non-numeric attempt cannot match what the agent signed: -1 makes sure of it.
            ctype_digit($attempt) ? (int) $attempt : -1,
            (string) ($server['HTTP_X_AGENT_ROUTING_KEY'] ?? ''),
            (string) ($server['HTTP_X_AGENT_EXCHANGE'] ?? ''),
            (string) ($server['HTTP_X_AGENT_CONTENT_TYPE'] ?? ''),
            (string) ($server['HTTP_X_AGENT_HEADERS'] ?? ''),
            $body,
        );
    }
}
