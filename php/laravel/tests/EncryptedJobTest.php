<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel\Tests;

use AmqpAgent\Laravel\Http\MessageController;
use AmqpAgent\Laravel\PayloadDecoder;
use AmqpAgent\Laravel\Publisher;
use AmqpAgent\Laravel\Transport;
use AmqpAgent\Receiver\ClassAllowlist;
use AmqpAgent\Receiver\TraceContext;
use Illuminate\Container\Container;
use Illuminate\Contracts\Encryption\Encrypter as EncrypterContract;
use Illuminate\Encryption\Encrypter;
use Illuminate\Queue\SyncQueue;
use PHPUnit\Framework\TestCase;

/** ShouldBeEncrypted jobs: encrypted by the Publisher as Laravel's queue does, decrypted by the route. */
final class EncryptedJobTest extends TestCase
{
    private const CARD = '4111111111111111';
    private const TP = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';

    protected function setUp(): void
    {
        Recorded::$handled = [];
    }

    /** The provider's Publisher, with the app's encrypter and a transport that records what it sends. */
    private static function app(bool $withEncrypter = true): array
    {
        $app = TestApp::make(['queues' => ['command' => 'app.command', 'event' => 'app.event']]);
        if ($withEncrypter) {
            $app->instance(EncrypterContract::class, new Encrypter(random_bytes(32), 'aes-256-cbc'));
        }
        $transport = new RecordingTransport();
        $app->instance(Transport::class, $transport);

        return [$app, $transport];
    }

    public function testAnEncryptedJobIsNotPlaintextAndReachesTheHandler(): void
    {
        [$app, $transport] = self::app();
        $trace = $app->make(TraceContext::class);
        $id = $trace->within(self::TP, null, fn () => $app->make(Publisher::class)->publish(new PlaceSecretOrder('o-1', self::CARD), 'command'));

        self::assertCount(1, $transport->sent);
        [$queue, $body, $props] = $transport->sent[0];
        self::assertSame('app.command', $queue);
        self::assertSame($id, $props['message_id']);
        self::assertStringNotContainsString(self::CARD, $body, 'the job\'s data is not in the body');
        self::assertStringNotContainsString('O:', json_decode($body, true)['data']['command'], 'data.command is no serialized object');
        self::assertSame(PlaceSecretOrder::class, json_decode($body, true)['data']['commandName']);
        self::assertEquals(new PlaceSecretOrder('o-1', self::CARD), unserialize($app->make(EncrypterContract::class)->decrypt(json_decode($body, true)['data']['command'])));

        [$server, $signedBody] = TestApp::signed($body, $id, self::TP);
        $response = $app->make(MessageController::class)->handle($server, $signedBody);
        self::assertSame(200, $response->status, $response->body);
        self::assertSame([['o-1:' . self::CARD, self::TP]], Recorded::$handled);
    }

    public function testTheShouldBeEncryptedPropertyEncryptsToo(): void
    {
        [$app, $transport] = self::app();
        $id = $app->make(Publisher::class)->publish(new PlaceFlaggedOrder('o-flagged'), 'event');

        $body = $transport->sent[0][1];
        self::assertStringNotContainsString('o-flagged', $body);
        [$server, $signedBody] = TestApp::signed($body, $id);
        self::assertSame(200, $app->make(MessageController::class)->handle($server, $signedBody)->status);
        self::assertSame([['o-flagged', null]], Recorded::$handled);
    }

    public function testThePublisherMatchesLaravelsOwnQueue(): void
    {
        $encrypter = new Encrypter(random_bytes(32), 'aes-256-cbc');
        $container = new Container();
        $container->instance(EncrypterContract::class, $encrypter);
        $queue = new SyncQueue();
        $queue->setContainer($container);
        $create = new \ReflectionMethod($queue, 'createPayload');
        $create->setAccessible(true);
        $laravels = json_decode($create->invoke($queue, new PlaceSecretOrder('o-2', self::CARD), 'default'), true)['data'];
        $ours = json_decode(Publisher::payload(new PlaceSecretOrder('o-2', self::CARD), 'id-2', $encrypter), true)['data'];

        self::assertSame($laravels['commandName'], $ours['commandName']);
        self::assertSame($encrypter->decrypt($laravels['command']), $encrypter->decrypt($ours['command']), 'the same serialized job under the encryption');
        self::assertEquals(new PlaceSecretOrder('o-2', self::CARD), (new PayloadDecoder(new ClassAllowlist([PlaceSecretOrder::class]), null, $encrypter))->decode(json_encode(['data' => $laravels])));
    }

    public function testWithoutAnEncrypterNothingIsSentInPlaintext(): void
    {
        [$app, $transport] = self::app(withEncrypter: false);
        $publisher = $app->make(Publisher::class);
        self::assertNotEmpty($publisher->publish(new PlaceOrder('o-plain'), 'command'), 'plain jobs need no encrypter');

        try {
            $publisher->publish(new PlaceSecretOrder('o-3', self::CARD), 'command');
            self::fail('an encrypted job was published without an encrypter');
        } catch (\LogicException $e) {
            self::assertStringContainsString('should be encrypted', $e->getMessage());
        }
        self::assertCount(1, $transport->sent, 'only the plain job was sent');
    }

    public function testTheRouteWithoutAnEncrypterDeadLettersAnEncryptedJob(): void
    {
        [$app, $transport] = self::app();
        $id = $app->make(Publisher::class)->publish(new PlaceSecretOrder('o-4', self::CARD), 'command');
        [$server, $body] = TestApp::signed($transport->sent[0][1], $id);

        [$receiving] = self::app(withEncrypter: false);
        self::assertSame(422, $receiving->make(MessageController::class)->handle($server, $body)->status);
        self::assertSame([], Recorded::$handled);
    }

    public function testAnotherKeyIsRetriedNotRun(): void
    {
        [$app, $transport] = self::app();
        $id = $app->make(Publisher::class)->publish(new PlaceSecretOrder('o-5', self::CARD), 'command');
        [$server, $body] = TestApp::signed($transport->sent[0][1], $id);

        [$receiving] = self::app(); // its own random key
        self::assertSame(500, $receiving->make(MessageController::class)->handle($server, $body)->status);
        self::assertSame([], Recorded::$handled);
    }
}

final class RecordingTransport implements Transport
{
    /** @var list<array{0: string, 1: string, 2: array<string, mixed>}> */
    public array $sent = [];

    public function publish(string $queue, string $body, array $properties): void
    {
        $this->sent[] = [$queue, $body, $properties];
    }
}
