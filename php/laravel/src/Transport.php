<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel;

/** Publishes one AMQP message on the default exchange to $queue (the Publisher's only I/O). */
interface Transport
{
    /**
     * @param array{message_id: string, content_type: string, type: string, delivery_mode: int, timestamp: int, headers: array<string, string>} $properties
     */
    public function publish(string $queue, string $body, array $properties): void;
}
