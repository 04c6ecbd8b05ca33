<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver;

/**
 * The W3C trace context of the work in progress: the one of the message being handled (the
 * bridges enter it for the time of the dispatch), else what $fallback gives (the current HTTP
 * request's `traceparent` header in a framework). Handlers read it; the publishing helpers put
 * it on every message they publish, so a trace follows a chain of messages.
 */
final class TraceContext
{
    /** @var list<array{0: ?string, 1: ?string}> */
    private array $stack = [];

    /** @var (\Closure(): array{0: ?string, 1: ?string})|null */
    private readonly ?\Closure $fallback;

    /** @param (callable(): array{0: ?string, 1: ?string})|null $fallback [traceparent, tracestate] */
    public function __construct(?callable $fallback = null)
    {
        $this->fallback = $fallback !== null ? \Closure::fromCallable($fallback) : null;
    }

    public function traceparent(): ?string
    {
        return $this->current()[0];
    }

    public function tracestate(): ?string
    {
        return $this->current()[1];
    }

    /**
     * Runs $work with this trace context current.
     *
     * @template T
     * @param callable(): T $work
     * @return T
     */
    public function within(?string $traceparent, ?string $tracestate, callable $work): mixed
    {
        $this->stack[] = [$traceparent, $tracestate];
        try {
            return $work();
        } finally {
            array_pop($this->stack);
        }
    }

    /** @return array{0: ?string, 1: ?string} */
    private function current(): array
    {
        if ($this->stack !== []) {
            return $this->stack[array_key_last($this->stack)];
        }
        [$parent, $state] = $this->fallback !== null ? ($this->fallback)() : [null, null];

        return [$parent !== '' ? $parent : null, $state !== '' ? $state : null];
    }
}
