<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel\Tests;

use AmqpAgent\Receiver\PermanentFailure;
use AmqpAgent\Receiver\RetryLater;
use AmqpAgent\Receiver\TraceContext;
use Illuminate\Bus\Queueable;
use Illuminate\Contracts\Queue\ShouldBeEncrypted;
use Illuminate\Contracts\Queue\ShouldQueue;
use Illuminate\Queue\InteractsWithQueue;

final class Recorded
{
    /** @var list<array{0: string, 1: ?string}> job id, traceparent seen */
    public static array $handled = [];
}

final class PlaceOrder implements ShouldQueue
{
    use InteractsWithQueue;
    use Queueable;

    public function __construct(public string $orderId, public string $behave = 'ok')
    {
    }

    public function handle(TraceContext $trace): void
    {
        match ($this->behave) {
            'permanent' => throw new PermanentFailure('bad order'),
            'retry' => throw new RetryLater(30, 'stock service busy'),
            'fail' => throw new \RuntimeException('db down'),
            default => null,
        };
        Recorded::$handled[] = [$this->orderId, $trace->traceparent()];
    }
}

/** A job whose payload Laravel encrypts (ShouldBeEncrypted): its card number must not travel in plaintext. */
final class PlaceSecretOrder implements ShouldQueue, ShouldBeEncrypted
{
    use InteractsWithQueue;
    use Queueable;

    public function __construct(public string $orderId, public string $cardNumber)
    {
    }

    public function handle(TraceContext $trace): void
    {
        Recorded::$handled[] = [$this->orderId . ':' . $this->cardNumber, $trace->traceparent()];
    }
}

/** Encrypted by its $shouldBeEncrypted property instead of the interface (Queue::jobShouldBeEncrypted()). */
final class PlaceFlaggedOrder implements ShouldQueue
{
    use InteractsWithQueue;
    use Queueable;

    public bool $shouldBeEncrypted = true;

    public function __construct(public string $orderId)
    {
    }

    public function handle(): void
    {
        Recorded::$handled[] = [$this->orderId, null];
    }
}

/** Records which instance (its number `n`) of the scoped `agent.test.scoped` binding it saw, twice. */
final class SeesScoped implements ShouldQueue
{
    use InteractsWithQueue;
    use Queueable;

    public function __construct(public string $orderId)
    {
    }

    public function handle(): void
    {
        $container = \Illuminate\Container\Container::getInstance();
        $first = $container->make('agent.test.scoped')->n;
        $second = $container->make('agent.test.scoped')->n;
        Recorded::$handled[] = [$this->orderId, "{$first}/{$second}"];
    }
}
