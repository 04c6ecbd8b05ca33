<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Messenger;

use AmqpAgent\Receiver\MessageId;
use Symfony\Component\Messenger\Stamp\StampInterface;

/**
 * The envelope's stable id, published as the AMQP message_id. Sendable: it travels with the
 * envelope, so Messenger's own retries keep the id too.
 */
final class MessageIdStamp implements StampInterface
{
    public function __construct(public readonly string $id)
    {
    }

    /** A random (version 4) UUID. */
    public static function generate(): self
    {
        return new self(MessageId::generate());
    }
}
