<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Tests;

use AmqpAgent\Receiver\Message;
use AmqpAgent\SymfonyBundle\Messenger\EnvelopeDecoder;
use AmqpAgent\SymfonyBundle\Messenger\MessageAllowlist;
use PHPUnit\Framework\Attributes\DataProvider;
use PHPUnit\Framework\TestCase;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\Exception\MessageDecodingFailedException;
use Symfony\Component\Messenger\Stamp\BusNameStamp;
use Symfony\Component\Messenger\Stamp\DelayStamp;
use Symfony\Component\Messenger\Transport\Serialization\PhpSerializer;
use Symfony\Component\Messenger\Transport\Serialization\Serializer;
use Symfony\Component\Messenger\Transport\Serialization\SerializerInterface;

final class EnvelopeDecoderTest extends TestCase
{
    /** @dataProvider serializers */
    #[DataProvider('serializers')]
    public function testDecodesWhatTheAmqpTransportPublished(SerializerInterface $serializer): void
    {
        $sent = new Envelope(new OrderPlaced('o-1', 42, "quote ' and \\ and \"é\""), [new BusNameStamp('messenger.bus.default')]);
        [$server, $body] = Fixtures::request($serializer, $sent);

        $envelope = (new EnvelopeDecoder($serializer, new MessageAllowlist([OrderPlaced::class])))->decode(Message::fromServer($server, $body));

        self::assertEquals($sent->getMessage(), $envelope->getMessage());
        self::assertSame('messenger.bus.default', $envelope->last(BusNameStamp::class)?->getBusName());
    }

    public static function serializers(): array
    {
        return [
            'PhpSerializer (the default)' => [new PhpSerializer()],
            'Symfony Serializer, JSON' => [Serializer::create()],
        ];
    }

    public function testPhpSerializerBodyIsAddslashedSerialize(): void
    {
        $sent = new Envelope(new OrderPlaced('o-2', 1, "it's"));
        [$server, $body] = Fixtures::request(new PhpSerializer(), $sent);
        self::assertSame(addslashes(serialize($sent)), $body);
        self::assertSame('', $server['HTTP_X_AGENT_CONTENT_TYPE']);
    }

    public function testSymfonySerializerUsesTheTypeHeaderAndStampHeaders(): void
    {
        $sent = new Envelope(new OrderPlaced('o-3', 7), [new DelayStamp(5)]);
        [$server, $body] = Fixtures::request(Serializer::create(), $sent);
        $headers = json_decode($server['HTTP_X_AGENT_HEADERS'], true);
        self::assertSame(OrderPlaced::class, $headers['type']);
        self::assertArrayHasKey('X-Message-Stamp-' . DelayStamp::class, $headers);
        self::assertSame('application/json', $server['HTTP_X_AGENT_CONTENT_TYPE']);
        self::assertJson($body);

        $envelope = (new EnvelopeDecoder(Serializer::create(), new MessageAllowlist([OrderPlaced::class])))->decode(Message::fromServer($server, $body));
        self::assertSame(5, $envelope->last(DelayStamp::class)?->getDelay());
        self::assertEquals(new OrderPlaced('o-3', 7), $envelope->getMessage());
    }

    public function testANonNativeBodyPublishedBase64IsDecodedToo(): void
    {
        // Symfony ≥ 6.x's PhpSerializer base64-encodes bodies that are not valid UTF-8.
        $sent = new Envelope(new OrderPlaced('o-4', 1, "\xff\xfe binary"));
        [$server, $body] = Fixtures::request(new PhpSerializer(), $sent);
        $envelope = (new EnvelopeDecoder(new PhpSerializer(), new MessageAllowlist([OrderPlaced::class])))->decode(Message::fromServer($server, $body));
        self::assertEquals($sent->getMessage(), $envelope->getMessage());
    }

    public function testSomethingElseIsADecodingFailure(): void
    {
        $this->expectException(MessageDecodingFailedException::class);
        (new EnvelopeDecoder(Serializer::create(), new MessageAllowlist([OrderPlaced::class])))->decode(Message::fromServer(['HTTP_X_AGENT_HEADERS' => '{}'], '{"a":1}'));
    }
}
