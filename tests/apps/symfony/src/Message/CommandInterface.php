<?php

declare(strict_types=1);

namespace App\Message;

/** Commands go to the agent's command queue (the recipe's framework.messenger.routing). */
interface CommandInterface
{
}
