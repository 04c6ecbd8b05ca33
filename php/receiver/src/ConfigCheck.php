<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver;

/**
 * What the check commands (`bin/console amqp-agent:check`, `php artisan amqp-agent:check`) and a
 * deploy script run before the pool serves: can the signature be built, and does it have a secret?
 * Without one every message is refused (503 `amqp-agent: signing secret not configured`): the
 * agent retries each one until `max_attempts`, then dead-letters it.
 */
final class ConfigCheck
{
    /**
     * [true, `ok: <summary>`] or [false, `amqp-agent: signing secret not configured[: <why>]`].
     *
     * @param callable(): Signature $build builds the signature as the route does (container, env)
     *
     * @return array{0: bool, 1: string}
     */
    public static function signature(callable $build): array
    {
        try {
            $signature = $build();
        } catch (\Throwable $e) {
            return [false, Response::PREFIX . Response::SECRET_NOT_CONFIGURED . ': ' . $e->getMessage()];
        }
        if (!$signature->hasSecrets()) {
            return [false, Response::PREFIX . Response::SECRET_NOT_CONFIGURED . ' (AGENT_SIGNING_SECRET is empty)'];
        }

        return [true, 'ok: ' . $signature->summary()];
    }

    /**
     * [true, `ok: <what>`] or [false, `amqp-agent: configuration error: <class>: <message>`]: the
     * service $what can be built.
     *
     * @param callable(): mixed $build
     *
     * @return array{0: bool, 1: string}
     */
    public static function builds(string $what, callable $build): array
    {
        try {
            $build();
        } catch (\Throwable $e) {
            return [false, Response::PREFIX . 'configuration error: ' . Receiver::describe($e)];
        }

        return [true, "ok: {$what}"];
    }
}
