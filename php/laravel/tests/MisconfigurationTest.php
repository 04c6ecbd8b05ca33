<?php
// The package's own failures answer as the package: without a signing secret every message gets
// 503 `amqp-agent: signing secret not configured` (the agent retries and quotes it), and
// `php artisan amqp-agent:check` says the same before the pool serves.
declare(strict_types=1);

namespace AmqpAgent\Laravel\Tests;

use AmqpAgent\Laravel\Console\CheckCommand;
use AmqpAgent\Laravel\Http\MessageController;
use Illuminate\Http\Request;
use PHPUnit\Framework\TestCase;
use Symfony\Component\Console\Input\ArrayInput;
use Symfony\Component\Console\Output\BufferedOutput;

final class MisconfigurationTest extends TestCase
{
    public function testWithoutASecretEveryMessageIsThePackagesPlainTextRetry(): void
    {
        [$server, $body] = TestApp::request(new PlaceOrder('o-1'));
        $response = TestApp::make(['signing_secrets' => ''])->make(MessageController::class)(Request::create('/_agent/messages/command', 'POST', [], [], [], $server, $body), 'command');
        self::assertSame(503, $response->getStatusCode());
        self::assertNull($response->headers->get('Retry-After'), 'retried on the agent\'s schedule');
        self::assertSame('text/plain; charset=utf-8', $response->headers->get('Content-Type'));
        self::assertSame("amqp-agent: signing secret not configured\n", $response->getContent());
        self::assertSame([], Recorded::$handled);
    }

    public function testTheCheckCommandFailsWithoutASecret(): void
    {
        [$code, $out] = self::check(TestApp::make(['signing_secrets' => '']));
        self::assertSame(1, $code);
        self::assertSame("amqp-agent: signing secret not configured (AGENT_SIGNING_SECRET is empty)\n", $out);
    }

    public function testTheCheckCommandPassesWithASecretAndTheRoute(): void
    {
        [$code, $out] = self::check(TestApp::make(['signing_secrets' => 'new, old']));
        self::assertSame(0, $code, $out);
        self::assertSame(
            "ok: 2 signing secrets, v1 refused, clock skew 300 s\nok: the /_agent/messages controller builds\nok: route POST /_agent/messages/{subject}\n",
            $out,
        );
    }

    /** @return array{0: int, 1: string} */
    private static function check(\Illuminate\Container\Container $app): array
    {
        $command = new CheckCommand();
        $command->setLaravel($app);
        $output = new BufferedOutput();
        $code = $command->run(new ArrayInput([]), $output);

        return [$code, $output->fetch()];
    }
}
