<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Messenger;

use Symfony\Component\Messenger\Stamp\NonSendableStampInterface;

/** On envelopes the agent delivered: which delivery this is (middleware can read it). */
final class AgentMessageStamp implements NonSendableStampInterface
{
    public function __construct(
        public readonly string $subject,
        public readonly string $messageId,
        public readonly int $attempt,
        public readonly bool $redelivered,
        public readonly ?string $traceparent,
    ) {
    }
}
