<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\DependencyInjection;

use AmqpAgent\Receiver\Signature;

/** @internal builds the Signature from the (env-resolved) comma-separated secrets */
final class SignatureFactory
{
    public static function create(?string $secrets, int $clockSkew, bool $allowV1): Signature
    {
        return new Signature(Signature::splitSecrets((string) $secrets), $clockSkew, $allowV1);
    }
}
