<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle;

use AmqpAgent\SymfonyBundle\DependencyInjection\RoutedMessagesPass;
use Symfony\Component\DependencyInjection\ContainerBuilder;
use Symfony\Component\HttpKernel\Bundle\Bundle;

/** Serves amqp-agent's requests at /_agent/messages/{subject} with the app's Messenger bus. */
final class AmqpAgentBundle extends Bundle
{
    public function build(ContainerBuilder $container): void
    {
        $container->addCompilerPass(new RoutedMessagesPass());
    }

    public function getPath(): string
    {
        return \dirname(__DIR__);
    }
}
