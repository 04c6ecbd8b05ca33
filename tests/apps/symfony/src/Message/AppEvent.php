<?php

declare(strict_types=1);

namespace App\Message;

/** Events go to the agent's event queue (framework.messenger.routing). */
interface AppEvent
{
}
