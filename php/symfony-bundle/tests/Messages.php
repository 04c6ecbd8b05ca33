<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Tests;

final class OrderPlaced
{
    public function __construct(public string $orderId = '', public int $amount = 0, public string $note = '')
    {
    }
}

/** A recoverable exception carrying a delay the way Symfony ≥ 7.2 does (getRetryDelay(), ms). */
final class RetryInMs extends \RuntimeException implements \Symfony\Component\Messenger\Exception\RecoverableExceptionInterface
{
    public function __construct(private readonly int $ms)
    {
        parent::__construct("retry in {$ms} ms");
    }

    public function getRetryDelay(): ?int
    {
        return $this->ms;
    }
}
