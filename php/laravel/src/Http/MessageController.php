<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel\Http;

use AmqpAgent\Laravel\AgentContext;
use AmqpAgent\Laravel\PayloadDecoder;
use AmqpAgent\Receiver\Batch;
use AmqpAgent\Receiver\BatchOutput;
use AmqpAgent\Receiver\Receiver;
use AmqpAgent\Receiver\Response as AgentResponse;
use AmqpAgent\Receiver\TraceContext;
use Illuminate\Contracts\Bus\Dispatcher;
use Illuminate\Contracts\Container\Container;
use Illuminate\Http\Request;
use Illuminate\Http\Response;
use Illuminate\Support\Facades\Facade;
use Symfony\Component\HttpFoundation\Response as SymfonyResponse;
use Symfony\Component\HttpFoundation\StreamedResponse;

/**
 * POST /_agent/messages/{subject}: verify the agent's signature, turn the Laravel job payload
 * back into the job, run it with Bus::dispatchSync() and answer with the outcome the agent acts
 * on: ack; PermanentFailure 422 (dead-letter), a job class not allowed included (PayloadDecoder);
 * RetryLater 503 + Retry-After; anything else 500 (retry on the agent's schedule); a bad
 * signature 401.
 *
 * A batch (docs/batches.md) is a streamed response: each entry goes through the same path as a
 * single message, its outcome line is flushed as soon as it is done, and between entries the
 * app is reset as `queue:work` resets it between jobs (reset()).
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

    public function __invoke(Request $request, string $subject): SymfonyResponse
    {
        $server = $request->server->all();
        if (Batch::isBatch($server)) {
            return $this->batch($server, $request->getContent());
        }

        // Both kinds are routed here: a single message's ack says batches are taken too.
        return self::toHttp($this->handle($server, $request->getContent())->acceptingBatches());
    }

    /** A batch request: the refusal of the whole, or the streamed outcome lines. */
    public function batch(array $server, string $body, ?BatchOutput $output = null): SymfonyResponse
    {
        $entries = $this->receiver->openBatch($server, $body);
        if ($entries instanceof AgentResponse) {
            return self::toHttp($entries);
        }

        return new StreamedResponse(function () use ($entries, $output): void {
            // Resolved once per request, as for a single message: a batch is one request.
            $decoder = $this->container->make(PayloadDecoder::class);
            $this->receiver->runBatch(
                $entries,
                fn (array $server, string $body): AgentResponse => $this->handle($server, $body, $decoder),
                $output ?? BatchOutput::stream(),
                $this->reset(...),
            );
        }, 200, BatchOutput::HEADERS);
    }

    /**
     * What the queue worker resets between two jobs (QueueServiceProvider's reset scope): the
     * log context, the container's scoped instances, the facades' resolved instances.
     */
    public function reset(): void
    {
        if ($this->container->bound('log') && method_exists($log = $this->container->make('log'), 'driver')
            && method_exists($driver = $log->driver(), 'withoutContext')) {
            // The worker calls $log->withoutContext(): the LogManager's own method where it has
            // one (Laravel ≥ 10), else its __call, which forwards to driver(), the channel
            // resolved just above; calling that one directly spares resolving it again.
            method_exists($log, 'withoutContext') ? $log->withoutContext() : $driver->withoutContext();
        }
        if (method_exists($this->container, 'forgetScopedInstances')) {
            $this->container->forgetScopedInstances();
        }
        Facade::clearResolvedInstances();
    }

    private static function toHttp(AgentResponse $response): Response
    {
        return new Response($response->body, $response->status, $response->headers + ['Content-Type' => 'text/plain; charset=utf-8']);
    }

    /** One message; $decoder: the batch's (resolved once per request), else resolved here. */
    public function handle(array $server, string $body, ?PayloadDecoder $decoder = null): AgentResponse
    {
        $message = $this->receiver->admit($server, $body);
        if ($message instanceof AgentResponse) {
            return $message;
        }

        try {
            $job = ($decoder ?? $this->container->make(PayloadDecoder::class))->decode($body);
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
