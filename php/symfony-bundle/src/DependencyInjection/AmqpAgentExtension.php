<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\DependencyInjection;

use AmqpAgent\Receiver\Receiver;
use AmqpAgent\Receiver\Signature;
use AmqpAgent\SymfonyBundle\Controller\MessageController;
use AmqpAgent\SymfonyBundle\Messenger\EnvelopeDecoder;
use AmqpAgent\SymfonyBundle\Messenger\ExceptionMapper;
use AmqpAgent\SymfonyBundle\Messenger\MessageAllowlist;
use AmqpAgent\SymfonyBundle\Messenger\PublishMiddleware;
use AmqpAgent\Receiver\TraceContext;
use AmqpAgent\SymfonyBundle\Command\CheckCommand;
use Symfony\Component\Console\Command\Command;
use Symfony\Component\DependencyInjection\Argument\ServiceClosureArgument;
use Symfony\Component\DependencyInjection\ContainerBuilder;
use Symfony\Component\DependencyInjection\Definition;
use Symfony\Component\DependencyInjection\Extension\Extension;
use Symfony\Component\DependencyInjection\Reference;

/** Services defined in PHP: the bundle needs no YAML component. Private unless a route needs them. */
final class AmqpAgentExtension extends Extension
{
    public function load(array $configs, ContainerBuilder $container): void
    {
        $config = $this->processConfiguration(new Configuration(), $configs);

        $container->setDefinition('amqp_agent.signature', (new Definition(Signature::class))
            ->setFactory([SignatureFactory::class, 'create'])
            ->setArguments([$config['signing_secrets'], $config['clock_skew'], $config['allow_v1']]));
        $container->setDefinition('amqp_agent.receiver', new Definition(Receiver::class, [new Reference('amqp_agent.signature')]));
        $container->setDefinition('amqp_agent.trace_context', (new Definition(TraceContext::class))
            ->setFactory([TraceContextFactory::class, 'create'])
            ->setArguments([new Reference('request_stack', ContainerBuilder::NULL_ON_INVALID_REFERENCE)]));
        $container->setAlias(TraceContext::class, 'amqp_agent.trace_context')->setPublic(true);
        // The routing's types join allowed_messages in RoutedMessagesPass, once FrameworkBundle set them.
        $container->setDefinition(RoutedMessagesPass::ALLOWLIST, new Definition(MessageAllowlist::class, [$config['allowed_messages'], $config['allowed_classes']]));
        $container->setDefinition('amqp_agent.envelope_decoder', new Definition(EnvelopeDecoder::class, [new Reference($config['serializer']), new Reference(RoutedMessagesPass::ALLOWLIST)]));
        $container->setDefinition('amqp_agent.exception_mapper', new Definition(ExceptionMapper::class));
        $container->setDefinition('amqp_agent.publish_middleware', new Definition(PublishMiddleware::class, [new Reference('amqp_agent.trace_context')]));

        // A closure: the receiver (and the secrets' environment variable) is resolved on the
        // first request, so a missing secret is the package's 503, not an error page.
        $container->setDefinition(MessageController::class, (new Definition(MessageController::class, [
            new ServiceClosureArgument(new Reference('amqp_agent.receiver')),
            new Reference('amqp_agent.envelope_decoder'),
            new Reference($config['bus']),
            new Reference('amqp_agent.exception_mapper'),
            new Reference('amqp_agent.trace_context'),
            $config['transport_name'],
            new Reference('logger', ContainerBuilder::NULL_ON_INVALID_REFERENCE),
            new Reference('services_resetter', ContainerBuilder::NULL_ON_INVALID_REFERENCE),
            new Reference('doctrine', ContainerBuilder::NULL_ON_INVALID_REFERENCE),
        ]))->setPublic(true)->addTag('controller.service_arguments'));

        if (class_exists(Command::class)) {
            $container->setDefinition(CheckCommand::class, (new Definition(CheckCommand::class, [
                new ServiceClosureArgument(new Reference('amqp_agent.signature')),
                new ServiceClosureArgument(new Reference(MessageController::class)),
            ]))->addTag('console.command', ['command' => CheckCommand::NAME]));
        }
    }
}
