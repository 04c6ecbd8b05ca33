<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel;

use AmqpAgent\Receiver\Message;

/** The agent's delivery being handled (message id, attempt, headers, traceparent), for jobs that want it. */
final class AgentContext
{
    private ?Message $message = null;

    public function message(): ?Message
    {
        return $this->message;
    }

    /**
     * @template T
     * @param callable(): T $work
     * @return T
     */
    public function within(Message $message, callable $work): mixed
    {
        $previous = $this->message;
        $this->message = $message;
        try {
            return $work();
        } finally {
            $this->message = $previous;
        }
    }
}
