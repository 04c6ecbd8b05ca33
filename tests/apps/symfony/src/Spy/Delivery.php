<?php

declare(strict_types=1);

namespace App\Spy;

use Symfony\Component\Messenger\Envelope;

/**
 * Test-only: the envelope the agent delivered, as the transport serializer decoded it (before
 * the bundle adds its own stamps) and as the bundle dispatched it. The handlers record from it
 * that the publisher's stamps survived the serializer (tests/it/symfony.rs).
 */
final class Delivery
{
    public ?Envelope $decoded = null;
    public ?Envelope $dispatched = null;
}
