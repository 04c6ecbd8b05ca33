<?php

declare(strict_types=1);

namespace App\Handler;

use App\Message\Ping;

/** The trivial handler of bench/php/batch-entry.php: the bundle's own cost per message is what is left. */
final class PingHandler
{
    public function __invoke(Ping $ping): void
    {
    }
}
