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

/** Records the log context it finds on the default channel, then adds its own (`order`). */
final class SeesLogContext implements ShouldQueue
{
    use InteractsWithQueue;
    use Queueable;

    public function __construct(public string $orderId)
    {
    }

    public function handle(): void
    {
        $log = \Illuminate\Container\Container::getInstance()->make('log');
        Recorded::$handled[] = [$this->orderId, json_encode($log->driver()->context)];
        $log->withContext(['order' => $this->orderId]);
    }
}

/** The default channel of the fake log managers: Illuminate\Log\Logger's context methods. */
final class FakeLogger
{
    public array $context = [];

    public function withContext(array $context): self
    {
        $this->context = array_merge($this->context, $context);

        return $this;
    }

    public function withoutContext(): self
    {
        $this->context = [];

        return $this;
    }
}

/** Laravel 8's LogManager: no withoutContext() of its own, __call forwards to driver(). */
class FakeLogManager
{
    public int $drivers = 0;

    public function __construct(public FakeLogger $logger = new FakeLogger())
    {
    }

    public function driver(): FakeLogger
    {
        ++$this->drivers;

        return $this->logger;
    }

    public function __call(string $method, array $parameters): mixed
    {
        return $this->driver()->{$method}(...$parameters);
    }
}

/** Laravel ≥ 10's LogManager: a withoutContext() of its own (every channel). */
final class FakeLogManagerWithOwnReset extends FakeLogManager
{
    public int $ownResets = 0;

    public function withoutContext(): self
    {
        ++$this->ownResets;
        $this->logger->withoutContext();

        return $this;
    }
}
