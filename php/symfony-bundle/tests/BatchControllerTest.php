<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Tests;

use AmqpAgent\Receiver\BatchOutput;
use AmqpAgent\Receiver\Receiver;
use AmqpAgent\Receiver\Signature;
use AmqpAgent\Receiver\TraceContext;
use AmqpAgent\Receiver\Tests\BatchFixture;
use AmqpAgent\SymfonyBundle\Controller\MessageController;
use AmqpAgent\SymfonyBundle\Messenger\EnvelopeDecoder;
use AmqpAgent\SymfonyBundle\Messenger\MessageAllowlist;
use AmqpAgent\SymfonyBundle\Messenger\ExceptionMapper;
use PHPUnit\Framework\TestCase;
use Symfony\Component\HttpFoundation\Request;
use Symfony\Component\HttpFoundation\StreamedResponse;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\Exception\UnrecoverableMessageHandlingException;
use Symfony\Component\Messenger\Handler\HandlersLocator;
use Symfony\Component\Messenger\MessageBus;
use Symfony\Component\Messenger\Middleware\HandleMessageMiddleware;
use Symfony\Component\Messenger\Transport\Serialization\PhpSerializer;

final class BatchControllerTest extends TestCase
{
    /** @var list<string> */
    private array $written = [];
    /** @var list<string> handled order ids, and `reset` / `clear` between them */
    private array $log = [];

    public function testEachEntryIsDispatchedWithItsOutcomeStreamedAndTheContainerResetBetween(): void
    {
        $serializer = new PhpSerializer();
        $singles = [
            Fixtures::request($serializer, new Envelope(new OrderPlaced('o-1')), 'id-1'),
            Fixtures::request($serializer, new Envelope(new OrderPlaced('unrecoverable')), 'id-2'),
            Fixtures::request($serializer, new Envelope(new OrderPlaced('o-3')), 'id-3'),
            Fixtures::request($serializer, new Envelope(new OrderPlaced('o-4')), 'id-4'),
        ];
        // Entry 3 claims another message id than the one it was signed for: refused alone.
        $singles[3][0]['HTTP_X_AGENT_MESSAGE_ID'] = 'id-forged';
        [$server, $body] = BatchFixture::encode($singles);

        $response = $this->controller()->__invoke(Request::create('/_agent/messages/event', 'POST', [], [], [], $server, $body), 'event');
        self::assertInstanceOf(StreamedResponse::class, $response);
        self::assertSame('2', $response->headers->get('X-Agent-Batch'));
        self::assertSame([], $this->log, 'nothing runs before the response streams');

        $streamed = $this->controller()->batch($server, $body, new BatchOutput(fn (string $c) => $this->written[] = $c));
        $streamed->sendContent();
        self::assertSame(["0 ack\n", "1 reject 422 unrecoverable: Symfony\\Component\\Messenger\\Exception\\UnrecoverableMessageHandlingException: bad\n", "2 ack\n", "3 reject 401 invalid signature\n", "done 4\n"], BatchFixture::outcomes($this->written));
        self::assertSame(['o-1', 'reset', 'clear', 'unrecoverable', 'reset', 'clear', 'o-3', 'reset', 'clear'], $this->log);
    }

    public function testAMalformedBatchIsRefusedWhole(): void
    {
        [$server, $body] = BatchFixture::encode([Fixtures::request(new PhpSerializer(), new Envelope(new OrderPlaced('o-1')))]);
        $response = $this->controller()->batch($server, substr($body, 0, -2));
        self::assertNotInstanceOf(StreamedResponse::class, $response);
        self::assertSame(400, $response->getStatusCode());
        self::assertSame([], $this->log);
    }

    private function controller(): MessageController
    {
        $handler = function (OrderPlaced $m): void {
            $this->log[] = $m->orderId;
            if ($m->orderId === 'unrecoverable') {
                throw new UnrecoverableMessageHandlingException('bad');
            }
        };
        $log = &$this->log;
        $resetter = new class($log) {
            public function __construct(private array &$log)
            {
            }

            public function reset(): void
            {
                $this->log[] = 'reset';
            }
        };
        $manager = new class($log) {
            public function __construct(private array &$log)
            {
            }

            public function clear(): void
            {
                $this->log[] = 'clear';
            }
        };
        $doctrine = new class($manager) {
            public function __construct(private object $manager)
            {
            }

            public function getManagers(): array
            {
                return ['default' => $this->manager];
            }
        };

        return new MessageController(
            new Receiver(new Signature([Fixtures::SECRET]), static fn () => null),
            new EnvelopeDecoder(new PhpSerializer(), new MessageAllowlist([OrderPlaced::class])),
            new MessageBus([new HandleMessageMiddleware(new HandlersLocator([OrderPlaced::class => [$handler]]))]),
            new ExceptionMapper(),
            new TraceContext(),
            'amqp-agent',
            null,
            $resetter,
            $doctrine,
        );
    }
}
