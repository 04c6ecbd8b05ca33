<?php

declare(strict_types=1);

namespace App\Spy;

use AmqpAgent\SymfonyBundle\Messenger\AgentMessageStamp;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\MessageBusInterface;

/** Test-only decorator of the bus: keeps the envelope the bundle dispatches while it is handled. */
final class DispatchSpy implements MessageBusInterface
{
    public function __construct(private readonly MessageBusInterface $inner, private readonly Delivery $delivery)
    {
    }

    public function dispatch(object $message, array $stamps = []): Envelope
    {
        if (!$message instanceof Envelope || $message->last(AgentMessageStamp::class) === null) {
            return $this->inner->dispatch($message, $stamps);
        }
        $this->delivery->dispatched = $message;
        try {
            return $this->inner->dispatch($message, $stamps);
        } finally {
            $this->delivery->dispatched = null;
        }
    }
}
