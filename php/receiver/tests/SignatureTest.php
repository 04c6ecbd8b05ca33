<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver\Tests;

use AmqpAgent\Receiver\Signature;
use AmqpAgent\Receiver\SignatureCheck;
use AmqpAgent\Receiver\SignedFields;
use PHPUnit\Framework\Attributes\DataProvider;
use PHPUnit\Framework\TestCase;

final class SignatureTest extends TestCase
{
    public function testTheVectorFileHasCases(): void
    {
        self::assertGreaterThanOrEqual(5, count(Vectors::cases()));
    }

    /** @dataProvider vectors */
    #[DataProvider('vectors')]
    public function testWeComputeTheAgentsExactHeader(array $case): void
    {
        $server = Vectors::server($case);
        $fields = SignedFields::fromServer($server, Vectors::body($case));
        self::assertSame($case['signature'], Signature::header($case['secrets'], $case['t'], $fields));
    }

    /** @dataProvider vectors */
    #[DataProvider('vectors')]
    public function testEachSecretAloneVerifiesV2(array $case): void
    {
        foreach ($case['secrets'] as $secret) {
            $check = (new Signature([$secret]))->check(Vectors::server($case), Vectors::body($case), $case['t']);
            self::assertSame(SignatureCheck::Valid, $check, $secret);
        }
    }

    /** @dataProvider vectors */
    #[DataProvider('vectors')]
    public function testV2OnlyHeaderVerifiesAndV1OnlyNeedsAllowV1(array $case): void
    {
        [$t, $v1, $v2] = self::split($case['signature']);
        $server = Vectors::server($case);
        $body = Vectors::body($case);
        $secrets = $case['secrets'];

        $server['HTTP_X_AGENT_SIGNATURE'] = implode(',', array_merge([$t], $v2));
        self::assertSame(SignatureCheck::Valid, (new Signature($secrets))->check($server, $body, $case['t']));
        // The agent's default header (no v1 values) with v1 allowed: v2 decides, no v1 computed.
        self::assertSame(SignatureCheck::Valid, (new Signature($secrets, allowV1: true))->check($server, $body, $case['t']));
        $server['HTTP_X_AGENT_SIGNATURE'] = $t;
        self::assertSame(SignatureCheck::Invalid, (new Signature($secrets, allowV1: true))->check($server, $body, $case['t']));

        $server['HTTP_X_AGENT_SIGNATURE'] = implode(',', array_merge([$t], $v1));
        self::assertSame(SignatureCheck::Invalid, (new Signature($secrets))->check($server, $body, $case['t']));
        self::assertSame(SignatureCheck::Valid, (new Signature($secrets, allowV1: true))->check($server, $body, $case['t']));
    }

    /** @dataProvider vectors */
    #[DataProvider('vectors')]
    public function testEverySignedFieldMatters(array $case): void
    {
        $signature = new Signature($case['secrets']);
        $body = Vectors::body($case);
        foreach ([
            'HTTP_X_AGENT_SUBJECT', 'HTTP_X_AGENT_MESSAGE_ID', 'HTTP_X_AGENT_ATTEMPT', 'HTTP_X_AGENT_ROUTING_KEY',
            'HTTP_X_AGENT_EXCHANGE', 'HTTP_X_AGENT_CONTENT_TYPE', 'HTTP_X_AGENT_HEADERS',
        ] as $param) {
            $server = Vectors::server($case);
            $server[$param] .= '9';
            self::assertSame(SignatureCheck::Invalid, $signature->check($server, $body, $case['t']), $param);
        }
        self::assertSame(SignatureCheck::Invalid, $signature->check(Vectors::server($case), $body . "\0", $case['t']));
    }

    public function testTheV1AmbiguityIsGoneInV2(): void
    {
        $cases = Vectors::cases();
        $a = $cases['v1 ambiguity: id a, body b.c'][0];
        $b = $cases['v1 ambiguity: id a.b, body c'][0];
        self::assertSame(self::split($a['signature'])[1], self::split($b['signature'])[1], 'the same v1');
        self::assertNotSame(self::split($a['signature'])[2], self::split($b['signature'])[2]);

        // b's v2 does not verify a's fields.
        $server = Vectors::server($a);
        $server['HTTP_X_AGENT_SIGNATURE'] = $b['signature'];
        self::assertSame(SignatureCheck::Invalid, (new Signature($a['secrets']))->check($server, Vectors::body($a), $a['t']));
    }

    public function testClockSkewWindow(): void
    {
        $case = Vectors::cases()['simple'][0];
        $server = Vectors::server($case);
        $body = Vectors::body($case);
        $signature = new Signature($case['secrets'], toleranceSeconds: 60);

        self::assertSame(SignatureCheck::Valid, $signature->check($server, $body, $case['t'] + 60));
        self::assertSame(SignatureCheck::Valid, $signature->check($server, $body, $case['t'] - 60));
        self::assertSame(SignatureCheck::Stale, $signature->check($server, $body, $case['t'] + 61));
        self::assertSame(SignatureCheck::Stale, $signature->check($server, $body, $case['t'] - 61));

        // Outside the window with a wrong secret is still just invalid.
        self::assertSame(SignatureCheck::Invalid, (new Signature(['other']))->check($server, $body, $case['t'] + 61));
    }

    public function testRotationAcceptsTheOldSecretAndRefusesAnUnknownOne(): void
    {
        $case = Vectors::cases()['rotation: two secrets'][0];
        $server = Vectors::server($case);
        $body = Vectors::body($case);
        self::assertSame(SignatureCheck::Valid, (new Signature(['unrelated', 'old-secret']))->check($server, $body, $case['t']));
        self::assertSame(SignatureCheck::Invalid, (new Signature(['unrelated']))->check($server, $body, $case['t']));
    }

    public function testMalformedHeadersAreInvalid(): void
    {
        $case = Vectors::cases()['simple'][0];
        $signature = new Signature($case['secrets']);
        [, , $v2] = self::split($case['signature']);
        foreach (['', 't=', $v2[0], "t=abc,{$v2[0]}", "t=-1,{$v2[0]}", 'garbage', "t={$case['t']}"] as $header) {
            $server = Vectors::server($case);
            $server['HTTP_X_AGENT_SIGNATURE'] = $header;
            self::assertSame(SignatureCheck::Invalid, $signature->check($server, Vectors::body($case), $case['t']), $header);
        }
        self::assertSame(SignatureCheck::Invalid, (new Signature([]))->check(Vectors::server($case), Vectors::body($case), $case['t']));
    }

    public function testFromEnvReadsSecretsToleranceAndAllowV1FromServer(): void
    {
        $case = Vectors::cases()['simple'][0];
        [$t, $v1] = self::split($case['signature']);
        $server = Vectors::server($case);
        $server['HTTP_X_AGENT_SIGNATURE'] = implode(',', array_merge([$t], $v1));
        $env = ['AGENT_SIGNING_SECRET' => ' other , s3cret ', 'AGENT_SIGNATURE_ALLOW_V1' => '1', 'AGENT_SIGNATURE_TOLERANCE' => '10'];
        $signature = Signature::fromEnv($server + $env);
        self::assertSame(SignatureCheck::Valid, $signature->check($server, Vectors::body($case), $case['t'] + 10));
        self::assertSame(SignatureCheck::Stale, $signature->check($server, Vectors::body($case), $case['t'] + 11));
    }

    public static function vectors(): array
    {
        return Vectors::cases();
    }

    /**
     * check() computes HMAC-SHA256 from precomputed key blocks, through OpenSSL when it is loaded
     * and ext/hash otherwise: both must give hash_hmac()'s value for every secret length (short,
     * one byte under, at and over SHA-256's 64-byte block, where the key is hashed first).
     *
     * @dataProvider hashBackends
     */
    #[DataProvider('hashBackends')]
    public function testTheKeyBlocksGiveHashHmacsValueForEverySecretLength(bool $openssl): void
    {
        if ($openssl && !function_exists('openssl_digest')) {
            self::markTestSkipped('ext-openssl is not loaded');
        }
        $flag = new \ReflectionProperty(Signature::class, 'openssl');
        $flag->setAccessible(true);
        $before = $flag->getValue();
        $flag->setValue(null, $openssl);
        try {
            $t = 1800000000;
            $server = [
                'HTTP_X_AGENT_SUBJECT' => 'event', 'HTTP_X_AGENT_MESSAGE_ID' => 'm-1', 'HTTP_X_AGENT_ATTEMPT' => '2',
                'HTTP_X_AGENT_ROUTING_KEY' => 'rk', 'HTTP_X_AGENT_EXCHANGE' => 'ex', 'HTTP_X_AGENT_CONTENT_TYPE' => 'application/json',
                'HTTP_X_AGENT_HEADERS' => '{"a":"b"}',
            ];
            $body = "{\"n\":1}\0\xff";
            // The v2 string, built here independently of Signature.
            $signed = 'amqp-agent.v2';
            foreach ([(string) $t, 'event', 'm-1', '2', 'rk', 'ex', 'application/json', hash('sha256', '{"a":"b"}'), $body] as $field) {
                $signed .= pack('N', strlen($field)) . $field;
            }
            foreach ([1, 12, 63, 64, 65, 200] as $length) {
                $secret = substr(str_repeat("k\x00\xffsecret", 40), 0, $length);
                $other = new Signature(['another secret', $secret]);
                $server['HTTP_X_AGENT_SIGNATURE'] = "t={$t},v2=" . hash_hmac('sha256', $signed, $secret);
                self::assertSame(SignatureCheck::Valid, (new Signature([$secret]))->check($server, $body, $t), "secret of {$length} bytes");
                self::assertSame(SignatureCheck::Valid, $other->check($server, $body, $t), "second secret of {$length} bytes");
                self::assertSame(SignatureCheck::Valid, $other->check($server, $body, $t), 'again, from the kept key blocks');
                self::assertSame(SignatureCheck::Invalid, (new Signature([$secret]))->check($server, $body . 'x', $t), "changed body, {$length} bytes");
                self::assertSame(SignatureCheck::Invalid, (new Signature([$secret . 'x']))->check($server, $body, $t), "other secret, {$length} bytes");
            }
        } finally {
            $flag->setValue(null, $before);
        }
    }

    /** @return array<string, array{0: bool}> */
    public static function hashBackends(): array
    {
        return ['openssl' => [true], 'ext/hash' => [false]];
    }

    /** @return array{0: string, 1: list<string>, 2: list<string>} */
    private static function split(string $header): array
    {
        $parts = explode(',', $header);
        $pick = static fn (string $prefix): array => array_values(array_filter($parts, static fn (string $p): bool => str_starts_with($p, $prefix)));

        return [$pick('t=')[0], $pick('v1='), $pick('v2=')];
    }
}
