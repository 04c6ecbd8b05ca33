<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver;

/**
 * Verifies the X-Agent-Signature header the agent sends with every request:
 *
 *     t=<unix seconds>,v1=<hex>[,v1=<hex>…],v2=<hex>[,v2=<hex>…]
 *
 * One v1/v2 value per signing secret of the agent, so that secrets can be rotated: configure the
 * new and the old secret here, then the agent, then drop the old one.
 *
 * v2 (the default) signs every field that drives handling, each length-prefixed, so that no two
 * different messages share a signed string. v1 signs "t.subject.message_id.body" only; accept it
 * (allowV1) only while agents older than the v2 signature still run.
 */
final class Signature
{
    public const DEFAULT_TOLERANCE_SECONDS = 300;
    private const V2_PREFIX = 'amqp-agent.v2';

    /** Whether ext-openssl's SHA-256 is there (hmac()); decided on first use. */
    private static ?bool $openssl = null;

    /** @var list<array{0: string, 1: string}>|null each secret's HMAC inner and outer key blocks, once computed */
    private ?array $pads = null;

    /**
     * @param list<string> $secrets        every accepted secret (rotation: new and old)
     * @param int          $toleranceSeconds the clock-skew window, either way
     * @param bool         $allowV1        also accept the legacy v1 signature
     */
    public function __construct(
        private readonly array $secrets,
        private readonly int $toleranceSeconds = self::DEFAULT_TOLERANCE_SECONDS,
        private readonly bool $allowV1 = false,
    ) {
    }

    /**
     * From the environment (getenv(), then $server, as PHP-FPM pools often pass env only there):
     * AGENT_SIGNING_SECRET (comma separated), AGENT_SIGNATURE_ALLOW_V1 (1/true),
     * AGENT_SIGNATURE_TOLERANCE (seconds).
     */
    public static function fromEnv(array $server = []): self
    {
        $env = static function (string $name) use ($server): string {
            $value = getenv($name);
            if ($value === false || $value === '') {
                $value = $server[$name] ?? '';
            }

            return trim((string) $value);
        };
        $tolerance = $env('AGENT_SIGNATURE_TOLERANCE');

        return new self(
            self::splitSecrets($env('AGENT_SIGNING_SECRET')),
            ctype_digit($tolerance) ? (int) $tolerance : self::DEFAULT_TOLERANCE_SECONDS,
            in_array(strtolower($env('AGENT_SIGNATURE_ALLOW_V1')), ['1', 'true', 'yes', 'on'], true),
        );
    }

    /** @return list<string> the non-empty secrets of a comma-separated list */
    public static function splitSecrets(string $raw): array
    {
        return array_values(array_filter(array_map('trim', explode(',', $raw)), static fn (string $s): bool => $s !== ''));
    }

    public function hasSecrets(): bool
    {
        return $this->secrets !== [];
    }

    /** What is configured, without a secret: `2 signing secrets, v1 refused, clock skew 300 s`. */
    public function summary(): string
    {
        $n = count($this->secrets);

        return sprintf('%d signing secret%s, v1 %s, clock skew %d s', $n, $n === 1 ? '' : 's', $this->allowV1 ? 'accepted' : 'refused', $this->toleranceSeconds);
    }

    /** Checks the request of $server (FastCGI params) and its raw body. */
    public function check(array $server, string $body, ?int $now = null): SignatureCheck
    {
        $fields = SignedFields::fromServer($server, $body);
        [$timestamp, $v1, $v2] = self::parseHeader((string) ($server['HTTP_X_AGENT_SIGNATURE'] ?? ''));
        if ($timestamp === null || $this->secrets === []) {
            return SignatureCheck::Invalid;
        }

        $valid = false;
        $this->pads ??= array_map(self::pads(...), $this->secrets);
        $message = self::v2Message($timestamp, $fields);
        foreach ($this->secrets as $i => $secret) {
            // No early exit: every comparison is constant time, and so is the loop.
            $expected = self::hmac($this->pads[$i], $message);
            foreach ($v2 as $candidate) {
                $valid = hash_equals($expected, $candidate) || $valid;
            }
            // Whether the header carries v1 values is public: skipping their HMAC when it has none
            // (agents send v1 only with fpm.signature_v1) tells nothing about a secret.
            if ($this->allowV1 && $v1 !== []) {
                $expected = self::v1($secret, $timestamp, $fields->subject, $fields->messageId, $body);
                foreach ($v1 as $candidate) {
                    $valid = hash_equals($expected, $candidate) || $valid;
                }
            }
        }
        if (!$valid) {
            return SignatureCheck::Invalid;
        }

        return abs(($now ?? time()) - $timestamp) > $this->toleranceSeconds ? SignatureCheck::Stale : SignatureCheck::Valid;
    }

    /** The v2 signature: hex HMAC-SHA256 over "amqp-agent.v2" and each length-prefixed field. */
    public static function v2(string $secret, int $timestamp, SignedFields $f): string
    {
        return hash_hmac('sha256', self::v2Message($timestamp, $f), $secret);
    }

    /** What v2 signs: "amqp-agent.v2" and each field, length-prefixed (4 bytes, big-endian). */
    private static function v2Message(int $timestamp, SignedFields $f): string
    {
        $message = self::V2_PREFIX;
        foreach ([
            (string) $timestamp, $f->subject, $f->messageId, (string) $f->attempt, $f->routingKey,
            $f->exchange, $f->contentType, self::sha256($f->headersJson), $f->body,
        ] as $field) {
            $message .= pack('N', strlen($field)) . $field;
        }

        return $message;
    }

    /**
     * HMAC-SHA256 (RFC 2104) of $message with the key blocks of pads(): the same value as
     * hash_hmac('sha256', $message, $secret) (SignatureTest checks it for every key length, on
     * both paths), with the key's blocks computed once per secret rather than once per message,
     * and through OpenSSL's SHA-256 when the extension is loaded (about half hash_hmac()'s time
     * for a small message on PHP 8.2, whose ext/hash SHA-256 is plain C).
     *
     * @param array{0: string, 1: string} $pads
     */
    private static function hmac(array $pads, string $message): string
    {
        if (self::$openssl ??= function_exists('openssl_digest')) {
            return bin2hex(openssl_digest($pads[1] . openssl_digest($pads[0] . $message, 'sha256', true), 'sha256', true));
        }

        return hash('sha256', $pads[1] . hash('sha256', $pads[0] . $message, true));
    }

    /**
     * The inner and outer key blocks of HMAC-SHA256 for $secret: the key (hashed first when
     * longer than SHA-256's 64-byte block), zero-padded to the block, XOR 0x36 and XOR 0x5c.
     *
     * @return array{0: string, 1: string}
     */
    private static function pads(string $secret): array
    {
        $key = str_pad(strlen($secret) > 64 ? hash('sha256', $secret, true) : $secret, 64, "\0");

        return [$key ^ str_repeat("\x36", 64), $key ^ str_repeat("\x5c", 64)];
    }

    /** Hex SHA-256, through OpenSSL when loaded (see hmac()). */
    private static function sha256(string $data): string
    {
        return (self::$openssl ??= function_exists('openssl_digest')) ? openssl_digest($data, 'sha256') : hash('sha256', $data);
    }

    /** The legacy v1 signature: hex HMAC-SHA256 over "t.subject.message_id.body". */
    public static function v1(string $secret, int $timestamp, string $subject, string $messageId, string $body): string
    {
        return hash_hmac('sha256', "{$timestamp}.{$subject}.{$messageId}.{$body}", $secret);
    }

    /**
     * The header value the agent would send (tests, and tools that replay requests by hand).
     *
     * @param list<string> $secrets
     */
    public static function header(array $secrets, int $timestamp, SignedFields $f): string
    {
        $parts = ["t={$timestamp}"];
        foreach ($secrets as $secret) {
            $parts[] = 'v1=' . self::v1($secret, $timestamp, $f->subject, $f->messageId, $f->body);
        }
        foreach ($secrets as $secret) {
            $parts[] = 'v2=' . self::v2($secret, $timestamp, $f);
        }

        return implode(',', $parts);
    }

    /** @return array{0: ?int, 1: list<string>, 2: list<string>} timestamp, v1 values, v2 values */
    private static function parseHeader(string $header): array
    {
        $timestamp = null;
        $v1 = [];
        $v2 = [];
        foreach (explode(',', $header) as $part) {
            [$key, $value] = array_pad(explode('=', trim($part), 2), 2, '');
            if ($key === 't' && $value !== '' && ctype_digit($value) && strlen($value) <= 12) {
                $timestamp = (int) $value;
            } elseif ($key === 'v1' && $value !== '') {
                $v1[] = strtolower($value);
            } elseif ($key === 'v2' && $value !== '') {
                $v2[] = strtolower($value);
            }
        }

        return [$timestamp, $v1, $v2];
    }
}
