<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Tests;

use AmqpAgent\Receiver\Signature;
use AmqpAgent\Receiver\SignedFields;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\Transport\Serialization\SerializerInterface;

final class Fixtures
{
    public const SECRET = 'bundle-test-secret';

    /**
     * What the agent sends for a message Messenger's AMQP transport published with $serializer:
     * the body, the application headers as HTTP_X_AGENT_HEADERS JSON, and the Content-Type the
     * AmqpSender moved into the AMQP property.
     *
     * @return array{0: array<string, string>, 1: string}
     */
    public static function request(SerializerInterface $serializer, Envelope $envelope, string $id = 'm-1', int $attempt = 1, ?string $traceparent = null): array
    {
        $encoded = $serializer->encode($envelope);
        $headers = $encoded['headers'] ?? [];
        $contentType = $headers['Content-Type'] ?? '';
        unset($headers['Content-Type']);
        $headers['x-agent-attempt'] = $attempt;
        $server = [
            'REQUEST_METHOD' => 'POST',
            'CONTENT_TYPE' => 'application/octet-stream',
            'HTTP_X_AGENT_SUBJECT' => 'event',
            'HTTP_X_AGENT_MESSAGE_ID' => $id,
            'HTTP_X_AGENT_ATTEMPT' => (string) $attempt,
            'HTTP_X_AGENT_REDELIVERED' => '0',
            'HTTP_X_AGENT_ROUTING_KEY' => 'event',
            'HTTP_X_AGENT_EXCHANGE' => '',
            'HTTP_X_AGENT_CONTENT_TYPE' => $contentType,
            'HTTP_X_AGENT_HEADERS' => json_encode($headers, JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR),
        ];
        if ($traceparent !== null) {
            $server['HTTP_TRACEPARENT'] = $traceparent;
        }
        $server['HTTP_X_AGENT_SIGNATURE'] = Signature::header([self::SECRET], time(), SignedFields::fromServer($server, $encoded['body']));

        return [$server, $encoded['body']];
    }
}
