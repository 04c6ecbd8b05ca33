<?php

declare(strict_types=1);

namespace App\Jobs;

use Illuminate\Contracts\Queue\ShouldBeEncrypted;

/**
 * A command, published to the agent's command queue. Encrypted (ShouldBeEncrypted): the
 * publisher encrypts it with the app's APP_KEY, the route decrypts it (events stay plain).
 */
final class ShipOrder extends Recorded implements ShouldBeEncrypted
{
    protected function kind(): string
    {
        return 'command';
    }
}
