<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver;

/**
 * A message names a class its app does not accept from the broker: 422, dead-lettered, with a
 * reason that starts `class not allowed: <class>` (what the agent keeps as x-agent-last-error).
 * Nothing of the class was constructed.
 */
final class ClassNotAllowed extends PermanentFailure
{
    public function __construct(public readonly string $class, string $setting)
    {
        parent::__construct(sprintf('class not allowed: %s (not in %s)', $class, $setting));
    }
}
