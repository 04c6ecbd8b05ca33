<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel;

/** Transport over the php-amqp extension (ext-amqp), one connection per process, opened lazily. */
final class AmqpExtTransport implements Transport
{
    private ?\AMQPExchange $exchange = null;

    /** @param array{host?: string, port?: int, vhost?: string, login?: string, password?: string} $credentials */
    public function __construct(private readonly array $credentials)
    {
    }

    public function publish(string $queue, string $body, array $properties): void
    {
        if (!extension_loaded('amqp')) {
            throw new \RuntimeException('the amqp extension (php-amqp) is needed to publish; or bind your own AmqpAgent\\Laravel\\Transport');
        }
        if ($this->exchange === null) {
            $connection = new \AMQPConnection($this->credentials);
            $connection->connect();
            $this->exchange = new \AMQPExchange(new \AMQPChannel($connection)); // the default exchange
        }
        $this->exchange->publish($body, $queue, \AMQP_NOPARAM, $properties);
    }
}
