<?php

declare(strict_types=1);

namespace App\Message;

/** Commands go to the agent's command queue (framework.messenger.routing). */
interface AppCommand
{
}
