<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Messenger;

use Symfony\Component\Messenger\Stamp\StampInterface;

/**
 * The W3C trace context to publish the message with (AMQP headers `traceparent`, `tracestate`).
 * Give it at dispatch to choose it; else PublishMiddleware adds the current TraceContext.
 */
final class TraceparentStamp implements StampInterface
{
    public function __construct(
        public readonly string $traceparent,
        public readonly ?string $tracestate = null,
    ) {
    }
}
