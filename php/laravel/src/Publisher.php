<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel;

use AmqpAgent\Receiver\MessageId;
use AmqpAgent\Receiver\TraceContext;

/**
 * Sends a job or command to the agent's queue of a subject, as Laravel's own queue payload
 * (so the receiving side — this package, or a Laravel queue worker — decodes it as usual), with
 * the AMQP message_id set to the payload's uuid and the current traceparent in the headers.
 *
 *     app(Publisher::class)->publish(new PlaceOrder($id), 'command');
 */
final class Publisher
{
    /** @param array<string, string> $queues subject => queue name */
    public function __construct(
        private readonly Transport $transport,
        private readonly TraceContext $trace,
        private readonly array $queues,
    ) {
    }

    /** @return string the message id */
    public function publish(object $job, string $subject = 'command', ?string $messageId = null): string
    {
        $queue = $this->queues[$subject] ?? null;
        if (!is_string($queue) || $queue === '') {
            throw new \InvalidArgumentException(sprintf('no queue configured for the subject "%s" (amqp-agent.queues)', $subject));
        }
        $id = $messageId ?? MessageId::generate();
        $headers = [];
        if (($traceparent = $this->trace->traceparent()) !== null) {
            $headers['traceparent'] = $traceparent;
            if (($tracestate = $this->trace->tracestate()) !== null) {
                $headers['tracestate'] = $tracestate;
            }
        }
        $this->transport->publish($queue, self::payload($job, $id), [
            'message_id' => $id,
            'content_type' => 'application/json',
            'type' => $job::class,
            'delivery_mode' => 2,
            'timestamp' => time(),
            'headers' => $headers,
        ]);

        return $id;
    }

    /** Laravel's queue payload (Illuminate\Queue\Queue::createObjectPayload) for $job. */
    public static function payload(object $job, string $uuid): string
    {
        return json_encode([
            'uuid' => $uuid,
            'displayName' => method_exists($job, 'displayName') ? $job->displayName() : $job::class,
            'job' => 'Illuminate\\Queue\\CallQueuedHandler@call',
            'maxTries' => $job->tries ?? null,
            'maxExceptions' => $job->maxExceptions ?? null,
            'failOnTimeout' => $job->failOnTimeout ?? false,
            'backoff' => null,
            'timeout' => $job->timeout ?? null,
            'retryUntil' => null,
            'data' => [
                'commandName' => $job::class,
                'command' => serialize(clone $job),
            ],
        ], JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR);
    }
}
