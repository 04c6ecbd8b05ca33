<?php

declare(strict_types=1);

namespace App\Handler;

use App\Message\PlaceOrder;

final class CommandHandler extends Recorder
{
    public function __invoke(PlaceOrder $command): void
    {
        $this->handle('command', $command->test, $command->id, $command->behave);
    }
}
