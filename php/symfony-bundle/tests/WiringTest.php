<?php
// The bundle as an app wires it: the DI extension and bundle class compiled into a container, the
// route file, and Messenger's own retry-delay exception (Symfony >= 7.2; skipped before). Run on
// Debian's Symfony 5.4 here and, by hand, on Symfony 6.4 / 7.1 / 7.2 (README, "Versions").
declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Tests;

use AmqpAgent\Receiver\TraceContext;
use AmqpAgent\SymfonyBundle\AmqpAgentBundle;
use AmqpAgent\SymfonyBundle\Controller\MessageController;
use AmqpAgent\SymfonyBundle\DependencyInjection\AmqpAgentExtension;
use AmqpAgent\SymfonyBundle\Messenger\ExceptionMapper;
use PHPUnit\Framework\TestCase;
use Symfony\Component\Config\FileLocator;
use Symfony\Component\DependencyInjection\ContainerBuilder;
use Symfony\Component\DependencyInjection\Definition;
use Symfony\Component\HttpFoundation\Request;
use Symfony\Component\HttpFoundation\RequestStack;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\Exception\HandlerFailedException;
use Symfony\Component\Messenger\Exception\RecoverableMessageHandlingException;
use Symfony\Component\Messenger\MessageBus;
use Symfony\Component\Messenger\Transport\Serialization\PhpSerializer;
use Symfony\Component\Routing\Loader\PhpFileLoader;

final class WiringTest extends TestCase
{
    public function testTheExtensionCompilesAndBuildsTheController(): void
    {
        $bundle = new AmqpAgentBundle();
        $extension = $bundle->getContainerExtension();
        self::assertInstanceOf(AmqpAgentExtension::class, $extension);
        self::assertSame('amqp_agent', $extension->getAlias());

        $c = new ContainerBuilder();
        $c->setDefinition('messenger.default_bus', new Definition(MessageBus::class));
        $c->setDefinition('messenger.transport.native_php_serializer', new Definition(PhpSerializer::class));
        $c->setDefinition('request_stack', new Definition(RequestStack::class))->setPublic(true);
        $c->registerExtension($extension);
        $c->loadFromExtension('amqp_agent', ['signing_secrets' => 's1,s2', 'clock_skew' => 60]);
        $bundle->build($c);
        $c->compile();

        self::assertInstanceOf(MessageController::class, $c->get(MessageController::class));
        $c->get('request_stack')->push(new Request(server: ['HTTP_TRACEPARENT' => '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01']));
        self::assertSame('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', $c->get(TraceContext::class)->traceparent());
    }

    public function testTheRouteFileLoads(): void
    {
        $routes = (new PhpFileLoader(new FileLocator(\dirname(__DIR__) . '/config')))->load('routes.php');
        $route = $routes->get('amqp_agent_message');
        self::assertSame('/_agent/messages/{subject}', $route->getPath());
        self::assertSame(['POST'], $route->getMethods());
        self::assertSame(MessageController::class, $route->getDefault('_controller'));
    }

    public function testMessengersOwnRetryDelayGivesRetryAfter(): void
    {
        if (!method_exists(RecoverableMessageHandlingException::class, 'getRetryDelay')) {
            self::markTestSkipped('Messenger < 7.2: no retry delay');
        }
        $e = new HandlerFailedException(new Envelope(new \stdClass()), [new RecoverableMessageHandlingException('later', 0, null, 2500)]);
        $response = (new ExceptionMapper())->map($e);
        self::assertSame(503, $response->status);
        self::assertSame('3', $response->headers['Retry-After'] ?? null);
    }
}
