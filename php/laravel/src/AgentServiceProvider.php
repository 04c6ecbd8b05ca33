<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel;

use AmqpAgent\Laravel\Console\CheckCommand;
use AmqpAgent\Laravel\Http\MessageController;
use AmqpAgent\Receiver\ClassAllowlist;
use AmqpAgent\Receiver\Receiver;
use AmqpAgent\Receiver\Signature;
use AmqpAgent\Receiver\TraceContext;
use Illuminate\Contracts\Container\Container as Application;
use Illuminate\Contracts\Encryption\Encrypter;
use Illuminate\Support\ServiceProvider;

/**
 * Registers the receiver, the trace context, the publisher, the /_agent/messages route and, in
 * the console, `amqp-agent:check`.
 */
final class AgentServiceProvider extends ServiceProvider
{
    public function register(): void
    {
        $this->mergeConfigFrom(__DIR__ . '/../config/amqp-agent.php', 'amqp-agent');

        $this->app->singleton(Signature::class, static fn (Application $app): Signature => new Signature(
            Signature::splitSecrets((string) $app['config']->get('amqp-agent.signing_secrets')),
            (int) $app['config']->get('amqp-agent.clock_skew', Signature::DEFAULT_TOLERANCE_SECONDS),
            (bool) $app['config']->get('amqp-agent.allow_v1', false),
        ));
        $this->app->singleton(Receiver::class, static fn (Application $app): Receiver => new Receiver(
            $app->make(Signature::class),
            $app->bound('log') ? static fn (string $line) => $app['log']->warning($line) : null,
        ));
        $this->app->singleton(TraceContext::class, static fn (Application $app): TraceContext => new TraceContext(
            static function () use ($app): array {
                $request = $app->bound('request') ? $app['request'] : null;

                return [$request?->headers->get('traceparent'), $request?->headers->get('tracestate')];
            },
        ));
        $this->app->bind(PayloadDecoder::class, static fn (Application $app): PayloadDecoder => new PayloadDecoder(
            new ClassAllowlist((array) $app['config']->get('amqp-agent.allowed_jobs', ['App\\Jobs\\'])),
            new ClassAllowlist((array) $app['config']->get('amqp-agent.allowed_classes', [])),
            $app->bound(Encrypter::class) ? $app->make(Encrypter::class) : null,
        ));
        $this->app->singleton(AgentContext::class);
        $this->app->singleton(Transport::class, static fn (Application $app): Transport => new AmqpExtTransport($app['config']->get('amqp-agent.amqp', [])));
        $this->app->singleton(Publisher::class, static fn (Application $app): Publisher => new Publisher(
            $app->make(Transport::class),
            $app->make(TraceContext::class),
            $app['config']->get('amqp-agent.queues', []),
            static fn (): ?Encrypter => $app->bound(Encrypter::class) ? $app->make(Encrypter::class) : null,
        ));
    }

    public function boot(): void
    {
        $this->publishes([__DIR__ . '/../config/amqp-agent.php' => $this->app->make('path.config') . '/amqp-agent.php'], 'amqp-agent-config');
        if (method_exists($this->app, 'runningInConsole') && $this->app->runningInConsole()) {
            $this->commands([CheckCommand::class]);
        }

        if ($this->app['config']->get('amqp-agent.route.enabled', true)) {
            $this->app['router']->post($this->app['config']->get('amqp-agent.route.path'), MessageController::class)
                ->middleware($this->app['config']->get('amqp-agent.route.middleware', []))
                ->where('subject', '[A-Za-z0-9_.-]+')
                ->name('amqp-agent.message');
        }
    }
}
