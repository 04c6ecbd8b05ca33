<?php

declare(strict_types=1);

namespace App\Handler;

use App\Message\OrderPlaced;

final class EventHandler extends Recorder
{
    public function __invoke(OrderPlaced $event): void
    {
        $this->handle('event', $event->test, $event->id, $event->behave);
    }
}
