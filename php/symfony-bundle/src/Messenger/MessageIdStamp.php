<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Messenger;

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
        $bytes = random_bytes(16);
        $bytes[6] = chr((ord($bytes[6]) & 0x0f) | 0x40);
        $bytes[8] = chr((ord($bytes[8]) & 0x3f) | 0x80);

        return new self(vsprintf('%s%s-%s-%s-%s-%s%s%s', str_split(bin2hex($bytes), 4)));
    }
}
