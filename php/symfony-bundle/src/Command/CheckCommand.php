<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Command;

use AmqpAgent\Receiver\ConfigCheck;
use Symfony\Component\Console\Command\Command;
use Symfony\Component\Console\Input\InputInterface;
use Symfony\Component\Console\Output\OutputInterface;

/**
 * `bin/console amqp-agent:check`: the bundle can serve the agent with this environment, i.e. the
 * signing secret is set (AGENT_SIGNING_SECRET) and the route's controller builds (bus, serializer,
 * allowlist). One line per check; exit 1 with `amqp-agent: …` on the first failure. Run it at
 * deploy with the FPM pool's environment: the pool, not the shell, is what serves the agent.
 */
final class CheckCommand extends Command
{
    public const NAME = 'amqp-agent:check';

    public function __construct(private readonly \Closure $signature, private readonly \Closure $controller)
    {
        parent::__construct(self::NAME);
    }

    protected function configure(): void
    {
        $this->setDescription('Checks that the amqp-agent bundle can serve the agent (signing secret, controller)');
    }

    protected function execute(InputInterface $input, OutputInterface $output): int
    {
        foreach ([
            ConfigCheck::signature($this->signature),
            ConfigCheck::builds('the /_agent/messages controller builds', $this->controller),
        ] as [$ok, $line]) {
            $output->writeln($line);
            if (!$ok) {
                return 1;
            }
        }

        return 0;
    }
}
