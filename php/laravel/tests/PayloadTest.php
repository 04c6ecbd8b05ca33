<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel\Tests;

use AmqpAgent\Laravel\PayloadDecoder;
use AmqpAgent\Laravel\Publisher;
use AmqpAgent\Laravel\Transport;
use AmqpAgent\Receiver\ClassAllowlist;
use AmqpAgent\Receiver\PermanentFailure;
use AmqpAgent\Receiver\TraceContext;
use Illuminate\Container\Container;
use Illuminate\Encryption\Encrypter;
use Illuminate\Queue\SyncQueue;
use PHPUnit\Framework\TestCase;

final class PayloadTest extends TestCase
{
    public function testDecodesLaravelsOwnQueuePayload(): void
    {
        $queue = new SyncQueue();
        $queue->setContainer(new Container());
        $create = new \ReflectionMethod($queue, 'createPayload');
        $create->setAccessible(true);
        $body = $create->invoke($queue, new PlaceOrder('o-1', 'x'), 'default');

        self::assertEquals(new PlaceOrder('o-1', 'x'), self::decoder()->decode($body));
    }

    public function testDecodesAnEncryptedJob(): void
    {
        $encrypter = new Encrypter(random_bytes(32), 'aes-256-cbc');
        $body = json_encode(['data' => ['commandName' => PlaceOrder::class, 'command' => $encrypter->encrypt(serialize(new PlaceOrder('o-2')))]]);

        self::assertEquals(new PlaceOrder('o-2'), self::decoder($encrypter)->decode($body));
        $this->expectException(PermanentFailure::class);
        self::decoder()->decode($body);
    }

    public function testAnUnknownClassIsPermanent(): void
    {
        $this->expectException(PermanentFailure::class);
        self::decoder()->decode(json_encode(['data' => ['command' => 'O:7:"Missing":0:{}']]));
    }

    private static function decoder(?Encrypter $encrypter = null): PayloadDecoder
    {
        return new PayloadDecoder(new ClassAllowlist(['AmqpAgent\\Laravel\\Tests\\']), null, $encrypter);
    }

    public function testThePublisherSetsMessageIdTraceparentAndTheSubjectQueue(): void
    {
        $transport = new class implements Transport {
            public array $sent = [];

            public function publish(string $queue, string $body, array $properties): void
            {
                $this->sent[] = [$queue, $body, $properties];
            }
        };
        $trace = new TraceContext();
        $publisher = new Publisher($transport, $trace, ['event' => 'app.event', 'command' => 'app.command']);
        $tp = '00-11111111111111111111111111111111-2222222222222222-01';
        $id = $trace->within($tp, null, fn () => $publisher->publish(new PlaceOrder('o-3'), 'command'));
        $publisher->publish(new PlaceOrder('o-4'), 'event', 'fixed-id');

        [$queue, $body, $props] = $transport->sent[0];
        self::assertSame('app.command', $queue);
        self::assertSame($id, $props['message_id']);
        self::assertSame($id, json_decode($body, true)['uuid'], 'message_id is the payload uuid');
        self::assertSame(['traceparent' => $tp], $props['headers']);
        self::assertSame(PlaceOrder::class, $props['type']);
        self::assertEquals(new PlaceOrder('o-3'), self::decoder()->decode($body));

        self::assertSame(['app.event', 'fixed-id', []], [$transport->sent[1][0], $transport->sent[1][2]['message_id'], $transport->sent[1][2]['headers']]);
        $this->expectException(\InvalidArgumentException::class);
        $publisher->publish(new PlaceOrder('o-5'), 'unknown');
    }
}
