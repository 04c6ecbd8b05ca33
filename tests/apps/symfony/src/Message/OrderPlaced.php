<?php

declare(strict_types=1);

namespace App\Message;

final class OrderPlaced implements EventInterface
{
    /** @param string $behave ok | recover-once | unrecoverable */
    public function __construct(public string $test, public string $id, public string $behave = 'ok')
    {
    }
}
