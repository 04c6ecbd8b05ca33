<?php

declare(strict_types=1);

namespace App\Jobs;

/** An event, published to the agent's event queue. */
final class OrderShipped extends Recorded
{
    protected function kind(): string
    {
        return 'event';
    }
}
