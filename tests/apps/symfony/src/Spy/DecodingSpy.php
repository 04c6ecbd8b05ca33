<?php

declare(strict_types=1);

namespace App\Spy;

use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\Transport\Serialization\SerializerInterface;

/** Test-only decorator of the transport serializer: keeps the last envelope decoded. */
final class DecodingSpy implements SerializerInterface
{
    public function __construct(private readonly SerializerInterface $inner, private readonly Delivery $delivery)
    {
    }

    public function decode(array $encodedEnvelope): Envelope
    {
        return $this->delivery->decoded = $this->inner->decode($encodedEnvelope);
    }

    public function encode(Envelope $envelope): array
    {
        return $this->inner->encode($envelope);
    }
}
