<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel\Http;

use AmqpAgent\Laravel\AgentContext;
use AmqpAgent\Laravel\PayloadDecoder;
use AmqpAgent\Receiver\Receiver;
use AmqpAgent\Receiver\Response as AgentResponse;
use AmqpAgent\Receiver\TraceContext;
use Illuminate\Contracts\Bus\Dispatcher;
use Illuminate\Contracts\Container\Container;
use Illuminate\Contracts\Encryption\Encrypter;
use Illuminate\Http\Request;
use Illuminate\Http\Response;

/**
 * POST /_agent/messages/{subject}: verify the agent's signature, turn the Laravel job payload
 * back into the job, run it with Bus::dispatchSync() and answer with the outcome the agent acts
 * on: ack; PermanentFailure 422 (dead-letter); RetryLater 503 + Retry-After; anything else 500
 * (retry on the agent's schedule); a bad signature 401.
 */
final class MessageController
{
    public function __construct(
        private readonly Receiver $receiver,
        private readonly Dispatcher $bus,
        private readonly TraceContext $trace,
        private readonly AgentContext $context,
        private readonly Container $container,
    ) {
    }

    public function __invoke(Request $request, string $subject): Response
    {
        $response = $this->handle($request->server->all(), $request->getContent());

        return new Response($response->body, $response->status, $response->headers + ['Content-Type' => 'text/plain; charset=utf-8']);
    }

    public function handle(array $server, string $body): AgentResponse
    {
        $message = $this->receiver->admit($server, $body);
        if ($message instanceof AgentResponse) {
            return $message;
        }

        try {
            $encrypter = $this->container->bound(Encrypter::class) ? $this->container->make(Encrypter::class) : null;
            $job = (new PayloadDecoder($encrypter))->decode($body);
            $this->context->within($message, fn () => $this->trace->within(
                $message->traceparent,
                $message->tracestate,
                fn () => $this->bus->dispatchSync($job),
            ));
        } catch (\Throwable $e) {
            return $this->receiver->failed($message, $e);
        }

        return AgentResponse::ack();
    }
}
