<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver;

/**
 * Verify a request, run the handler, map the outcome to a response. Pure: reads nothing global
 * (give it $_SERVER and php://input), writes nothing but through $log.
 */
final class Receiver
{
    /** Retry-After for a correctly signed request outside the clock-skew window. */
    public const STALE_RETRY_SECONDS = 5;

    /** @var \Closure(string): void */
    private readonly \Closure $log;

    /** @param (callable(string): void)|null $log defaults to error_log() */
    public function __construct(
        private readonly Signature $signature,
        ?callable $log = null,
    ) {
        $this->log = $log !== null ? \Closure::fromCallable($log) : static function (string $line): void {
            error_log($line);
        };
    }

    /** The request from the PHP globals, verified and handled; the response sent. */
    public static function run(callable $handler, ?Signature $signature = null): void
    {
        $receiver = new self($signature ?? Signature::fromEnv($_SERVER));
        // Always php://input: the agent may neutralise CONTENT_TYPE, and $_POST is never the message.
        $receiver->handle($_SERVER, (string) file_get_contents('php://input'), $handler)->send();
    }

    /**
     * Checks the method and the signature: null when the request may be handled, or the response
     * that refuses it. The framework bridges call this before decoding anything.
     */
    public function refuse(array $server, string $body, ?int $now = null): ?Response
    {
        if (($server['REQUEST_METHOD'] ?? '') !== 'POST') {
            return Response::methodNotAllowed();
        }
        if (!$this->signature->hasSecrets()) {
            // Misconfiguration, not a bad request: fail closed, and let the agent retry.
            ($this->log)('[amqp-agent] AGENT_SIGNING_SECRET is not set; refusing all messages');

            return Response::retry('signing secret not configured');
        }

        return match ($this->signature->check($server, $body, $now)) {
            SignatureCheck::Valid => null,
            SignatureCheck::Invalid => Response::unauthorized(),
            SignatureCheck::Stale => $this->stale($server),
        };
    }

    /** The message of a request that may be handled, or the response that refuses it. */
    public function admit(array $server, string $body, ?int $now = null): Message|Response
    {
        return $this->refuse($server, $body, $now) ?? Message::fromServer($server, $body);
    }

    /** @param callable(Message): mixed $handler */
    public function handle(array $server, string $body, callable $handler, ?int $now = null): Response
    {
        $message = $this->admit($server, $body, $now);
        if ($message instanceof Response) {
            return $message;
        }
        try {
            $handler($message);
        } catch (\Throwable $e) {
            return $this->failed($message, $e);
        }

        return Response::ack();
    }

    /** The response for a handler's exception: PermanentFailure 422, RetryLater 503, else 500. */
    public function failed(Message $message, \Throwable $e): Response
    {
        $context = sprintf('message %s (attempt %d)', $message->messageId, $message->attempt);
        if ($e instanceof PermanentFailure) {
            ($this->log)("[amqp-agent] {$context} failed permanently: {$e->getMessage()}");

            return Response::permanent($e->getMessage() !== '' ? $e->getMessage() : 'permanent failure');
        }
        if ($e instanceof RetryLater) {
            $reason = $e->getMessage() !== '' ? ": {$e->getMessage()}" : '';
            ($this->log)("[amqp-agent] {$context} retry in {$e->seconds}s{$reason}");

            return Response::retryAfter($e->seconds);
        }
        ($this->log)(sprintf('[amqp-agent] %s failed: %s: %s', $context, $e::class, $e->getMessage()));

        return Response::retry();
    }

    private function stale(array $server): Response
    {
        ($this->log)(sprintf(
            '[amqp-agent] message %s: signature timestamp outside the clock-skew window; asking for a retry (check the clocks)',
            (string) ($server['HTTP_X_AGENT_MESSAGE_ID'] ?? '-'),
        ));

        return Response::retryAfter(self::STALE_RETRY_SECONDS, 'signature timestamp outside the clock-skew window');
    }
}
