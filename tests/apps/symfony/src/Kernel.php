<?php

declare(strict_types=1);

namespace App;

use AmqpAgent\SymfonyBundle\AmqpAgentBundle;
use App\Handler\CommandHandler;
use App\Handler\EventHandler;
use App\Handler\PingHandler;
use App\Spy\DecodingSpy;
use App\Spy\Delivery;
use App\Spy\DispatchSpy;
use Symfony\Bundle\FrameworkBundle\FrameworkBundle;
use Symfony\Bundle\FrameworkBundle\Kernel\MicroKernelTrait;
use Symfony\Component\DependencyInjection\Loader\Configurator\ContainerConfigurator;
use Symfony\Component\HttpKernel\Kernel as BaseKernel;
use Symfony\Component\Routing\Loader\Configurator\RoutingConfigurator;

use function Symfony\Component\DependencyInjection\Loader\Configurator\service;

/**
 * The smallest app the agent can serve: FrameworkBundle, the bundle, and the bundle's recipe as
 * shipped (php/symfony-bundle/recipe/config: Messenger's AMQP transports publishing to the
 * agent's queues, the bundle's config, its route). What is set here is the test's own: the
 * handlers and their record directory, the transport serializer chosen by
 * APP_MESSENGER_SERIALIZER, and the spies the handlers record the decoded stamps from.
 */
final class Kernel extends BaseKernel
{
    use MicroKernelTrait;

    /** APP_MESSENGER_SERIALIZER → the transport serializer (the recipe's amqp_agent.transport_serializer). */
    private const SERIALIZERS = [
        'php' => 'messenger.transport.native_php_serializer',
        'json' => 'messenger.transport.symfony_serializer',
    ];

    private const RECIPE = __DIR__ . '/../../../../php/symfony-bundle/recipe/config';

    public function registerBundles(): iterable
    {
        return [new FrameworkBundle(), new AmqpAgentBundle()];
    }

    public function getProjectDir(): string
    {
        return __DIR__ . '/..';
    }

    /** One container per serializer: the choice is a service id, fixed when the container is built. */
    public function getCacheDir(): string
    {
        return sys_get_temp_dir() . '/amqp-agent-symfony-app/' . md5(__DIR__) . '/cache/' . $this->environment . '-' . self::serializer();
    }

    public function getLogDir(): string
    {
        return sys_get_temp_dir() . '/amqp-agent-symfony-app/' . md5(__DIR__) . '/log';
    }

    /** `php` (PhpSerializer, Messenger's default) or `json` (Symfony Serializer). */
    public static function serializer(): string
    {
        $name = $_SERVER['APP_MESSENGER_SERIALIZER'] ?? getenv('APP_MESSENGER_SERIALIZER') ?: 'php';
        if (!isset(self::SERIALIZERS[$name])) {
            throw new \InvalidArgumentException("APP_MESSENGER_SERIALIZER: php or json, not {$name}");
        }

        return $name;
    }

    protected function configureContainer(ContainerConfigurator $c): void
    {
        $c->import(self::RECIPE . '/packages/*.yaml');
        $c->extension('framework', ['secret' => 'test', 'http_method_override' => false]);
        $serializer = self::SERIALIZERS[self::serializer()];
        $c->parameters()
            ->set('amqp_agent.transport_serializer', $serializer)
            ->set('env(RECORD_DIR)', sys_get_temp_dir());

        $services = $c->services()->defaults()->autowire()->autoconfigure();
        $services->set(EventHandler::class)->arg('$recordDir', '%env(RECORD_DIR)%')->tag('messenger.message_handler');
        $services->set(CommandHandler::class)->arg('$recordDir', '%env(RECORD_DIR)%')->tag('messenger.message_handler');
        $services->set(PingHandler::class)->tag('messenger.message_handler');
        $services->set(Delivery::class);
        $services->set(DecodingSpy::class)->decorate($serializer)->args([service('.inner'), service(Delivery::class)]);
        $services->set(DispatchSpy::class)->decorate('messenger.bus.default')->args([service('.inner'), service(Delivery::class)]);
    }

    protected function configureRoutes(RoutingConfigurator $routes): void
    {
        $routes->import(self::RECIPE . '/routes/amqp_agent.yaml');
    }
}
