<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel\Tests;

use AmqpAgent\Laravel\AgentServiceProvider;
use AmqpAgent\Laravel\Publisher;
use AmqpAgent\Receiver\Signature;
use AmqpAgent\Receiver\SignedFields;
use Illuminate\Config\Repository;
use Illuminate\Container\Container;
use Illuminate\Events\Dispatcher as Events;
use Illuminate\Routing\Router;

/** A container with what the provider needs: config, router, bus — no full application. */
final class TestApp
{
    public const SECRET = 'laravel-test-secret';

    public static function make(array $config = []): Container
    {
        $app = new Container();
        $app->instance('path.config', sys_get_temp_dir());
        $app->instance(\Illuminate\Contracts\Container\Container::class, $app);
        Container::setInstance($app);
        $app->instance('config', new Repository(['amqp-agent' => $config + ['signing_secrets' => self::SECRET, 'allowed_jobs' => ['AmqpAgent\\Laravel\\Tests\\']]]));
        $app->instance('events', new Events($app));
        $app->instance('router', new Router($app['events'], $app));
        $app->singleton(\Illuminate\Contracts\Bus\Dispatcher::class, static fn ($app) => new \Illuminate\Bus\Dispatcher($app));
        $provider = new AgentServiceProvider($app);
        $provider->register();
        $provider->boot();

        return $app;
    }

    /** @return array{0: array<string, string>, 1: string} the agent's request for a published job */
    public static function request(object $job, string $id = 'job-1', ?string $traceparent = null): array
    {
        return self::signed(Publisher::payload($job, $id), $id, $traceparent);
    }

    /** @return array{0: array<string, string>, 1: string} the agent's request for a message body */
    public static function signed(string $body, string $id, ?string $traceparent = null): array
    {
        $server = [
            'REQUEST_METHOD' => 'POST',
            'CONTENT_TYPE' => 'application/json',
            'HTTP_X_AGENT_SUBJECT' => 'command',
            'HTTP_X_AGENT_MESSAGE_ID' => $id,
            'HTTP_X_AGENT_ATTEMPT' => '1',
            'HTTP_X_AGENT_ROUTING_KEY' => 'command',
            'HTTP_X_AGENT_EXCHANGE' => '',
            'HTTP_X_AGENT_CONTENT_TYPE' => 'application/json',
            'HTTP_X_AGENT_HEADERS' => '{}',
        ];
        if ($traceparent !== null) {
            $server['HTTP_TRACEPARENT'] = $traceparent;
        }
        $server['HTTP_X_AGENT_SIGNATURE'] = Signature::header([self::SECRET], time(), SignedFields::fromServer($server, $body));

        return [$server, $body];
    }
}
