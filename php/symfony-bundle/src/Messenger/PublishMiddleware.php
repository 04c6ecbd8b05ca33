<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Messenger;

use AmqpAgent\Receiver\TraceContext;
use Symfony\Component\Messenger\Bridge\Amqp\Transport\AmqpStamp;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\Middleware\MiddlewareInterface;
use Symfony\Component\Messenger\Middleware\StackInterface;
use Symfony\Component\Messenger\Stamp\ReceivedStamp;

/**
 * On the publishing side: every envelope dispatched (not received) gets a stable MessageIdStamp
 * and the current trace context, and — when Messenger's AMQP transport is installed — an
 * AmqpStamp that publishes them as the AMQP `message_id` property and the `traceparent` /
 * `tracestate` headers. Without a message_id, the agent has to make one up for every message.
 *
 * Register it on the buses that publish (before send_message, where custom middleware go):
 *     framework.messenger.buses.messenger.bus.default.middleware: ['amqp_agent.publish_middleware']
 */
final class PublishMiddleware implements MiddlewareInterface
{
    public function __construct(private readonly TraceContext $trace)
    {
    }

    public function handle(Envelope $envelope, StackInterface $stack): Envelope
    {
        if ($envelope->last(ReceivedStamp::class) === null) {
            $envelope = self::stamp($envelope, $this->trace);
        }

        return $stack->next()->handle($envelope, $stack);
    }

    public static function stamp(Envelope $envelope, TraceContext $trace): Envelope
    {
        $id = $envelope->last(MessageIdStamp::class);
        if (!$id instanceof MessageIdStamp) {
            $id = MessageIdStamp::generate();
            $envelope = $envelope->with($id);
        }
        $tp = $envelope->last(TraceparentStamp::class);
        if (!$tp instanceof TraceparentStamp && ($current = $trace->traceparent()) !== null) {
            $tp = new TraceparentStamp($current, $trace->tracestate());
            $envelope = $envelope->with($tp);
        }
        if (!class_exists(AmqpStamp::class)) {
            return $envelope;
        }

        $previous = $envelope->last(AmqpStamp::class);
        $attributes = $previous?->getAttributes() ?? [];
        $headers = $attributes['headers'] ?? [];
        $attributes['message_id'] ??= $id->id;
        if ($tp instanceof TraceparentStamp) {
            $headers['traceparent'] ??= $tp->traceparent;
            if ($tp->tracestate !== null) {
                $headers['tracestate'] ??= $tp->tracestate;
            }
        }
        if ($headers !== []) {
            $attributes['headers'] = $headers;
        }

        return $envelope->with(new AmqpStamp($previous?->getRoutingKey(), $previous?->getFlags() ?? 0 /* AMQP_NOPARAM */, $attributes));
    }
}
