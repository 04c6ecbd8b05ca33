<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\DependencyInjection;

use AmqpAgent\Receiver\TraceContext;
use Symfony\Component\HttpFoundation\RequestStack;

/** @internal the trace context, falling back to the current request's traceparent header */
final class TraceContextFactory
{
    public static function create(?RequestStack $requests): TraceContext
    {
        return new TraceContext(static function () use ($requests): array {
            $headers = $requests?->getCurrentRequest()?->headers;

            return [$headers?->get('traceparent'), $headers?->get('tracestate')];
        });
    }
}
