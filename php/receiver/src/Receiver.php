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

    /**
     * The request from the PHP globals, verified and handled; the response sent. A batch request
     * (docs/batches.md) has each entry verified and handled in turn, its outcome line flushed as
     * soon as it is done; $reset runs between entries (what your app must forget between
     * messages).
     *
     * @param (callable(): void)|null $reset
     */
    public static function run(callable $handler, ?Signature $signature = null, ?callable $reset = null): void
    {
        $receiver = new self($signature ?? Signature::fromEnv($_SERVER));
        // Always php://input: the agent may neutralise CONTENT_TYPE, and $_POST is never the message.
        $body = (string) file_get_contents('php://input');
        if (Batch::isBatch($_SERVER)) {
            $output = null;
            $refused = $receiver->handleBatch($_SERVER, $body, $handler, static function () use (&$output): BatchOutput {
                return $output ??= BatchOutput::sapi();
            }, $reset);
            $refused?->send();

            return;
        }
        // This entry point routes batches (above): its acks say so.
        $receiver->handle($_SERVER, $body, $handler)->acceptingBatches()->send();
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
            return $this->secretNotConfigured();
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

    /**
     * Handles a batch: each entry exactly as handle() would handle it as a single request (its
     * own signature, its own outcome), in order. Returns the response that refuses the whole
     * request (nothing was handled), or null once every outcome line and the trailer were
     * written through the output that $open returns (called once, before the first line).
     *
     * @param callable(Message): mixed      $handler
     * @param callable(): BatchOutput       $open
     * @param (callable(): void)|null       $reset runs between entries
     */
    public function handleBatch(array $server, string $body, callable $handler, callable $open, ?callable $reset = null, ?int $now = null): ?Response
    {
        $entries = $this->openBatch($server, $body);
        if ($entries instanceof Response) {
            return $entries;
        }
        $this->runBatch($entries, fn (array $s, string $b): Response => $this->handle($s, $b, $handler, $now), $open(), $reset);

        return null;
    }

    /**
     * The entries of a batch request, or the response that refuses it whole: wrong method (405),
     * no secret or a body shorter than CONTENT_LENGTH (over post_max_size) (503 `amqp-agent: …`:
     * the agent retries), a malformed body (400). Frameworks call this before they
     * choose between that response and a streamed one.
     *
     * @return list<BatchEntry>|Response
     */
    public function openBatch(array $server, string $body): array|Response
    {
        if (($server['REQUEST_METHOD'] ?? '') !== 'POST') {
            return Response::methodNotAllowed();
        }
        if (!$this->signature->hasSecrets()) {
            return $this->secretNotConfigured();
        }
        $announced = (string) ($server['CONTENT_LENGTH'] ?? '');
        if (ctype_digit($announced) && (int) $announced !== strlen($body)) {
            // PHP dropped the body (over post_max_size): a misconfiguration, not a bad batch.
            ($this->log)("[amqp-agent] batch body of {$announced} bytes arrived with " . strlen($body) . ' (raise post_max_size above limits.max_batch_bytes)');

            return Response::misconfigured('batch body incomplete: raise post_max_size');
        }
        try {
            return Batch::parse($server, $body);
        } catch (MalformedBatch $e) {
            ($this->log)("[amqp-agent] malformed batch: {$e->getMessage()}");

            return new Response(400, [], "malformed batch: {$e->getMessage()}\n");
        }
    }

    /**
     * Runs $exchange (an entry's params and body in, its response out: the framework's
     * single-message path, signature check included) for each entry in order: its `start` line,
     * then the entry, then its outcome line, each written as soon as it is known; then the
     * trailer. An outcome line and the next entry's `start` line go out in one write, as do the
     * last outcome and the trailer: one write per entry (BatchOutput). Output of the exchange
     * never reaches the reply, not even when the handler calls exit() or dies of a fatal error
     * (PHP flushes open output buffers then): it goes to a buffer whose handler discards it.
     * $reset runs between entries, after the next entry's `start` line (a reset that kills PHP
     * is that entry's failure): what the app must forget between messages (the framework's
     * long-running worker resets).
     *
     * @param list<BatchEntry>                         $entries
     * @param callable(array, string): Response         $exchange
     * @param (callable(): void)|null                  $reset
     */
    public function runBatch(array $entries, callable $exchange, BatchOutput $output, ?callable $reset = null): void
    {
        if ($entries === []) {
            $output->done('', 0);

            return;
        }
        $last = count($entries) - 1;
        $output->start($entries[0]);
        foreach ($entries as $i => $entry) {
            $level = ob_get_level();
            // Whatever flushes this buffer (the handler, exit(), a fatal error) goes through its
            // handler, which discards it.
            ob_start(static fn (string $buffer): string => '');
            try {
                $response = $exchange($entry->server, $entry->body);
            } catch (\Throwable $e) {
                // The exchange maps handler failures itself; this is a bug in the bridge.
                ($this->log)(sprintf('[amqp-agent] batch entry %d: %s: %s', $entry->index, $e::class, $e->getMessage()));
                $response = Response::retry();
            } finally {
                while (ob_get_level() > $level) {
                    ob_end_clean();
                }
            }
            if ($i === $last) {
                $output->finish($entry, $response, count($entries));

                return;
            }
            $output->outcome($entry, $response, $entries[$i + 1]);
            if ($reset !== null) {
                $reset();
            }
        }
    }

    /**
     * The response for a handler's exception, with the same reasons as the Symfony bundle's
     * ExceptionMapper (the exception's class and message, one line of at most 1,000 bytes cut
     * on a character boundary):
     *   ClassNotAllowed   422 `class not allowed: …`
     *   PermanentFailure  422 `unrecoverable: <class>: <message>`
     *   RetryLater        503 + Retry-After, `recoverable: <class>: <message>`
     *   anything else     500 `<class>: <message>`
     */
    public function failed(Message $message, \Throwable $e): Response
    {
        $context = sprintf('message %s (attempt %d)', $message->messageId, $message->attempt);
        if ($e instanceof ClassNotAllowed) {
            ($this->log)("[amqp-agent] {$context} refused: {$e->getMessage()}");

            return Response::permanent($e->getMessage());
        }
        if ($e instanceof PermanentFailure) {
            ($this->log)("[amqp-agent] {$context} failed permanently: {$e->getMessage()}");

            return Response::permanent('unrecoverable: ' . self::describe($e));
        }
        if ($e instanceof RetryLater) {
            $reason = $e->getMessage() !== '' ? ": {$e->getMessage()}" : '';
            ($this->log)("[amqp-agent] {$context} retry in {$e->seconds}s{$reason}");

            return Response::retryAfter($e->seconds, 'recoverable: ' . self::describe($e));
        }
        ($this->log)(sprintf('[amqp-agent] %s failed: %s', $context, self::describe($e)));

        return Response::retry(self::describe($e));
    }

    /** `<class>: <message>` (the class alone when the message is empty). */
    public static function describe(\Throwable $e): string
    {
        return $e->getMessage() === '' ? $e::class : $e::class . ': ' . $e->getMessage();
    }

    /** No AGENT_SIGNING_SECRET: every message is refused with 503 (retried) and a stable reason. */
    private function secretNotConfigured(): Response
    {
        ($this->log)('[amqp-agent] AGENT_SIGNING_SECRET is not set; refusing all messages');

        return Response::misconfigured(Response::SECRET_NOT_CONFIGURED);
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
