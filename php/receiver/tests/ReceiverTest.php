<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver\Tests;

use AmqpAgent\Receiver\ClassNotAllowed;
use AmqpAgent\Receiver\ConfigCheck;
use AmqpAgent\Receiver\Message;
use AmqpAgent\Receiver\PermanentFailure;
use AmqpAgent\Receiver\Receiver;
use AmqpAgent\Receiver\RetryLater;
use AmqpAgent\Receiver\Signature;
use PHPUnit\Framework\Attributes\DataProvider;
use PHPUnit\Framework\TestCase;

final class ReceiverTest extends TestCase
{
    /** @var list<string> */
    private array $logged = [];

    public function testAHandledMessageIsAcked(): void
    {
        [$server, $body, $t] = $this->request();
        $seen = null;
        $response = $this->receiver()->handle($server, $body, function (Message $m) use (&$seen): void {
            $seen = $m;
        }, $t);
        self::assertSame(200, $response->status);
        self::assertTrue($response->isAck());
        self::assertArrayNotHasKey('X-Agent-Accepts-Batches', $response->headers, 'handle() alone says nothing of batches');
        $accepting = $response->acceptingBatches();
        self::assertSame('2', $accepting->headers['X-Agent-Accepts-Batches'] ?? null, 'an entry point that routes batches says so');
        self::assertTrue($accepting->isAck());
        self::assertSame($response->body, $accepting->body);
        self::assertInstanceOf(Message::class, $seen);
        self::assertSame('{"hello":"world"}', $seen->body);
        self::assertSame('application/json', $seen->contentType, 'the original content type, not CONTENT_TYPE');
    }

    /** @dataProvider outcomes */
    #[DataProvider('outcomes')]
    public function testExceptionMapping(\Throwable $thrown, int $status, ?string $retryAfter): void
    {
        [$server, $body, $t] = $this->request();
        $response = $this->receiver()->handle($server, $body, static function () use ($thrown): void {
            throw $thrown;
        }, $t);
        self::assertSame($status, $response->status);
        self::assertSame($retryAfter, $response->headers['Retry-After'] ?? null);
        self::assertFalse($response->isAck());
        self::assertArrayNotHasKey('X-Agent-Accepts-Batches', $response->acceptingBatches()->headers, 'only an ack says it');
        self::assertCount(1, $this->logged);
    }

    public static function outcomes(): array
    {
        return [
            'permanent → 422' => [new PermanentFailure('bad input'), 422, null],
            'retry later → 503 + Retry-After' => [new RetryLater(30, 'busy'), 503, '30'],
            'anything else → 500' => [new \LogicException('bug'), 500, null],
            'an error → 500' => [new \TypeError('bug'), 500, null],
        ];
    }

    public function testABadSignatureIs401AndNeverHandled(): void
    {
        [$server, $body, $t] = $this->request();
        $called = false;
        $response = $this->receiver()->handle($server, $body . 'x', function () use (&$called): void {
            $called = true;
        }, $t);
        self::assertSame(401, $response->status);
        self::assertFalse($called);
    }

    public function testAStaleTimestampIsARetryNeverA401(): void
    {
        [$server, $body, $t] = $this->request();
        $called = false;
        $response = $this->receiver()->handle($server, $body, function () use (&$called): void {
            $called = true;
        }, $t + 3600);
        self::assertSame(503, $response->status);
        self::assertSame((string) Receiver::STALE_RETRY_SECONDS, $response->headers['Retry-After']);
        self::assertFalse($called);
    }

    public function testNoSecretFailsClosedWithARetry(): void
    {
        [$server, $body, $t] = $this->request();
        $response = (new Receiver(new Signature([]), fn (string $l) => $this->logged[] = $l))
            ->handle($server, $body, static fn () => null, $t);
        // 503 without Retry-After: the agent retries on its schedule; the body is the package's
        // stable reason, which the agent quotes in its log and x-agent-last-error.
        self::assertSame(503, $response->status);
        self::assertArrayNotHasKey('Retry-After', $response->headers);
        self::assertSame("amqp-agent: signing secret not configured\n", $response->body);
        self::assertSame(['[amqp-agent] AGENT_SIGNING_SECRET is not set; refusing all messages'], $this->logged);
    }

    /**
     * The reasons name the exception's class and message, as the Symfony bundle's
     * ExceptionMapper does, cut at 1,000 bytes on a character boundary.
     *
     * @dataProvider failures
     */
    #[DataProvider('failures')]
    public function testAFailureNamesTheExceptionClassAndMessage(\Throwable $e, int $status, string $body): void
    {
        [$server, $body0, $t] = $this->request();
        $response = $this->receiver()->handle($server, $body0, static fn () => throw $e, $t);
        self::assertSame($status, $response->status);
        self::assertSame($body, $response->body);
    }

    public static function failures(): array
    {
        return [
            'anything else' => [new \LogicException('bug'), 500, "LogicException: bug\n"],
            'no message' => [new \LogicException(), 500, "LogicException\n"],
            'permanent' => [new PermanentFailure('bad'), 422, "unrecoverable: AmqpAgent\\Receiver\\PermanentFailure: bad\n"],
            'class not allowed' => [new ClassNotAllowed('App\\X', 'allowed_jobs'), 422, "class not allowed: App\\X (not in allowed_jobs)\n"],
            'retry later' => [new RetryLater(7, 'busy'), 503, "recoverable: AmqpAgent\\Receiver\\RetryLater: busy\n"],
            'long, cut at a character' => [new \RuntimeException(str_repeat('a', 980) . str_repeat("\u{20ac}", 10)), 500, 'RuntimeException: ' . str_repeat('a', 980) . "\n"],
        ];
    }

    public function testTheConfigCheckSaysWhatIsMissing(): void
    {
        self::assertSame([true, 'ok: 2 signing secrets, v1 refused, clock skew 300 s'], ConfigCheck::signature(static fn () => new Signature(['a', 'b'])));
        self::assertSame([false, 'amqp-agent: signing secret not configured (AGENT_SIGNING_SECRET is empty)'], ConfigCheck::signature(static fn () => new Signature([])));
        self::assertSame([false, 'amqp-agent: signing secret not configured: Environment variable not found: "AGENT_SIGNING_SECRET".'], ConfigCheck::signature(static fn () => throw new \RuntimeException('Environment variable not found: "AGENT_SIGNING_SECRET".')));
        self::assertSame([true, 'ok: x'], ConfigCheck::builds('x', static fn () => 1));
        self::assertSame([false, 'amqp-agent: configuration error: LogicException: no bus'], ConfigCheck::builds('x', static fn () => throw new \LogicException('no bus')));
    }

    public function testOnlyPost(): void
    {
        [$server, $body, $t] = $this->request();
        $server['REQUEST_METHOD'] = 'GET';
        self::assertSame(405, $this->receiver()->handle($server, $body, static fn () => null, $t)->status);
    }

    public function testMessageFromServer(): void
    {
        $m = Message::fromServer([
            'HTTP_X_AGENT_SUBJECT' => 'command',
            'HTTP_X_AGENT_MESSAGE_ID' => 'id-1',
            'HTTP_X_AGENT_ATTEMPT' => '3',
            'HTTP_X_AGENT_REDELIVERED' => '1',
            'HTTP_X_AGENT_ROUTING_KEY' => 'orders',
            'HTTP_X_AGENT_EXCHANGE' => 'app',
            'HTTP_X_AGENT_TYPE' => 'App\\PlaceOrder',
            'HTTP_X_AGENT_CORRELATION_ID' => 'c-1',
            'HTTP_X_AGENT_TIMESTAMP' => '1700000000',
            'HTTP_X_AGENT_HEADERS' => '{"type":"App\\\\PlaceOrder","n":1}',
            'HTTP_X_AGENT_CONTENT_TYPE' => '',
            'CONTENT_TYPE' => 'application/octet-stream',
            'HTTP_TRACEPARENT' => '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
        ], "\x00\xff");
        self::assertSame('command', $m->subject);
        self::assertSame(3, $m->attempt);
        self::assertTrue($m->redelivered);
        self::assertSame('App\\PlaceOrder', $m->header('type'));
        self::assertSame(1700000000, $m->timestamp);
        self::assertNull($m->contentType, 'an empty original content type is none, not CONTENT_TYPE');
        self::assertSame("\x00\xff", $m->body);
        self::assertSame('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', $m->traceparent);
        self::assertNull($m->json());

        $old = Message::fromServer(['CONTENT_TYPE' => 'text/plain'], '');
        self::assertSame('text/plain', $old->contentType, 'agents before the content-type param');
        self::assertSame(1, $old->attempt);
    }

    private function receiver(): Receiver
    {
        return new Receiver(new Signature(['s3cret']), fn (string $line) => $this->logged[] = $line);
    }

    /** @return array{0: array<string, string>, 1: string, 2: int} a correctly signed request */
    private function request(): array
    {
        $case = Vectors::cases()['simple'][0];

        return [Vectors::server($case), Vectors::body($case), $case['t']];
    }
}
