<?php

// Import from the app's routes: `amqp_agent: { resource: '@AmqpAgentBundle/config/routes.php' }`.
use AmqpAgent\SymfonyBundle\Controller\MessageController;
use Symfony\Component\Routing\Loader\Configurator\RoutingConfigurator;

return static function (RoutingConfigurator $routes): void {
    $routes->add('amqp_agent_message', '/_agent/messages/{subject}')
        ->controller(MessageController::class)
        ->methods(['POST'])
        ->requirements(['subject' => '[A-Za-z0-9_.-]+']);
};
