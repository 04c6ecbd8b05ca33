<?php

declare(strict_types=1);

namespace App\Message;

/** An event whose handler does nothing: bench/php/batch-entry.php measures the bundle around it. */
final class Ping implements EventInterface
{
    public function __construct(public string $id)
    {
    }
}
