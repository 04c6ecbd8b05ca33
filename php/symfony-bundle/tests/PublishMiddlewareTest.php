<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Tests;

use AmqpAgent\SymfonyBundle\Messenger\MessageIdStamp;
use AmqpAgent\SymfonyBundle\Messenger\PublishMiddleware;
use AmqpAgent\Receiver\TraceContext;
use AmqpAgent\SymfonyBundle\Messenger\TraceparentStamp;
use PHPUnit\Framework\TestCase;
use Symfony\Component\Messenger\Bridge\Amqp\Transport\AmqpStamp;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\MessageBus;
use Symfony\Component\Messenger\Middleware\MiddlewareInterface;
use Symfony\Component\Messenger\Middleware\StackInterface;
use Symfony\Component\Messenger\Stamp\ReceivedStamp;
use Symfony\Component\Messenger\Transport\Serialization\PhpSerializer;

final class PublishMiddlewareTest extends TestCase
{
    private const TP = '00-11111111111111111111111111111111-2222222222222222-01';

    public function testEveryPublishedEnvelopeGetsAMessageIdAndTheCurrentTraceparent(): void
    {
        $trace = new TraceContext();
        $sent = $trace->within(self::TP, 'k=v', fn () => $this->dispatch($trace, new Envelope(new OrderPlaced('o'))));

        $amqp = $sent->last(AmqpStamp::class);
        $id = $sent->last(MessageIdStamp::class)?->id;
        self::assertMatchesRegularExpression('/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/', (string) $id);
        self::assertSame($id, $amqp?->getAttributes()['message_id']);
        self::assertSame(['traceparent' => self::TP, 'tracestate' => 'k=v'], $amqp?->getAttributes()['headers']);
    }

    public function testTheIdIsStableAcrossRetriesAndExplicitStampsWin(): void
    {
        $trace = new TraceContext();
        $first = $this->dispatch($trace, new Envelope(new OrderPlaced('o'), [new TraceparentStamp(self::TP)]));
        // Messenger's retries re-send the decoded envelope: the sendable MessageIdStamp travels with it.
        $serializer = new PhpSerializer();
        $again = $serializer->decode($serializer->encode($first));
        $second = $this->dispatch($trace, $again);

        self::assertSame($first->last(MessageIdStamp::class)?->id, $second->last(AmqpStamp::class)?->getAttributes()['message_id']);
        self::assertSame(self::TP, $second->last(AmqpStamp::class)?->getAttributes()['headers']['traceparent']);
    }

    public function testAnExistingAmqpStampKeepsItsRoutingKeyHeadersAndMessageId(): void
    {
        $stamp = new AmqpStamp('orders', 0, ['message_id' => 'mine', 'headers' => ['x' => 'y']]);
        $sent = $this->dispatch(new TraceContext(), new Envelope(new OrderPlaced('o'), [$stamp, new TraceparentStamp(self::TP)]));
        $amqp = $sent->last(AmqpStamp::class);
        self::assertSame('orders', $amqp?->getRoutingKey());
        self::assertSame('mine', $amqp?->getAttributes()['message_id']);
        self::assertSame(['x' => 'y', 'traceparent' => self::TP], $amqp?->getAttributes()['headers']);
    }

    public function testReceivedEnvelopesAreLeftAlone(): void
    {
        $sent = $this->dispatch(new TraceContext(), new Envelope(new OrderPlaced('o'), [new ReceivedStamp('amqp-agent')]));
        self::assertNull($sent->last(AmqpStamp::class));
    }

    private function dispatch(TraceContext $trace, Envelope $envelope): Envelope
    {
        $last = null;
        $capture = new class($last) implements MiddlewareInterface {
            public function __construct(private ?Envelope &$last)
            {
            }

            public function handle(Envelope $envelope, StackInterface $stack): Envelope
            {
                $this->last = $envelope;

                return $envelope;
            }
        };
        (new MessageBus([new PublishMiddleware($trace), $capture]))->dispatch($envelope);

        return $last;
    }
}
