<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver;

/**
 * What the agent does with an answer is decided by its status (and two headers):
 *
 *     200 + X-Agent-Ack: 1   ack          ack()
 *     503 + Retry-After: N   retry in N s retryAfter(N)
 *     500                    retry        retry()
 *     422                    dead-letter  permanent()
 *     401                    dead-letter  unauthorized() (bad signature: never handled)
 *     503 `amqp-agent: …`    pause        misconfigured() (the package cannot serve: no secret, …)
 *
 * An entry point that routes batch requests to the batch loop says so on its acks with
 * acceptingBatches() (`X-Agent-Accepts-Batches`, the batch protocol's version): an agent whose
 * subject leaves `batch_max` unset sends batches only after such a reply (docs/batches.md). The
 * packages' entry points do (Receiver::run, the Symfony and Laravel controllers); a controller of
 * your own that calls Receiver::handle() for single messages only must not.
 *
 * Every body is one line of plain text (`Content-Type: text/plain`): the agent quotes it in its
 * log, in `x-agent-last-error` and in `dead-letters list`.
 */
final class Response
{
    /** The prefix of every answer about the package's own configuration (misconfigured()). */
    public const PREFIX = 'amqp-agent: ';

    /** The reason given when AGENT_SIGNING_SECRET is not set (stable: match on it). */
    public const SECRET_NOT_CONFIGURED = 'signing secret not configured';

    /** @param array<string, string> $headers */
    public function __construct(
        public readonly int $status,
        public readonly array $headers = [],
        public readonly string $body = '',
    ) {
    }

    /** The header by which an ack says that batch requests are understood. */
    public const ACCEPTS_BATCHES = 'X-Agent-Accepts-Batches';

    public static function ack(): self
    {
        return new self(200, ['X-Agent-Ack' => '1'], "ok\n");
    }

    /** This response, saying on an ack that the entry point takes batch requests. */
    public function acceptingBatches(): self
    {
        if (!$this->isAck()) {
            return $this;
        }

        return new self($this->status, $this->headers + [self::ACCEPTS_BATCHES => Batch::VERSION], $this->body);
    }

    public static function retryAfter(int $seconds, string $reason = 'retry later'): self
    {
        return new self(503, ['Retry-After' => (string) max(0, $seconds)], self::line($reason));
    }

    public static function retry(string $reason = 'handler failed'): self
    {
        return new self(500, [], self::line($reason));
    }

    public static function permanent(string $reason = 'permanent failure'): self
    {
        return new self(422, [], self::line($reason));
    }

    /**
     * The package itself cannot serve (its configuration, not the message): 503 without
     * Retry-After, so the agent retries on its schedule, with the body `amqp-agent: <reason>`.
     * Reasons: SECRET_NOT_CONFIGURED, `configuration error: <class>: <message>`, `batch body
     * incomplete: raise post_max_size`.
     */
    public static function misconfigured(string $reason): self
    {
        return new self(503, [], self::line(self::PREFIX . $reason));
    }

    public static function unauthorized(): self
    {
        return new self(401, [], "invalid signature\n");
    }

    public static function methodNotAllowed(): self
    {
        return new self(405, ['Allow' => 'POST'], "method not allowed\n");
    }

    public function isAck(): bool
    {
        return $this->status === 200 && ($this->headers['X-Agent-Ack'] ?? '') === '1';
    }

    /** Writes the response with PHP's SAPI functions. */
    public function send(): void
    {
        http_response_code($this->status);
        header('Content-Type: text/plain; charset=utf-8');
        foreach ($this->headers as $name => $value) {
            header("{$name}: {$value}");
        }
        echo $this->body;
    }

    /** One line of text, without control characters (the agent logs response bodies). */
    private static function line(string $text): string
    {
        return self::cut(addcslashes($text, "\0..\37\177"), 1000) . "\n";
    }

    /**
     * At most $max bytes of $text, never ending inside a UTF-8 character: a character the limit
     * would split is left out whole. (Bytes that are not UTF-8 stay; the agent replaces them.)
     */
    public static function cut(string $text, int $max): string
    {
        if (strlen($text) <= $max) {
            return $text;
        }
        $end = $max;
        // Back over continuation bytes (10xxxxxx) to the start of the character cut at $end.
        while ($end > 0 && $end > $max - 4 && (ord($text[$end]) & 0xC0) === 0x80) {
            --$end;
        }

        return substr($text, 0, $end);
    }
}
