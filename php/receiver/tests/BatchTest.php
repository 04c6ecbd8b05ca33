<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver\Tests;

use AmqpAgent\Receiver\Batch;
use AmqpAgent\Receiver\BatchOutput;
use AmqpAgent\Receiver\MalformedBatch;
use AmqpAgent\Receiver\Message;
use AmqpAgent\Receiver\PermanentFailure;
use AmqpAgent\Receiver\Receiver;
use AmqpAgent\Receiver\RetryLater;
use AmqpAgent\Receiver\Signature;
use PHPUnit\Framework\Attributes\DataProvider;
use PHPUnit\Framework\TestCase;

final class BatchTest extends TestCase
{
    /** @var list<string> what the reply's body received, chunk by chunk */
    private array $written = [];

    public function testEachEntryGetsItsOwnOutcomeLineInOrder(): void
    {
        [$server, $body] = BatchFixture::request([
            ['id' => 'a', 'body' => '{"do":"ok"}'],
            ['id' => 'b', 'body' => '{"do":"permanent"}'],
            ['id' => 'c', 'body' => '{"do":"later"}'],
            ['id' => 'd', 'body' => '{"do":"crash"}'],
            ['id' => 'e', 'body' => '{"do":"ok"}'],
        ]);
        $seen = [];
        $refused = $this->handle($server, $body, function (Message $m) use (&$seen): void {
            $seen[] = "{$m->messageId}@{$m->attempt}";
            match ($m->json()['do']) {
                'permanent' => throw new PermanentFailure("bad\ninput"),
                'later' => throw new RetryLater(30, 'busy'),
                'crash' => throw new \LogicException('bug'),
                default => null,
            };
        });
        self::assertNull($refused);
        self::assertSame(['a@1', 'b@1', 'c@1', 'd@1', 'e@1'], $seen);
        self::assertSame([
            "0 ack\n",
            "1 reject 422 unrecoverable: AmqpAgent\\Receiver\\PermanentFailure: bad\\ninput\n",
            "2 retry 503 30 recoverable: AmqpAgent\\Receiver\\RetryLater: busy\n",
            "3 retry 500 - LogicException: bug\n",
            "4 ack\n",
            "done 5\n",
        ], BatchFixture::outcomes($this->written));
        $n = BatchFixture::NONCE;
        self::assertSame("{$n} 0 start\n", $this->written[0], 'the first start line alone, before anything runs');
        self::assertSame("{$n} 0 ack\n{$n} 1 start\n", $this->written[1], 'an outcome line and the next start line in one write');
        self::assertSame("{$n} 4 ack\n{$n} done 5\n", $this->written[5], 'the last outcome line and the trailer in one write');
        self::assertCount(6, $this->written, 'one write (and flush) per entry, and one before the first');
    }

    public function testAnEntryWithABadSignatureIsRejectedAlone(): void
    {
        [$server, $body] = BatchFixture::request([
            ['id' => 'a', 'body' => '{"pay":10}'],
            ['id' => 'b', 'body' => '{"pay":99999}', 'signed_body' => '{"pay":1}'],
            ['id' => 'c', 'body' => '{"pay":30}'],
        ]);
        $handled = [];
        $this->handle($server, $body, function (Message $m) use (&$handled): void {
            $handled[] = $m->messageId;
        });
        self::assertSame(['a', 'c'], $handled);
        self::assertSame(["0 ack\n", "1 reject 401 invalid signature\n", "2 ack\n", "done 3\n"], BatchFixture::outcomes($this->written));
    }

    public function testOneMibBinaryEntriesArriveByteForByte(): void
    {
        $first = BatchFixture::binary(1 << 20, 1);
        $second = BatchFixture::binary(1 << 20, 2);
        self::assertStringContainsString("\n", $first);
        self::assertStringContainsString("\0", $first);
        [$server, $body] = BatchFixture::request([
            ['id' => 'bin-1', 'body' => $first, 'content_type' => 'application/octet-stream'],
            ['id' => 'small', 'body' => 'x'],
            ['id' => 'bin-2', 'body' => $second, 'content_type' => 'application/octet-stream'],
        ]);
        self::assertLessThan(2 * (1 << 20) + 2048, strlen($body), 'raw bytes, no base64');
        $got = [];
        $this->handle($server, $body, function (Message $m) use (&$got): void {
            $got[$m->messageId] = $m->body;
        });
        self::assertSame(["0 ack\n", "1 ack\n", "2 ack\n", "done 3\n"], BatchFixture::outcomes($this->written));
        self::assertSame(hash('sha256', $first), hash('sha256', $got['bin-1']));
        self::assertSame('x', $got['small']);
        self::assertSame(hash('sha256', $second), hash('sha256', $got['bin-2']));
    }

    public function testAnEntrySeesItsOwnParamsOnly(): void
    {
        [$server, $body] = BatchFixture::request(
            [['id' => 'a', 'body' => 'one'], ['id' => 'b', 'body' => 'two', 'attempt' => 3]],
            'event',
            ['HTTP_X_AGENT_MESSAGE_ID' => 'forged-at-request-level'],
        );
        $entries = Batch::parse($server, $body);
        self::assertCount(2, $entries);
        self::assertSame('a', $entries[0]->server['HTTP_X_AGENT_MESSAGE_ID']);
        self::assertSame('3', $entries[1]->server['HTTP_X_AGENT_ATTEMPT']);
        self::assertSame('3', $entries[1]->server['CONTENT_LENGTH']);
        self::assertSame('event', $entries[1]->server['HTTP_X_AGENT_SUBJECT']);
        self::assertArrayNotHasKey('HTTP_X_AGENT_BATCH', $entries[0]->server);
        self::assertFalse(Batch::isBatch($entries[0]->server), 'an entry is an ordinary message');
        self::assertSame('two', $entries[1]->body);
    }

    public function testHandlerOutputStaysOutOfTheReplyAndResetRunsBetweenEntries(): void
    {
        [$server, $body] = BatchFixture::request([
            ['id' => 'a', 'body' => '1'], ['id' => 'b', 'body' => '2'], ['id' => 'c', 'body' => '3'],
        ]);
        $resets = 0;
        $level = ob_get_level();
        $this->handle($server, $body, static function (Message $m): void {
            echo "debug output of {$m->messageId}\n";
            ob_start();
            echo 'an unclosed buffer';
        }, function () use (&$resets): void {
            ++$resets;
            $n = BatchFixture::NONCE;
            $i = $resets;
            self::assertSame("{$n} " . ($i - 1) . " ack\n{$n} {$i} start\n", end($this->written), 'a reset runs after the next entry\'s start line');
        });
        self::assertSame($level, ob_get_level());
        self::assertSame(["0 ack\n", "1 ack\n", "2 ack\n", "done 3\n"], BatchFixture::outcomes($this->written));
        self::assertSame(2, $resets, 'between entries, not after the last');
    }

    /** @dataProvider malformed */
    #[DataProvider('malformed')]
    public function testAMalformedBatchIsRefusedWholeAndNothingRuns(callable $spoil): void
    {
        [$server, $body] = BatchFixture::request([['id' => 'a', 'body' => 'one'], ['id' => 'b', 'body' => 'two']]);
        [$server, $body] = $spoil($server, $body);
        $server['CONTENT_LENGTH'] = (string) strlen($body); // the body as PHP received it
        $called = false;
        $response = $this->handle($server, $body, function () use (&$called): void {
            $called = true;
        });
        self::assertNotNull($response);
        self::assertSame(400, $response->status);
        self::assertFalse($called);
        self::assertSame([], $this->written, 'no head, no line: the agent judges the batch by the 400');
    }

    public static function malformed(): array
    {
        $cut = static fn (int $n) => static fn (array $s, string $b) => [$s, substr($b, 0, $n)];

        return [
            'cut in the last body' => [$cut(-3)],
            'cut before the last LF' => [$cut(-1)],
            'cut in an entry head' => [static fn (array $s, string $b) => [$s, substr($b, 0, 22)]],
            'count differs' => [static fn (array $s, string $b) => [['HTTP_X_AGENT_BATCH_SIZE' => '3'] + $s, $b]],
            'other version' => [static fn (array $s, string $b) => [['HTTP_X_AGENT_BATCH' => '1'] + $s, $b]],
            'version 1 body' => [static fn (array $s, string $b) => [$s, "AMQP-AGENT-BATCH 1\n" . substr($b, strpos($b, "\n") + 1)]],
            'no nonce' => [static fn (array $s, string $b) => [$s, "AMQP-AGENT-BATCH 2\n" . substr($b, strpos($b, "\n") + 1)]],
            'nonce not hex' => [static fn (array $s, string $b) => [$s, "AMQP-AGENT-BATCH 2 0123456789ABCDEFxyz\n" . substr($b, strpos($b, "\n") + 1)]],
            'other magic' => [static fn (array $s, string $b) => [$s, 'X' . substr($b, 1)]],
            'field outside the list' => [static fn (array $s, string $b) => [$s, str_replace('HTTP_X_AGENT_EXCHANGE=', 'HTTP_X_AGENT_SUBJEC=', $b)]],
            'trailing garbage' => [static fn (array $s, string $b) => [$s, $b . 'x']],
        ];
    }

    public function testABodyCutByPostMaxSizeIsARetryNotADeadLetter(): void
    {
        [$server, $body] = BatchFixture::request([['id' => 'a', 'body' => 'one']]);
        $called = false;
        $response = $this->handle($server, '', function () use (&$called): void {
            $called = true;
        });
        self::assertSame(503, $response?->status);
        self::assertSame("amqp-agent: batch body incomplete: raise post_max_size\n", $response?->body);
        self::assertFalse($called);
        self::assertNotSame('', $body);
    }

    public function testTheRequestIsRefusedWithoutSecretOrPost(): void
    {
        [$server, $body] = BatchFixture::request([['id' => 'a', 'body' => 'one']]);
        $receiver = new Receiver(new Signature([]), static fn () => null);
        $open = fn () => new BatchOutput(fn (string $c) => $this->written[] = $c);
        $refused = $receiver->handleBatch($server, $body, static fn () => null, $open, null, BatchFixture::T);
        self::assertSame(503, $refused?->status);
        self::assertSame("amqp-agent: signing secret not configured\n", $refused?->body);
        $receiver = new Receiver(new Signature([BatchFixture::SECRET]), static fn () => null);
        self::assertSame(405, $receiver->handleBatch(['REQUEST_METHOD' => 'GET'] + $server, $body, static fn () => null, $open, null, BatchFixture::T)?->status);
        self::assertSame([], $this->written);
    }

    public function testTheAgentsKnownAnswerBatchParsesAndVerifies(): void
    {
        $dir = __DIR__ . '/../../../tests/vectors';
        $body = (string) file_get_contents("{$dir}/batch-v2.bin");
        $server = [
            'REQUEST_METHOD' => 'POST',
            'HTTP_X_AGENT_SUBJECT' => 'event',
            'HTTP_X_AGENT_BATCH' => '2',
            'HTTP_X_AGENT_BATCH_SIZE' => '2',
        ];
        $receiver = new Receiver(new Signature(['0123456789abcdef']), static fn () => null);
        $seen = [];
        $refused = $receiver->handleBatch($server, $body, static function (Message $m) use (&$seen): void {
            $seen[] = [$m->messageId, $m->attempt, $m->body, $m->type];
        }, fn () => new BatchOutput(fn (string $c) => $this->written[] = $c), null, 1800000000);
        self::assertNull($refused);
        self::assertSame([['m-0', 2, '{"a":1}', 'user.created'], ['m-2', 2, "line\nwith\r\nbreaks and \0 NUL", 'user.created']], $seen);
        self::assertSame(["0 ack\n", "2 ack\n", "done 2\n"], BatchFixture::outcomes($this->written, '0123456789abcdef0123456789abcdef'));
    }

    public function testAReasonIsCutOnACharacterBoundary(): void
    {
        // 999 bytes, then é (C3 A9): a cut at 1,000 bytes would split it.
        $reason = str_repeat('a', 999) . "\u{e9}tat";
        $line = BatchOutput::line(3, new \AmqpAgent\Receiver\Response(422, [], $reason));
        self::assertSame('3 reject 422 ' . str_repeat('a', 999) . "\n", $line);
        self::assertSame(1, preg_match('//u', $line), 'valid UTF-8');
        // Through Response::permanent (the single reply's body is cut the same way).
        $body = \AmqpAgent\Receiver\Response::permanent(str_repeat('b', 998) . "\u{20ac}")->body;
        self::assertSame(str_repeat('b', 998) . "\n", $body);
        self::assertSame("\u{20ac}", \AmqpAgent\Receiver\Response::cut("\u{20ac}x", 3));
        self::assertSame('', \AmqpAgent\Receiver\Response::cut("\u{20ac}x", 2));
        // Bytes that are not UTF-8 are left to the agent (it replaces them), never cut into more.
        self::assertSame("\xff\xfe", \AmqpAgent\Receiver\Response::cut("\xff\xfe\xfd", 2));
    }

    public function testOutcomeLinesMapEveryResponse(): void
    {
        $cases = [
            [new \AmqpAgent\Receiver\Response(200, ['X-Agent-Ack' => '1']), "7 ack\n"],
            [new \AmqpAgent\Receiver\Response(200), "7 retry 500 - status 200: no reason given\n"],
            [new \AmqpAgent\Receiver\Response(429, ['Retry-After' => '10'], "slow down\n"), "7 retry 429 10 slow down\n"],
            [new \AmqpAgent\Receiver\Response(405, [], "method not allowed\n"), "7 reject 405 method not allowed\n"],
            [new \AmqpAgent\Receiver\Response(503, ['Retry-After' => 'soon'], ''), "7 retry 503 - no reason given\n"],
        ];
        foreach ($cases as [$response, $line]) {
            self::assertSame($line, BatchOutput::line(7, $response));
        }
    }

    private function handle(array $server, string $body, callable $handler, ?callable $reset = null): ?\AmqpAgent\Receiver\Response
    {
        $receiver = new Receiver(new Signature([BatchFixture::SECRET]), static fn () => null);
        $opened = 0;
        $response = $receiver->handleBatch($server, $body, $handler, function () use (&$opened): BatchOutput {
            ++$opened;

            return new BatchOutput(fn (string $chunk) => $this->written[] = $chunk);
        }, $reset, BatchFixture::T);
        self::assertLessThanOrEqual(1, $opened);

        return $response;
    }
}
