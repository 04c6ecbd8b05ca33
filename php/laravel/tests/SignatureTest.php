<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel\Tests;

use AmqpAgent\Receiver\Signature;
use AmqpAgent\Receiver\SignatureCheck;
use AmqpAgent\Receiver\Tests\Vectors;
use PHPUnit\Framework\Attributes\DataProvider;
use PHPUnit\Framework\TestCase;

/** The provider's Signature, configured as an app would, against the shared known-answer vectors. */
final class SignatureTest extends TestCase
{
    /** @dataProvider vectors */
    #[DataProvider('vectors')]
    public function testTheConfiguredSignatureVerifiesTheAgentsVectors(array $case): void
    {
        $app = TestApp::make(['signing_secrets' => implode(',', $case['secrets'])]);
        $signature = $app->make(Signature::class);
        $server = Vectors::server($case);
        $body = Vectors::body($case);

        self::assertSame(SignatureCheck::Valid, $signature->check($server, $body, $case['t']));
        self::assertSame(SignatureCheck::Stale, $signature->check($server, $body, $case['t'] + 301));
        self::assertSame(SignatureCheck::Invalid, $signature->check($server, $body . 'x', $case['t']));

        // v1 alone only with allow_v1.
        $server['HTTP_X_AGENT_SIGNATURE'] = implode(',', array_filter(explode(',', $case['signature']), static fn ($p) => !str_starts_with($p, 'v2=')));
        self::assertSame(SignatureCheck::Invalid, $signature->check($server, $body, $case['t']));
        $allowing = TestApp::make(['signing_secrets' => implode(',', $case['secrets']), 'allow_v1' => true])->make(Signature::class);
        self::assertSame(SignatureCheck::Valid, $allowing->check($server, $body, $case['t']));
    }

    public static function vectors(): array
    {
        return Vectors::cases();
    }
}
