<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Tests;

use AmqpAgent\Receiver\SignatureCheck;
use AmqpAgent\Receiver\Tests\Vectors;
use AmqpAgent\SymfonyBundle\DependencyInjection\Configuration;
use AmqpAgent\SymfonyBundle\DependencyInjection\SignatureFactory;
use PHPUnit\Framework\Attributes\DataProvider;
use PHPUnit\Framework\TestCase;
use Symfony\Component\Config\Definition\Processor;

/** The bundle's Signature, configured as an app would, against the shared known-answer vectors. */
final class SignatureTest extends TestCase
{
    public function testDefaults(): void
    {
        $config = (new Processor())->processConfiguration(new Configuration(), []);
        self::assertSame('%env(AGENT_SIGNING_SECRET)%', $config['signing_secrets']);
        self::assertFalse($config['allow_v1']);
        self::assertSame(300, $config['clock_skew']);
        self::assertSame('messenger.transport.native_php_serializer', $config['serializer']);
    }

    /** @dataProvider vectors */
    #[DataProvider('vectors')]
    public function testTheConfiguredSignatureVerifiesTheAgentsVectors(array $case): void
    {
        $config = (new Processor())->processConfiguration(new Configuration(), [['signing_secrets' => implode(',', $case['secrets'])]]);
        $signature = SignatureFactory::create($config['signing_secrets'], $config['clock_skew'], $config['allow_v1']);
        $server = Vectors::server($case);
        $body = Vectors::body($case);

        self::assertSame(SignatureCheck::Valid, $signature->check($server, $body, $case['t']));
        self::assertSame(SignatureCheck::Stale, $signature->check($server, $body, $case['t'] - 301));
        self::assertSame(SignatureCheck::Invalid, $signature->check($server, $body . 'x', $case['t']));
        $server['HTTP_X_AGENT_SIGNATURE'] = implode(',', array_filter(explode(',', $case['signature']), static fn ($p) => !str_starts_with($p, 'v2=')));
        self::assertSame(SignatureCheck::Invalid, $signature->check($server, $body, $case['t']), 'v1 only when allowed');
        self::assertSame(SignatureCheck::Valid, SignatureFactory::create($config['signing_secrets'], 300, true)->check($server, $body, $case['t']));
    }

    public static function vectors(): array
    {
        return Vectors::cases();
    }
}
