<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver;

/**
 * The body of a batch request (docs/batches.md): several messages in one FastCGI request, each
 * with its own per-message params (signature included) and raw body.
 *
 *     AMQP-AGENT-BATCH 2 <nonce>\n
 *     <index> <fields length> <body length>\n <NAME>=<value>\n … <body>\n      per entry
 *
 * The nonce is a random token of the request; every line of the reply starts with it
 * (BatchOutput), so a handler's own output can never pass for an outcome.
 */
final class Batch
{
    public const VERSION = '2';
    private const MAGIC = '/\AAMQP-AGENT-BATCH 2 ([0-9a-f]{16,64})\n/';

    /** The per-message params: only these may appear in an entry, and the request has none. */
    public const ENTRY_FIELDS = [
        'HTTP_X_AGENT_MESSAGE_ID' => true, 'HTTP_X_AGENT_ATTEMPT' => true,
        'HTTP_X_AGENT_DELIVERY_COUNT' => true, 'HTTP_X_AGENT_REDELIVERED' => true,
        'HTTP_X_AGENT_ROUTING_KEY' => true, 'HTTP_X_AGENT_EXCHANGE' => true,
        'HTTP_X_AGENT_CONTENT_TYPE' => true, 'HTTP_X_AGENT_TYPE' => true,
        'HTTP_X_AGENT_CORRELATION_ID' => true, 'HTTP_X_AGENT_TIMESTAMP' => true,
        'HTTP_X_AGENT_SIGNATURE' => true, 'HTTP_X_AGENT_HEADERS' => true,
        'HTTP_TRACEPARENT' => true, 'HTTP_TRACESTATE' => true,
    ];

    /** True when the request is a batch (the agent sends HTTP_X_AGENT_BATCH with the version). */
    public static function isBatch(array $server): bool
    {
        return isset($server['HTTP_X_AGENT_BATCH']);
    }

    /**
     * The entries of a batch request. Each entry's `server` is the request's params without any
     * per-message or batch param, overlaid with the entry's fields: exactly the params its single
     * request would have had, so the single-message code (signature, Message) reads it unchanged.
     *
     * @return list<BatchEntry>
     *
     * @throws MalformedBatch on any deviation from the format
     */
    public static function parse(array $server, string $body): array
    {
        if ((string) ($server['HTTP_X_AGENT_BATCH'] ?? '') !== self::VERSION) {
            throw new MalformedBatch('unsupported batch version');
        }
        $count = (string) ($server['HTTP_X_AGENT_BATCH_SIZE'] ?? '');
        if (!ctype_digit($count)) {
            throw new MalformedBatch('HTTP_X_AGENT_BATCH_SIZE is not a number');
        }
        if (preg_match(self::MAGIC, substr($body, 0, 100), $magic) !== 1) {
            throw new MalformedBatch('not a version 2 batch body');
        }
        $nonce = $magic[1];
        $base = array_diff_key($server, self::ENTRY_FIELDS);
        unset($base['HTTP_X_AGENT_BATCH'], $base['HTTP_X_AGENT_BATCH_SIZE']);
        $length = strlen($body);
        $pos = strlen($magic[0]);
        $entries = [];
        $seen = [];
        while ($pos < $length) {
            $nl = strpos($body, "\n", $pos);
            if ($nl === false || $nl - $pos > 40) {
                throw new MalformedBatch('entry head without line end');
            }
            $head = substr($body, $pos, $nl - $pos);
            if (preg_match('/^(\d{1,9}) (\d{1,10}) (\d{1,10})$/D', $head, $m) !== 1) {
                throw new MalformedBatch('bad entry head');
            }
            [$index, $fieldsLength, $bodyLength] = [(int) $m[1], (int) $m[2], (int) $m[3]];
            if (isset($seen[$index])) {
                throw new MalformedBatch("entry {$index} twice");
            }
            $seen[$index] = true;
            $pos = $nl + 1;
            if ($fieldsLength + $bodyLength + 1 > $length - $pos) {
                throw new MalformedBatch("entry {$index} is longer than the body");
            }
            $fields = self::fields(substr($body, $pos, $fieldsLength), $index);
            $pos += $fieldsLength;
            $entryBody = substr($body, $pos, $bodyLength);
            $pos += $bodyLength;
            if ($body[$pos] !== "\n") {
                throw new MalformedBatch("entry {$index} is not followed by a line end");
            }
            ++$pos;
            $fields['CONTENT_LENGTH'] = (string) $bodyLength;
            $entries[] = new BatchEntry($index, $fields + $base, $entryBody, $nonce);
        }
        if (count($entries) !== (int) $count) {
            throw new MalformedBatch(sprintf('%d entries, %s announced', count($entries), $count));
        }

        return $entries;
    }

    /** @return array<string, string> */
    private static function fields(string $block, int $index): array
    {
        $fields = [];
        if ($block === '') {
            return $fields;
        }
        if (!str_ends_with($block, "\n")) {
            throw new MalformedBatch("entry {$index}: fields do not end with a line end");
        }
        foreach (explode("\n", substr($block, 0, -1)) as $line) {
            $eq = strpos($line, '=');
            $name = $eq === false ? '' : substr($line, 0, $eq);
            if (!isset(self::ENTRY_FIELDS[$name]) || isset($fields[$name])) {
                throw new MalformedBatch("entry {$index}: bad or repeated field");
            }
            $fields[$name] = substr($line, $eq + 1);
        }

        return $fields;
    }
}
