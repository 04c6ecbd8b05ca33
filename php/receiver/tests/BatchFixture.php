<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver\Tests;

use AmqpAgent\Receiver\Signature;
use AmqpAgent\Receiver\SignedFields;

/**
 * Batch requests as the agent builds them (src/batch/wire.rs, docs/batches.md), for the tests of
 * the receiver and of the framework packages.
 */
final class BatchFixture
{
    public const SECRET = 's3cret';
    public const T = 1800000000;
    /** The nonce of every fixture batch: the first word of each reply line. */
    public const NONCE = '00112233445566778899aabbccddeeff';

    /**
     * @param list<array{id: string, body: string}|array{id: string, body: string, attempt: int}> $messages
     * @return array{0: array<string, string>, 1: string} the request's params and body
     */
    public static function request(array $messages, string $subject = 'event', array $extra = []): array
    {
        $body = "AMQP-AGENT-BATCH 2 " . self::NONCE . "\n";
        foreach ($messages as $index => $m) {
            $fields = [
                'HTTP_X_AGENT_MESSAGE_ID' => $m['id'],
                'HTTP_X_AGENT_ATTEMPT' => (string) ($m['attempt'] ?? 1),
                'HTTP_X_AGENT_REDELIVERED' => '0',
                'HTTP_X_AGENT_ROUTING_KEY' => $m['routing_key'] ?? 'rk',
                'HTTP_X_AGENT_EXCHANGE' => '',
                'HTTP_X_AGENT_CONTENT_TYPE' => $m['content_type'] ?? 'application/json',
                'HTTP_X_AGENT_HEADERS' => $m['headers'] ?? '{}',
            ];
            $signed = new SignedFields(
                $subject,
                $fields['HTTP_X_AGENT_MESSAGE_ID'],
                (int) $fields['HTTP_X_AGENT_ATTEMPT'],
                $fields['HTTP_X_AGENT_ROUTING_KEY'],
                $fields['HTTP_X_AGENT_EXCHANGE'],
                $fields['HTTP_X_AGENT_CONTENT_TYPE'],
                $fields['HTTP_X_AGENT_HEADERS'],
                $m['signed_body'] ?? $m['body'],
            );
            $fields['HTTP_X_AGENT_SIGNATURE'] = Signature::header([self::SECRET], self::T, $signed);
            $block = '';
            foreach ($fields as $name => $value) {
                $block .= "{$name}={$value}\n";
            }
            $body .= sprintf("%d %d %d\n", $m['index'] ?? $index, strlen($block), strlen($m['body'])) . $block . $m['body'] . "\n";
        }
        $server = $extra + [
            'REQUEST_METHOD' => 'POST',
            'SCRIPT_FILENAME' => '/srv/app/public/index.php',
            'REQUEST_URI' => "/_agent/messages/{$subject}",
            'CONTENT_TYPE' => 'application/vnd.amqp-agent.batch',
            'CONTENT_LENGTH' => (string) strlen($body),
            'HTTP_X_AGENT_SUBJECT' => $subject,
            'HTTP_X_AGENT_BATCH' => '2',
            'HTTP_X_AGENT_BATCH_SIZE' => (string) count($messages),
        ];

        return [$server, $body];
    }

    /**
     * A batch of requests already built as single ones (each its params, signature included, and
     * its body), as the agent encodes them.
     *
     * @param list<array{0: array<string, string>, 1: string}> $singles
     * @return array{0: array<string, string>, 1: string}
     */
    public static function encode(array $singles, string $subject = 'event'): array
    {
        $body = "AMQP-AGENT-BATCH 2 " . self::NONCE . "\n";
        foreach ($singles as $index => [$server, $entryBody]) {
            $block = '';
            foreach (array_intersect_key($server, \AmqpAgent\Receiver\Batch::ENTRY_FIELDS) as $name => $value) {
                $block .= "{$name}={$value}\n";
            }
            $body .= sprintf("%d %d %d\n", $index, strlen($block), strlen($entryBody)) . $block . $entryBody . "\n";
        }

        return [[
            'REQUEST_METHOD' => 'POST',
            'CONTENT_TYPE' => 'application/vnd.amqp-agent.batch',
            'HTTP_X_AGENT_SUBJECT' => $subject,
            'HTTP_X_AGENT_BATCH' => '2',
            'HTTP_X_AGENT_BATCH_SIZE' => (string) count($singles),
        ], $body];
    }

    /** A binary body of $bytes bytes (every byte value, NUL and LF included). */
    public static function binary(int $bytes, int $seed = 7): string
    {
        $out = '';
        $x = $seed;
        for ($i = 0; $i < $bytes; $i += 4) {
            $x = ($x * 1103515245 + 12345) & 0x7fffffff;
            $out .= pack('N', $x);
        }

        return substr($out, 0, $bytes);
    }

    /**
     * The outcome lines and trailer of a written reply, without the nonce, after checking the
     * framing the agent requires: every line starts with the nonce, each outcome follows the
     * `start` line of its own entry, and every write ends with a line end.
     *
     * @param list<string> $written one entry per write
     * @return list<string>
     */
    public static function outcomes(array $written, string $nonce = self::NONCE): array
    {
        $lines = [];
        $started = null;
        foreach ($written as $chunk) {
            if (!str_ends_with($chunk, "\n")) {
                throw new \LogicException("a write that does not end a line: {$chunk}");
            }
            foreach (explode("\n", substr($chunk, 0, -1)) as $line) {
                if (!str_starts_with($line, "{$nonce} ")) {
                    throw new \LogicException("a line without the nonce: {$line}");
                }
                $line = substr($line, strlen($nonce) + 1) . "\n";
                if (preg_match('/^(\d+) start\n$/D', $line, $m) === 1) {
                    if ($started !== null) {
                        throw new \LogicException("entry {$m[1]} started before entry {$started} was answered");
                    }
                    $started = $m[1];
                    continue;
                }
                if (preg_match('/^(\d+) /', $line, $m) === 1) {
                    if ($m[1] !== $started) {
                        throw new \LogicException("an outcome for entry {$m[1]}, which was not started");
                    }
                    $started = null;
                }
                $lines[] = $line;
            }
        }

        return $lines;
    }
}
