<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver;

/** Throw from a handler to ask the agent to retry after a delay (503 + Retry-After). */
class RetryLater extends \RuntimeException
{
    public function __construct(
        public readonly int $seconds,
        string $message = '',
        ?\Throwable $previous = null,
    ) {
        parent::__construct($message, 0, $previous);
    }
}
