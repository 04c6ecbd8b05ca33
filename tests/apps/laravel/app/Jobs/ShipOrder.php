<?php

declare(strict_types=1);

namespace App\Jobs;

/** A command, published to the agent's command queue. */
final class ShipOrder extends Recorded
{
    protected function kind(): string
    {
        return 'command';
    }
}
