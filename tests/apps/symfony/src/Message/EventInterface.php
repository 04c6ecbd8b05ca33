<?php

declare(strict_types=1);

namespace App\Message;

/** Events go to the agent's event queue (the recipe's framework.messenger.routing). */
interface EventInterface
{
}
