<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\DependencyInjection;

use Symfony\Component\Config\Definition\Builder\TreeBuilder;
use Symfony\Component\Config\Definition\ConfigurationInterface;

final class Configuration implements ConfigurationInterface
{
    public function getConfigTreeBuilder(): TreeBuilder
    {
        $tree = new TreeBuilder('amqp_agent');
        $tree->getRootNode()
            ->children()
                ->scalarNode('signing_secrets')
                    ->info('The agent\'s signing secrets, comma separated (rotation: new and old).')
                    ->defaultValue('%env(AGENT_SIGNING_SECRET)%')
                ->end()
                ->booleanNode('allow_v1')
                    ->info('Also accept the legacy v1 signature (agents older than the v2 signature).')
                    ->defaultFalse()
                ->end()
                ->integerNode('clock_skew')
                    ->info('Seconds a signature timestamp may differ from this clock; beyond: 503, retried.')
                    ->defaultValue(300)->min(1)
                ->end()
                ->scalarNode('bus')
                    ->info('The Messenger bus the received envelopes are dispatched on (service id).')
                    ->defaultValue('messenger.default_bus')
                ->end()
                ->scalarNode('serializer')
                    ->info('The transport serializer Messenger published with (service id): PhpSerializer by default, or messenger.transport.symfony_serializer.')
                    ->defaultValue('messenger.transport.native_php_serializer')
                ->end()
                ->arrayNode('allowed_messages')
                    ->info('Message classes, interfaces or namespaces (App\\Message\\ or App\\Message\\*) the route dispatches, besides the types framework.messenger.routing names and #[AsMessage] routes; any other message is refused (422, dead-lettered) before it is decoded.')
                    ->scalarPrototype()->cannotBeEmpty()->end()
                ->end()
                ->arrayNode('allowed_classes')
                    ->info('Other classes a message may hold (the value objects inside your messages), same forms. Envelope, stamps, enums and PHP\'s date classes always may; any other object in a body is refused before it is constructed.')
                    ->scalarPrototype()->cannotBeEmpty()->end()
                ->end()
                ->scalarNode('transport_name')
                    ->info('The name put in the ReceivedStamp: routing then never sends the envelope again.')
                    ->defaultValue('amqp-agent')
                ->end()
            ->end();

        return $tree;
    }
}
