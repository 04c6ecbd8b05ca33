<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel\Tests;

use AmqpAgent\Laravel\Http\MessageController;
use AmqpAgent\Receiver\BatchOutput;
use AmqpAgent\Receiver\Tests\BatchFixture;
use Illuminate\Http\Request;
use PHPUnit\Framework\TestCase;
use Symfony\Component\HttpFoundation\StreamedResponse;

final class BatchTest extends TestCase
{
    /** @var list<string> */
    private array $written = [];

    protected function setUp(): void
    {
        Recorded::$handled = [];
    }

    public function testEachJobRunsWithItsOutcomeStreamed(): void
    {
        $singles = [
            TestApp::request(new PlaceOrder('o-1'), 'job-1'),
            TestApp::request(new PlaceOrder('o-2', 'permanent'), 'job-2'),
            TestApp::request(new PlaceOrder('o-3', 'retry'), 'job-3'),
            TestApp::request(new PlaceOrder('o-4'), 'job-4'),
            TestApp::request(new PlaceOrder('o-5', 'fail'), 'job-5'),
        ];
        // Entry 3 carries entry 0's signature: refused alone, never run.
        $singles[3][0]['HTTP_X_AGENT_SIGNATURE'] = $singles[0][0]['HTTP_X_AGENT_SIGNATURE'];
        [$server, $body] = BatchFixture::encode($singles, 'command');
        $controller = TestApp::make()->make(MessageController::class);

        $response = $controller(Request::create('/_agent/messages/command', 'POST', [], [], [], $server, $body), 'command');
        self::assertInstanceOf(StreamedResponse::class, $response);
        self::assertSame('2', $response->headers->get('X-Agent-Batch'));

        $controller->batch($server, $body, new BatchOutput(fn (string $c) => $this->written[] = $c))->sendContent();
        self::assertSame([
            "0 ack\n",
            "1 reject 422 unrecoverable: AmqpAgent\\Receiver\\PermanentFailure: bad order\n",
            "2 retry 503 30 recoverable: AmqpAgent\\Receiver\\RetryLater: stock service busy\n",
            "3 reject 401 invalid signature\n",
            "4 retry 500 - RuntimeException: db down\n",
            "done 5\n",
        ], BatchFixture::outcomes($this->written));
        self::assertSame([['o-1', null]], Recorded::$handled);
    }

    public function testScopedInstancesAreForgottenBetweenJobsAsTheQueueWorkerDoes(): void
    {
        $app = TestApp::make();
        $made = 0;
        $app->scoped('agent.test.scoped', static function () use (&$made): object {
            return (object) ['n' => ++$made];
        });
        [$server, $body] = BatchFixture::encode([
            TestApp::request(new SeesScoped('a'), 'job-a'),
            TestApp::request(new SeesScoped('b'), 'job-b'),
        ], 'command');
        $app->make(MessageController::class)->batch($server, $body, new BatchOutput(fn (string $c) => $this->written[] = $c))->sendContent();
        self::assertSame(["0 ack\n", "1 ack\n", "done 2\n"], BatchFixture::outcomes($this->written));
        [[, $a], [, $b]] = Recorded::$handled;
        [$a1, $a2] = explode('/', $a);
        self::assertSame($a1, $a2, 'one instance within a job');
        self::assertSame(['1/1', '2/2'], [$a, $b], 'a fresh instance for the next job');
    }

    /**
     * The log context is cleared between jobs as the queue worker clears it ($log->withoutContext()):
     * through the default channel with Laravel 8's LogManager (its __call), through the manager's
     * own method where it has one.
     */
    public function testTheLogContextIsClearedBetweenJobsAsTheQueueWorkerDoes(): void
    {
        foreach ([new FakeLogManager(), new FakeLogManagerWithOwnReset()] as $log) {
            Recorded::$handled = [];
            $this->written = [];
            $app = TestApp::make();
            $app->instance('log', $log);
            [$server, $body] = BatchFixture::encode([
                TestApp::request(new SeesLogContext('a'), 'job-a'),
                TestApp::request(new SeesLogContext('b'), 'job-b'),
                TestApp::request(new SeesLogContext('c'), 'job-c'),
            ], 'command');
            $app->make(MessageController::class)->batch($server, $body, new BatchOutput(fn (string $c) => $this->written[] = $c))->sendContent();
            self::assertSame(["0 ack\n", "1 ack\n", "2 ack\n", "done 3\n"], BatchFixture::outcomes($this->written));
            self::assertSame([['a', '[]'], ['b', '[]'], ['c', '[]']], Recorded::$handled, $log::class);
            self::assertSame(['order' => 'c'], $log->logger->context, 'the last job\'s context stays: no reset after the last entry');
            if ($log instanceof FakeLogManagerWithOwnReset) {
                self::assertSame(2, $log->ownResets, 'the manager\'s own withoutContext(), once between two jobs');
            }
        }
    }

    /** The payload decoder is resolved once per request, as for a single message. */
    public function testThePayloadDecoderIsResolvedOncePerBatch(): void
    {
        $app = TestApp::make();
        $made = 0;
        $app->extend(\AmqpAgent\Laravel\PayloadDecoder::class, static function (object $decoder) use (&$made): object {
            ++$made;

            return $decoder;
        });
        [$server, $body] = BatchFixture::encode([
            TestApp::request(new PlaceOrder('o-1'), 'job-1'),
            TestApp::request(new PlaceOrder('o-2'), 'job-2'),
            TestApp::request(new PlaceOrder('o-3'), 'job-3'),
        ], 'command');
        $app->make(MessageController::class)->batch($server, $body, new BatchOutput(fn (string $c) => $this->written[] = $c))->sendContent();
        self::assertSame(["0 ack\n", "1 ack\n", "2 ack\n", "done 3\n"], BatchFixture::outcomes($this->written));
        self::assertSame(1, $made);
        self::assertCount(3, Recorded::$handled);
    }

    public function testAMalformedBatchIsRefusedWhole(): void
    {
        [$server, $body] = BatchFixture::encode([TestApp::request(new PlaceOrder('o-1'))], 'command');
        $response = TestApp::make()->make(MessageController::class)->batch(['HTTP_X_AGENT_BATCH_SIZE' => '2'] + $server, $body);
        self::assertSame(400, $response->getStatusCode());
        self::assertSame([], Recorded::$handled);
    }
}
