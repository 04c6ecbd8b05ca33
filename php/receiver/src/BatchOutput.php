<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver;

/**
 * Writes a batch reply: a `start` line before each entry runs and its outcome line once it is
 * done, each flushed at once (the agent settles the entry while the next one runs, and knows
 * which entry PHP was running if the request dies), then the `done` trailer. Every line starts
 * with the request's nonce (BatchEntry::$nonce): the agent takes no line without it.
 *
 * One write per entry: the first entry's `start` line goes out alone; after that, an entry's
 * outcome line and the next entry's `start` line share a write (outcome() with $next), and the
 * last outcome shares one with the trailer (finish()). Each write is a FastCGI record and, over
 * TCP, a segment the agent reads: half as many as a write per line.
 *
 *     <nonce> <index> start
 *     <nonce> <index> ack
 *     <nonce> <index> retry <status> <Retry-After seconds or -> <reason>
 *     <nonce> <index> reject <status> <reason>
 *     <nonce> done <count>
 *
 * The head (`Status: 200`, `X-Agent-Batch: 2`) must be sent before the first line: sapi() does
 * it itself; a framework sends it with its streamed response.
 */
final class BatchOutput
{
    /** Head the reply of a batch carries. */
    public const HEADERS = ['X-Agent-Batch' => Batch::VERSION, 'Content-Type' => 'text/plain; charset=utf-8'];

    /** @var \Closure(string): void */
    private readonly \Closure $write;

    /** @param callable(string): void $write writes and flushes one chunk of the reply body */
    public function __construct(callable $write)
    {
        $this->write = \Closure::fromCallable($write);
    }

    /** Through PHP's SAPI: the head now, every line echoed and flushed past any output buffer. */
    public static function sapi(): self
    {
        while (ob_get_level() > 0) {
            ob_end_clean();
        }
        http_response_code(200);
        foreach (self::HEADERS as $name => $value) {
            header("{$name}: {$value}");
        }

        return new self(static function (string $chunk): void {
            echo $chunk;
            flush();
        });
    }

    /**
     * Inside a framework's streamed response, whose head is already sent: every line echoed and
     * flushed past any output buffer (php.ini's `output_buffering` opens one).
     */
    public static function stream(): self
    {
        while (ob_get_level() > 0) {
            ob_end_flush();
        }

        return new self(static function (string $chunk): void {
            echo $chunk;
            flush();
        });
    }

    /** PHP is about to run this entry. */
    public function start(BatchEntry $entry): void
    {
        ($this->write)(self::startLine($entry));
    }

    /**
     * $entry is done. With $next, the entry PHP runs next, that entry's `start` line goes out in
     * the same write (call it before anything runs between the two: a reset between entries
     * belongs to the next entry).
     */
    public function outcome(BatchEntry $entry, Response $response, ?BatchEntry $next = null): void
    {
        $chunk = self::outcomeLine($entry, $response);
        if ($next !== null) {
            $chunk .= self::startLine($next);
        }
        ($this->write)($chunk);
    }

    /** The last entry is done: its outcome line and the `done <count>` trailer in one write. */
    public function finish(BatchEntry $entry, Response $response, int $count): void
    {
        ($this->write)(self::outcomeLine($entry, $response) . self::doneLine($entry->nonce, $count));
    }

    public function done(string $nonce, int $count): void
    {
        ($this->write)(self::doneLine($nonce, $count));
    }

    private static function outcomeLine(BatchEntry $entry, Response $response): string
    {
        return "{$entry->nonce} " . self::line($entry->index, $response);
    }

    private static function startLine(BatchEntry $entry): string
    {
        return "{$entry->nonce} {$entry->index} start\n";
    }

    private static function doneLine(string $nonce, int $count): string
    {
        return "{$nonce} done {$count}\n";
    }

    /**
     * The outcome line of a response (without the nonce in front): what that response would
     * mean for a single message. The reason is one line of at most 1,000 bytes, cut on a
     * character boundary.
     */
    public static function line(int $index, Response $response): string
    {
        if ($response->isAck()) {
            return "{$index} ack\n";
        }
        $status = $response->status;
        $reason = trim(str_replace(["\r", "\n", "\0"], ' ', $response->body));
        $reason = Response::cut($reason !== '' ? $reason : 'no reason given', 1000);
        if ($status >= 400 && $status < 500 && !in_array($status, [408, 425, 429], true)) {
            return "{$index} reject {$status} {$reason}\n";
        }
        if (!in_array($status, [408, 425, 429], true) && ($status < 500 || $status > 599)) {
            // 200 without the ack, 3xx: a retry, as a single reply with that status would be.
            $reason = "status {$status}: {$reason}";
            $status = 500;
        }
        $after = $response->headers['Retry-After'] ?? '-';

        return sprintf("%d retry %d %s %s\n", $index, $status, ctype_digit($after) ? $after : '-', $reason);
    }
}
