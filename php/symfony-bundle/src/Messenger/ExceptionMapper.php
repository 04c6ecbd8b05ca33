<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Messenger;

use AmqpAgent\Receiver\ClassNotAllowed;
use AmqpAgent\Receiver\PermanentFailure;
use AmqpAgent\Receiver\Response;
use AmqpAgent\Receiver\RetryLater;
use Symfony\Component\Messenger\Exception\DelayedMessageHandlingException;
use Symfony\Component\Messenger\Exception\HandlerFailedException;
use Symfony\Component\Messenger\Exception\MessageDecodingFailedException;
use Symfony\Component\Messenger\Exception\RecoverableExceptionInterface;
use Symfony\Component\Messenger\Exception\UnrecoverableExceptionInterface;

/**
 * The exception a dispatch threw, as the agent's outcome — the decisions Messenger's own worker
 * makes (SendFailedMessageForRetryListener::shouldRetry):
 *
 *  - any recoverable exception (RecoverableExceptionInterface, RetryLater): 503, retried, with
 *    Retry-After when it carries a delay (getRetryDelay(), milliseconds, Symfony ≥ 7.2);
 *  - every exception unrecoverable (UnrecoverableExceptionInterface, PermanentFailure), an
 *    envelope that cannot be decoded, or a class the allowlist refuses (`class not allowed: …`):
 *    422, dead-lettered at once;
 *  - anything else: 500, retried on the agent's schedule, dead-lettered after max_attempts.
 */
final class ExceptionMapper
{
    public function map(\Throwable $e): Response
    {
        if ($e instanceof ClassNotAllowed) {
            return Response::permanent($e->getMessage());
        }
        if ($e instanceof MessageDecodingFailedException) {
            return Response::permanent('cannot decode the envelope: ' . $e->getMessage());
        }
        $leaves = self::leaves($e);

        $delays = [];
        $recoverable = false;
        foreach ($leaves as $leaf) {
            if ($leaf instanceof RetryLater) {
                $recoverable = true;
                $delays[] = $leaf->seconds;
            } elseif ($leaf instanceof RecoverableExceptionInterface) {
                $recoverable = true;
                $ms = method_exists($leaf, 'getRetryDelay') ? $leaf->getRetryDelay() : null;
                if (is_int($ms) && $ms >= 0) {
                    $delays[] = intdiv($ms + 999, 1000);
                }
            }
        }
        if ($recoverable) {
            $reason = 'recoverable: ' . self::describe($leaves);

            return $delays === [] ? new Response(503, [], $reason . "\n") : Response::retryAfter(max($delays), $reason);
        }

        foreach ($leaves as $leaf) {
            if (!$leaf instanceof UnrecoverableExceptionInterface && !$leaf instanceof PermanentFailure) {
                return Response::retry(self::describe($leaves));
            }
        }

        return Response::permanent('unrecoverable: ' . self::describe($leaves));
    }

    /**
     * The handlers' own exceptions, unwrapped from Messenger's wrappers:
     * WrappedExceptionsInterface::getWrappedExceptions() on Symfony ≥ 6.4,
     * HandlerFailedException::getNestedExceptions() and
     * DelayedMessageHandlingException::getExceptions() before (both removed in 7.0).
     *
     * @return list<\Throwable>
     */
    public static function leaves(\Throwable $e): array
    {
        $nested = null;
        if (method_exists($e, 'getWrappedExceptions')) {
            $nested = $e->getWrappedExceptions();
        } elseif ($e instanceof HandlerFailedException && method_exists($e, 'getNestedExceptions')) {
            $nested = $e->getNestedExceptions();
        } elseif ($e instanceof DelayedMessageHandlingException && method_exists($e, 'getExceptions')) {
            $nested = $e->getExceptions();
        }
        if ($nested === null || $nested === []) {
            return [$e];
        }
        $leaves = [];
        foreach ($nested as $inner) {
            array_push($leaves, ...self::leaves($inner));
        }

        return $leaves;
    }

    /** @param list<\Throwable> $leaves */
    private static function describe(array $leaves): string
    {
        return implode('; ', array_map(static fn (\Throwable $e): string => $e::class . ': ' . $e->getMessage(), $leaves));
    }
}
