<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel\Console;

use AmqpAgent\Laravel\Http\MessageController;
use AmqpAgent\Receiver\ConfigCheck;
use AmqpAgent\Receiver\Response;
use AmqpAgent\Receiver\Signature;
use Illuminate\Console\Command;

/**
 * `php artisan amqp-agent:check`: the package can serve the agent with this environment, i.e.
 * the signing secret is set (AGENT_SIGNING_SECRET, `amqp-agent.signing_secrets`), the route's
 * controller builds and the route is registered. One line per check; exit 1 with `amqp-agent: …`
 * on the first failure. Run it at deploy with the FPM pool's environment (and after
 * `config:cache`, which fixes what env() read).
 */
final class CheckCommand extends Command
{
    protected $signature = 'amqp-agent:check';

    protected $description = 'Checks that the amqp-agent package can serve the agent (signing secret, controller, route)';

    public function handle(): int
    {
        $app = $this->getLaravel();
        $checks = [
            static fn (): array => ConfigCheck::signature(static fn (): Signature => $app->make(Signature::class)),
            static fn (): array => ConfigCheck::builds('the /_agent/messages controller builds', static fn () => $app->make(MessageController::class)),
            static function () use ($app): array {
                if (!$app['config']->get('amqp-agent.route.enabled', true)) {
                    return [true, 'ok: the route is disabled (amqp-agent.route.enabled): serve it yourself'];
                }
                $routes = $app['router']->getRoutes();
                if (method_exists($routes, 'refreshNameLookups')) {
                    $routes->refreshNameLookups(); // names given after a route was added
                }
                $route = $routes->getByName('amqp-agent.message');

                return $route === null
                    ? [false, Response::PREFIX . 'configuration error: the route amqp-agent.message is not registered (is the provider?)']
                    : [true, 'ok: route POST /' . ltrim($route->uri(), '/')];
            },
        ];
        foreach ($checks as $check) {
            [$ok, $line] = $check();
            $this->line($line);
            if (!$ok) {
                return 1;
            }
        }

        return 0;
    }
}
