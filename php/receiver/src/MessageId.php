<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver;

/** Message ids for publishers: without an AMQP message_id the agent has to make one up. */
final class MessageId
{
    /** A random (version 4) UUID. */
    public static function generate(): string
    {
        $bytes = random_bytes(16);
        $bytes[6] = chr((ord($bytes[6]) & 0x0f) | 0x40);
        $bytes[8] = chr((ord($bytes[8]) & 0x3f) | 0x80);

        return vsprintf('%s%s-%s-%s-%s-%s%s%s', str_split(bin2hex($bytes), 4));
    }
}
