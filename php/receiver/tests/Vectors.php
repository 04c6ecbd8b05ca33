<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver\Tests;

/** The known-answer vectors shared with the Rust tests (tests/vectors/signature.json). */
final class Vectors
{
    public const FILE = __DIR__ . '/../../../tests/vectors/signature.json';

    /** @return array<string, array{0: array<string, mixed>}> */
    public static function cases(): array
    {
        $data = json_decode((string) file_get_contents(self::FILE), true, 512, JSON_THROW_ON_ERROR);
        $cases = [];
        foreach ($data['cases'] as $case) {
            $cases[$case['name']] = [$case];
        }

        return $cases;
    }

    /** The FastCGI params the agent sends for a vector. */
    public static function server(array $case): array
    {
        return [
            'REQUEST_METHOD' => 'POST',
            'HTTP_X_AGENT_SUBJECT' => $case['subject'],
            'HTTP_X_AGENT_MESSAGE_ID' => $case['message_id'],
            'HTTP_X_AGENT_ATTEMPT' => (string) $case['attempt'],
            'HTTP_X_AGENT_ROUTING_KEY' => $case['routing_key'],
            'HTTP_X_AGENT_EXCHANGE' => $case['exchange'],
            'HTTP_X_AGENT_CONTENT_TYPE' => $case['content_type'],
            'HTTP_X_AGENT_HEADERS' => $case['headers_json'],
            'HTTP_X_AGENT_SIGNATURE' => $case['signature'],
            // What the agent sends for form/multipart originals; never what the receiver reads.
            'CONTENT_TYPE' => 'application/octet-stream',
        ];
    }

    public static function body(array $case): string
    {
        return (string) hex2bin($case['body_hex']);
    }
}
