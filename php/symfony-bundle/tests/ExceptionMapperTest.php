<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Tests;

use AmqpAgent\Receiver\PermanentFailure;
use AmqpAgent\Receiver\RetryLater;
use AmqpAgent\SymfonyBundle\Messenger\ExceptionMapper;
use PHPUnit\Framework\Attributes\DataProvider;
use PHPUnit\Framework\TestCase;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\Exception\DelayedMessageHandlingException;
use Symfony\Component\Messenger\Exception\HandlerFailedException;
use Symfony\Component\Messenger\Exception\MessageDecodingFailedException;
use Symfony\Component\Messenger\Exception\RecoverableMessageHandlingException;
use Symfony\Component\Messenger\Exception\UnrecoverableMessageHandlingException;

final class ExceptionMapperTest extends TestCase
{
    /** @dataProvider cases */
    #[DataProvider('cases')]
    public function testMapping(\Throwable $e, int $status, ?string $retryAfter): void
    {
        $response = (new ExceptionMapper())->map($e);
        self::assertSame($status, $response->status);
        self::assertSame($retryAfter, $response->headers['Retry-After'] ?? null);
    }

    public static function cases(): array
    {
        $failed = static fn (\Throwable ...$e) => new HandlerFailedException(new Envelope(new OrderPlaced()), $e);
        $recoverable = new RecoverableMessageHandlingException('busy');
        $unrecoverable = new UnrecoverableMessageHandlingException('bad');

        return [
            'unrecoverable → 422' => [$unrecoverable, 422, null],
            'unrecoverable inside HandlerFailedException → 422' => [$failed($unrecoverable), 422, null],
            'every handler unrecoverable → 422' => [$failed($unrecoverable, new UnrecoverableMessageHandlingException('x')), 422, null],
            'recoverable → 503' => [$recoverable, 503, null],
            'recoverable inside HandlerFailedException → 503' => [$failed($recoverable), 503, null],
            'one recoverable among unrecoverable → 503 (Messenger retries too)' => [$failed($unrecoverable, $recoverable), 503, null],
            'recoverable with a delay in ms → 503 + Retry-After rounded up' => [$failed(new RetryInMs(1500)), 503, '2'],
            'the receiver\'s RetryLater → 503 + Retry-After' => [$failed(new RetryLater(30)), 503, '30'],
            'the receiver\'s PermanentFailure → 422' => [$failed(new PermanentFailure('no')), 422, null],
            'anything else → 500' => [new \RuntimeException('db down'), 500, null],
            'anything else inside HandlerFailedException → 500' => [$failed(new \LogicException('bug')), 500, null],
            'unrecoverable and something else → 500' => [$failed($unrecoverable, new \RuntimeException('x')), 500, null],
            'nested in DelayedMessageHandlingException → 422' => [new DelayedMessageHandlingException([$failed($unrecoverable)]), 422, null],
            'an envelope that cannot be decoded → 422' => [new MessageDecodingFailedException('no class'), 422, null],
        ];
    }
}
