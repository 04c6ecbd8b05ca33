<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\DependencyInjection;

use Symfony\Component\DependencyInjection\Compiler\CompilerPassInterface;
use Symfony\Component\DependencyInjection\ContainerBuilder;

/**
 * The allowlist's default: the classes, interfaces and namespaces `framework.messenger.routing`
 * names (FrameworkBundle puts them, as keys, in `messenger.senders_locator`'s first argument, on
 * Symfony 5.4 to 7.x). The app routes exactly its messages to transports, so those are the ones
 * the agent may bring back; `*` routes everything and is not taken as an allowlist.
 */
final class RoutedMessagesPass implements CompilerPassInterface
{
    public const ALLOWLIST = 'amqp_agent.message_allowlist';

    public function process(ContainerBuilder $container): void
    {
        if (!$container->hasDefinition(self::ALLOWLIST) || !$container->hasDefinition('messenger.senders_locator')) {
            return;
        }
        $routing = $container->getDefinition('messenger.senders_locator')->getArguments()[0] ?? null;
        if (!is_array($routing)) {
            return;
        }
        $routed = array_values(array_filter(array_map('strval', array_keys($routing)), static fn (string $type): bool => $type !== '*' && $type !== ''));
        $allowlist = $container->getDefinition(self::ALLOWLIST);
        $allowlist->replaceArgument(0, array_values(array_unique([...$allowlist->getArgument(0), ...$routed])));
    }
}
