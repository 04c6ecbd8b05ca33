<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver;

/** Throw from a handler when retrying can never help: the agent dead-letters the message (422). */
class PermanentFailure extends \RuntimeException
{
}
