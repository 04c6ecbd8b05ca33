<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel\Tests;

use AmqpAgent\Receiver\Signature;
use AmqpAgent\Receiver\SignatureCheck;
use PHPUnit\Framework\TestCase;

/** The provider's Signature, configured as an app would, against the shared known-answer vectors. */
final class SignatureTest extends TestCase
{
    private const VECTORS = __DIR__ . '/../../../tests/vectors/signature.json';

    /** @dataProvider vectors */
    public function testTheConfiguredSignatureVerifiesTheAgentsVectors(array $case): void
    {
        $app = TestApp::make(['signing_secrets' => implode(',', $case['secrets'])]);
        $signature = $app->make(Signature::class);
        $server = self::server($case);
        $body = (string) hex2bin($case['body_hex']);

        self::assertSame(SignatureCheck::Valid, $signature->check($server, $body, $case['t']));
        self::assertSame(SignatureCheck::Stale, $signature->check($server, $body, $case['t'] + 301));
        self::assertSame(SignatureCheck::Invalid, $signature->check($server, $body . 'x', $case['t']));

        // v1 alone only with allow_v1.
        $server['HTTP_X_AGENT_SIGNATURE'] = implode(',', array_filter(explode(',', $case['signature']), static fn ($p) => !str_starts_with($p, 'v2=')));
        self::assertSame(SignatureCheck::Invalid, $signature->check($server, $body, $case['t']));
        $allowing = TestApp::make(['signing_secrets' => implode(',', $case['secrets']), 'allow_v1' => true])->make(Signature::class);
        self::assertSame(SignatureCheck::Valid, $allowing->check($server, $body, $case['t']));
    }

    public function vectors(): array
    {
        $cases = [];
        foreach (json_decode((string) file_get_contents(self::VECTORS), true, 512, JSON_THROW_ON_ERROR)['cases'] as $case) {
            $cases[$case['name']] = [$case];
        }

        return $cases;
    }

    private static function server(array $case): array
    {
        return [
            'HTTP_X_AGENT_SUBJECT' => $case['subject'],
            'HTTP_X_AGENT_MESSAGE_ID' => $case['message_id'],
            'HTTP_X_AGENT_ATTEMPT' => (string) $case['attempt'],
            'HTTP_X_AGENT_ROUTING_KEY' => $case['routing_key'],
            'HTTP_X_AGENT_EXCHANGE' => $case['exchange'],
            'HTTP_X_AGENT_CONTENT_TYPE' => $case['content_type'],
            'HTTP_X_AGENT_HEADERS' => $case['headers_json'],
            'HTTP_X_AGENT_SIGNATURE' => $case['signature'],
        ];
    }
}
