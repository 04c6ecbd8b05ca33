<?php

declare(strict_types=1);

namespace App;

use AmqpAgent\SymfonyBundle\AmqpAgentBundle;
use App\Handler\CommandHandler;
use App\Handler\EventHandler;
use App\Message\AppCommand;
use App\Message\AppEvent;
use Symfony\Bundle\FrameworkBundle\FrameworkBundle;
use Symfony\Bundle\FrameworkBundle\Kernel\MicroKernelTrait;
use Symfony\Component\DependencyInjection\Loader\Configurator\ContainerConfigurator;
use Symfony\Component\HttpKernel\Kernel as BaseKernel;
use Symfony\Component\Routing\Loader\Configurator\RoutingConfigurator;

/**
 * The smallest app the agent can serve: FrameworkBundle, Messenger with the AMQP transport
 * publishing to the agent's queues (the messenger.yaml recipe, in PHP), and the bundle.
 */
final class Kernel extends BaseKernel
{
    use MicroKernelTrait;

    public function registerBundles(): iterable
    {
        return [new FrameworkBundle(), new AmqpAgentBundle()];
    }

    public function getProjectDir(): string
    {
        return __DIR__ . '/..';
    }

    public function getCacheDir(): string
    {
        return sys_get_temp_dir() . '/amqp-agent-symfony-app/' . md5(__DIR__) . '/cache/' . $this->environment;
    }

    public function getLogDir(): string
    {
        return sys_get_temp_dir() . '/amqp-agent-symfony-app/' . md5(__DIR__) . '/log';
    }

    protected function configureContainer(ContainerConfigurator $c): void
    {
        $c->extension('framework', [
            'secret' => 'test',
            'http_method_override' => false,
            'messenger' => [
                'buses' => ['messenger.bus.default' => ['middleware' => ['amqp_agent.publish_middleware']]],
                'transports' => [
                    // The agent's queues, on the default exchange: the agent declares them.
                    'agent_events' => [
                        'dsn' => '%env(AGENT_AMQP_DSN)%',
                        'options' => ['auto_setup' => false, 'exchange' => ['name' => '', 'default_publish_routing_key' => '%env(AGENT_EVENT_QUEUE)%']],
                    ],
                    'agent_commands' => [
                        'dsn' => '%env(AGENT_AMQP_DSN)%',
                        'options' => ['auto_setup' => false, 'exchange' => ['name' => '', 'default_publish_routing_key' => '%env(AGENT_COMMAND_QUEUE)%']],
                    ],
                ],
                'routing' => [AppEvent::class => 'agent_events', AppCommand::class => 'agent_commands'],
            ],
        ]);
        $c->extension('amqp_agent', ['allow_v1' => '%env(bool:AGENT_SIGNATURE_ALLOW_V1)%']);
        $c->parameters()
            ->set('env(AGENT_AMQP_DSN)', 'amqp://guest:guest@127.0.0.1:5672/%2f/agent')
            ->set('env(AGENT_EVENT_QUEUE)', 'event')
            ->set('env(AGENT_COMMAND_QUEUE)', 'command')
            ->set('env(AGENT_SIGNATURE_ALLOW_V1)', '0')
            ->set('env(AGENT_SIGNING_SECRET)', '')
            ->set('env(RECORD_DIR)', sys_get_temp_dir());

        $services = $c->services()->defaults()->autowire()->autoconfigure();
        $services->set(EventHandler::class)->arg('$recordDir', '%env(RECORD_DIR)%')->tag('messenger.message_handler');
        $services->set(CommandHandler::class)->arg('$recordDir', '%env(RECORD_DIR)%')->tag('messenger.message_handler');
    }

    protected function configureRoutes(RoutingConfigurator $routes): void
    {
        $routes->import('@AmqpAgentBundle/config/routes.php');
    }
}
