<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel\Tests;

use AmqpAgent\Laravel\Http\MessageController;
use Illuminate\Http\Request;
use PHPUnit\Framework\Attributes\DataProvider;
use PHPUnit\Framework\TestCase;

final class MessageControllerTest extends TestCase
{
    private const TP = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';

    protected function setUp(): void
    {
        Recorded::$handled = [];
    }

    public function testTheRouteIsRegisteredOutsideTheWebGroup(): void
    {
        $routes = TestApp::make()['router']->getRoutes();
        $routes->refreshNameLookups();
        $route = $routes->getByName('amqp-agent.message');
        self::assertNotNull($route);
        self::assertSame('_agent/messages/{subject}', $route->uri());
        self::assertSame(['POST'], $route->methods());
        self::assertSame([], $route->middleware());
    }

    public function testAValidRequestRunsTheJobOnceWithItsTraceparentAndIsAcked(): void
    {
        [$server, $body] = TestApp::request(new PlaceOrder('o-1'), 'job-1', self::TP);
        $request = Request::create('/_agent/messages/command', 'POST', [], [], [], $server, $body);
        $response = TestApp::make()->make(MessageController::class)($request, 'command');

        self::assertSame(200, $response->getStatusCode());
        self::assertSame('1', $response->headers->get('X-Agent-Ack'));
        self::assertSame('2', $response->headers->get('X-Agent-Accepts-Batches'));
        self::assertSame([['o-1', self::TP]], Recorded::$handled);
    }

    /** @dataProvider outcomes */
    #[DataProvider('outcomes')]
    public function testExceptionMapping(string $behave, int $status, ?string $retryAfter): void
    {
        [$server, $body] = TestApp::request(new PlaceOrder('o-2', $behave));
        $response = TestApp::make()->make(MessageController::class)->handle($server, $body);
        self::assertSame($status, $response->status);
        self::assertSame($retryAfter, $response->headers['Retry-After'] ?? null);
        self::assertSame([], Recorded::$handled);
    }

    public static function outcomes(): array
    {
        return [
            'PermanentFailure → 422' => ['permanent', 422, null],
            'RetryLater → 503 + Retry-After' => ['retry', 503, '30'],
            'anything else → 500' => ['fail', 500, null],
        ];
    }

    public function testABadSignatureIs401AndNothingRuns(): void
    {
        [$server, $body] = TestApp::request(new PlaceOrder('o-3'));
        $response = TestApp::make()->make(MessageController::class)->handle($server, str_replace('o-3', 'o-4', $body));
        self::assertSame(401, $response->status);
        self::assertSame([], Recorded::$handled);
    }

    public function testABodyThatIsNoJobIsDeadLettered(): void
    {
        [$server] = TestApp::request(new PlaceOrder('o-5'));
        $body = '{"hello":"world"}';
        $server['HTTP_X_AGENT_SIGNATURE'] = \AmqpAgent\Receiver\Signature::header([TestApp::SECRET], time(), \AmqpAgent\Receiver\SignedFields::fromServer($server, $body));
        self::assertSame(422, TestApp::make()->make(MessageController::class)->handle($server, $body)->status);
    }
}
