<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Messenger;

use Symfony\Component\HttpFoundation\RequestStack;

/**
 * The W3C trace context of the work in progress: the one of the message being handled (set by
 * the controller for the time of the dispatch), else the current HTTP request's `traceparent`
 * header. Handlers read it; PublishMiddleware puts it on every message they publish.
 */
final class TraceContext
{
    /** @var list<array{0: ?string, 1: ?string}> */
    private array $stack = [];

    public function __construct(private readonly ?RequestStack $requests = null)
    {
    }

    public function traceparent(): ?string
    {
        if ($this->stack !== []) {
            return $this->stack[array_key_last($this->stack)][0];
        }
        $request = $this->requests?->getCurrentRequest();
        $value = $request?->headers->get('traceparent');

        return is_string($value) && $value !== '' ? $value : null;
    }

    public function tracestate(): ?string
    {
        if ($this->stack !== []) {
            return $this->stack[array_key_last($this->stack)][1];
        }
        $value = $this->requests?->getCurrentRequest()?->headers->get('tracestate');

        return is_string($value) && $value !== '' ? $value : null;
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
}
