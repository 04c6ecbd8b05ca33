<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver;

/** One message of a batch: its index, the params of its single request, and its raw body. */
final class BatchEntry
{
    public function __construct(
        /** The index the agent gave the entry; its outcome line names it. */
        public readonly int $index,
        /** The request's params overlaid with the entry's own (as its single request's). */
        public readonly array $server,
        public readonly string $body,
        /** The request's nonce: the first word of every line of the reply. */
        public readonly string $nonce,
    ) {
    }
}
