<?php
// The bundle's own failures answer as the package, not as Symfony's HTML error page: a pool
// without AGENT_SIGNING_SECRET (the recipe's `%env(AGENT_SIGNING_SECRET)%` not found) gets
// 503 `amqp-agent: signing secret not configured: …` (the agent retries and quotes it), and
// `bin/console amqp-agent:check` says the same before the pool serves.
declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Tests;

use AmqpAgent\Receiver\Tests\BatchFixture;
use AmqpAgent\SymfonyBundle\AmqpAgentBundle;
use AmqpAgent\SymfonyBundle\Command\CheckCommand;
use AmqpAgent\SymfonyBundle\Controller\MessageController;
use PHPUnit\Framework\TestCase;
use Symfony\Component\Console\Tester\CommandTester;
use Symfony\Component\DependencyInjection\Compiler\CompilerPassInterface;
use Symfony\Component\DependencyInjection\ContainerBuilder;
use Symfony\Component\DependencyInjection\ContainerInterface;
use Symfony\Component\DependencyInjection\Dumper\PhpDumper;
use Symfony\Component\DependencyInjection\EnvVarProcessor;
use Symfony\Component\DependencyInjection\Reference;
use Symfony\Component\DependencyInjection\Definition;
use Symfony\Component\HttpFoundation\Request;
use Symfony\Component\HttpFoundation\RequestStack;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\MessageBus;
use Symfony\Component\Messenger\Transport\Serialization\PhpSerializer;

final class MisconfigurationTest extends TestCase
{
    private const ENV = 'AGENT_SIGNING_SECRET';
    private const NOT_FOUND = "amqp-agent: signing secret not configured: Environment variable not found: \"AGENT_SIGNING_SECRET\".\n";

    private array $saved = [];

    protected function setUp(): void
    {
        $this->saved = [$_SERVER[self::ENV] ?? null, $_ENV[self::ENV] ?? null, getenv(self::ENV)];
        unset($_SERVER[self::ENV], $_ENV[self::ENV]);
        putenv(self::ENV);
    }

    protected function tearDown(): void
    {
        [$server, $env, $getenv] = $this->saved;
        unset($_SERVER[self::ENV], $_ENV[self::ENV]);
        if ($server !== null) {
            $_SERVER[self::ENV] = $server;
        }
        if ($env !== null) {
            $_ENV[self::ENV] = $env;
        }
        putenv($getenv === false ? self::ENV : self::ENV . '=' . $getenv);
    }

    public function testAMissingSecretIsThePackagesPlainTextRetryNotAnErrorPage(): void
    {
        $controller = self::container()->get(MessageController::class);
        [$server, $body] = Fixtures::request(new PhpSerializer(), new Envelope(new OrderPlaced('o-1')));

        $response = $controller(Request::create('/_agent/messages/event', 'POST', [], [], [], $server, $body), 'event');
        self::assertSame(503, $response->getStatusCode());
        self::assertNull($response->headers->get('Retry-After'), 'retried on the agent\'s schedule');
        self::assertSame('text/plain; charset=utf-8', $response->headers->get('Content-Type'));
        self::assertSame(self::NOT_FOUND, $response->getContent());

        [$server, $body] = BatchFixture::encode([[$server, $body]], 'event');
        $batch = $controller->batch($server, $body);
        self::assertSame(503, $batch->getStatusCode(), 'a batch is refused whole, the same way');
        self::assertSame(self::NOT_FOUND, $batch->getContent());
    }

    public function testTheCheckCommandFailsWithTheSameReasonAndPassesOnceTheSecretIsSet(): void
    {
        $tester = new CommandTester(self::container()->get(CheckCommand::class));
        self::assertSame(1, $tester->execute([]));
        self::assertSame(self::NOT_FOUND, $tester->getDisplay());

        $_SERVER[self::ENV] = 'new,old';
        $tester = new CommandTester(self::container()->get(CheckCommand::class));
        self::assertSame(0, $tester->execute([]));
        self::assertSame("ok: 2 signing secrets, v1 refused, clock skew 300 s\nok: the /_agent/messages controller builds\n", $tester->getDisplay());
    }

    public function testAnEmptySecretIsCaughtToo(): void
    {
        $_SERVER[self::ENV] = '';
        $tester = new CommandTester(self::container()->get(CheckCommand::class));
        self::assertSame(1, $tester->execute([]));
        self::assertSame("amqp-agent: signing secret not configured (AGENT_SIGNING_SECRET is empty)\n", $tester->getDisplay());
    }

    /**
     * The bundle compiled and dumped as an app's container is (env resolved when a service is
     * built), configured as the recipe configures it: the secrets from the environment.
     */
    private static function container(): ContainerInterface
    {
        $bundle = new AmqpAgentBundle();
        $c = new ContainerBuilder();
        $c->setParameter('kernel.debug', false); // a dumped container without parameters cannot read %env()%
        $c->setDefinition('messenger.default_bus', new Definition(MessageBus::class));
        $c->setDefinition('messenger.transport.native_php_serializer', new Definition(PhpSerializer::class));
        $c->setDefinition('request_stack', new Definition(RequestStack::class));
        // As FrameworkBundle registers it: how the dumped container reads %env()%.
        $c->register('container.env_var_processor', EnvVarProcessor::class)->addArgument(new Reference('service_container'))->addTag('container.env_var_processor');
        $c->registerExtension($bundle->getContainerExtension());
        $c->loadFromExtension('amqp_agent', ['signing_secrets' => '%env(AGENT_SIGNING_SECRET)%', 'allowed_messages' => [OrderPlaced::class]]);
        $bundle->build($c);
        $c->addCompilerPass(new class () implements CompilerPassInterface {
            public function process(ContainerBuilder $container): void
            {
                $container->getDefinition(CheckCommand::class)->setPublic(true); // private in an app: the console finds it by its tag
            }
        });
        $c->compile();
        $class = 'AmqpAgentMisconfigurationTestContainer' . bin2hex(random_bytes(4));
        eval('?>' . (new PhpDumper($c))->dump(['class' => $class]));

        return new $class();
    }
}
