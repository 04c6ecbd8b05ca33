<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Tests;

use AmqpAgent\Receiver\Receiver;
use AmqpAgent\Receiver\Signature;
use AmqpAgent\SymfonyBundle\Controller\MessageController;
use AmqpAgent\SymfonyBundle\Messenger\AgentMessageStamp;
use AmqpAgent\SymfonyBundle\Messenger\EnvelopeDecoder;
use AmqpAgent\SymfonyBundle\Messenger\MessageAllowlist;
use AmqpAgent\SymfonyBundle\Messenger\ExceptionMapper;
use AmqpAgent\Receiver\TraceContext;
use PHPUnit\Framework\TestCase;
use Symfony\Component\HttpFoundation\Request;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\Exception\RecoverableMessageHandlingException;
use Symfony\Component\Messenger\Exception\UnrecoverableMessageHandlingException;
use Symfony\Component\Messenger\Handler\HandlersLocator;
use Symfony\Component\Messenger\MessageBus;
use Symfony\Component\Messenger\Middleware\HandleMessageMiddleware;
use Symfony\Component\Messenger\Middleware\MiddlewareInterface;
use Symfony\Component\Messenger\Middleware\StackInterface;
use Symfony\Component\Messenger\Stamp\ReceivedStamp;
use Symfony\Component\Messenger\Transport\Serialization\PhpSerializer;

final class MessageControllerTest extends TestCase
{
    private const TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';

    /** @var list<Envelope> what reached the spy middleware (where send_message would be) */
    private array $seen = [];
    /** @var list<string|null> the trace context each handler call saw */
    private array $traces = [];
    private ?\Throwable $throw = null;

    public function testAValidRequestIsDispatchedOnceSynchronouslyAndAcked(): void
    {
        [$server, $body] = Fixtures::request(new PhpSerializer(), new Envelope(new OrderPlaced('o-1')), 'id-7', 2, self::TRACEPARENT);
        $response = $this->controller()->__invoke(Request::create('/_agent/messages/event', 'POST', [], [], [], $server, $body), 'event');

        self::assertSame(200, $response->getStatusCode());
        self::assertSame('1', $response->headers->get('X-Agent-Ack'));
        self::assertSame('2', $response->headers->get('X-Agent-Accepts-Batches'));
        self::assertCount(1, $this->seen);
        $envelope = $this->seen[0];
        self::assertSame('amqp-agent', $envelope->last(ReceivedStamp::class)?->getTransportName(), 'routing never sends it again');
        self::assertSame('id-7', $envelope->last(AgentMessageStamp::class)?->messageId);
        self::assertSame(2, $envelope->last(AgentMessageStamp::class)?->attempt);
        self::assertSame([self::TRACEPARENT], $this->traces, 'the handler sees the incoming trace context');
    }

    public function testABadSignatureIs401AndNothingIsDispatched(): void
    {
        [$server, $body] = Fixtures::request(new PhpSerializer(), new Envelope(new OrderPlaced('o-1')));
        $server['HTTP_X_AGENT_MESSAGE_ID'] = 'another-id';
        self::assertSame(401, $this->controller()->handle($server, $body)->status);
        self::assertSame([], $this->seen);
    }

    public function testHandlerExceptionsMapToTheAgentsOutcomes(): void
    {
        [$server, $body] = Fixtures::request(new PhpSerializer(), new Envelope(new OrderPlaced('o-1')));
        $this->throw = new UnrecoverableMessageHandlingException('bad');
        self::assertSame(422, $this->controller()->handle($server, $body)->status);
        $this->throw = new RecoverableMessageHandlingException('later');
        self::assertSame(503, $this->controller()->handle($server, $body)->status);
        $this->throw = new \RuntimeException('db');
        self::assertSame(500, $this->controller()->handle($server, $body)->status);
    }

    public function testAnUndecodableBodyIsDeadLettered(): void
    {
        [$server] = Fixtures::request(new PhpSerializer(), new Envelope(new OrderPlaced('o-1')));
        $body = 'not a serialized envelope }';
        $server['HTTP_X_AGENT_SIGNATURE'] = Signature::header([Fixtures::SECRET], time(), \AmqpAgent\Receiver\SignedFields::fromServer($server, $body));
        self::assertSame(422, $this->controller()->handle($server, $body)->status);
        self::assertSame([], $this->seen);
    }

    private function controller(): MessageController
    {
        $trace = new TraceContext();
        $spy = new class($this->seen) implements MiddlewareInterface {
            public function __construct(private array &$seen)
            {
            }

            public function handle(Envelope $envelope, StackInterface $stack): Envelope
            {
                $this->seen[] = $envelope;

                return $stack->next()->handle($envelope, $stack);
            }
        };
        $handler = function (OrderPlaced $m) use ($trace): void {
            $this->traces[] = $trace->traceparent();
            if ($this->throw !== null) {
                throw $this->throw;
            }
        };
        $bus = new MessageBus([$spy, new HandleMessageMiddleware(new HandlersLocator([OrderPlaced::class => [$handler]]))]);

        return new MessageController(
            new Receiver(new Signature([Fixtures::SECRET]), static fn () => null),
            new EnvelopeDecoder(new PhpSerializer(), new MessageAllowlist([OrderPlaced::class])),
            $bus,
            new ExceptionMapper(),
            $trace,
        );
    }
}
