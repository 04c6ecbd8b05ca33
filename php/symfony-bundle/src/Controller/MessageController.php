<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Controller;

use AmqpAgent\Receiver\Batch;
use AmqpAgent\Receiver\BatchOutput;
use AmqpAgent\Receiver\Receiver;
use AmqpAgent\Receiver\Response as AgentResponse;
use AmqpAgent\SymfonyBundle\Messenger\AgentMessageStamp;
use AmqpAgent\SymfonyBundle\Messenger\EnvelopeDecoder;
use AmqpAgent\SymfonyBundle\Messenger\ExceptionMapper;
use AmqpAgent\SymfonyBundle\Messenger\MessageIdStamp;
use AmqpAgent\Receiver\TraceContext;
use Psr\Log\LoggerInterface;
use Symfony\Component\DependencyInjection\Exception\EnvNotFoundException;
use Symfony\Component\HttpFoundation\Request;
use Symfony\Component\HttpFoundation\Response;
use Symfony\Component\HttpFoundation\StreamedResponse;
use Symfony\Component\Messenger\MessageBusInterface;
use Symfony\Component\Messenger\Stamp\ConsumedByWorkerStamp;
use Symfony\Component\Messenger\Stamp\ReceivedStamp;
use Symfony\Component\Messenger\Stamp\TransportMessageIdStamp;

/**
 * POST /_agent/messages/{subject}: verify the agent's signature, decode the Messenger envelope,
 * dispatch it synchronously on the bus (a ReceivedStamp keeps routing from sending it again),
 * and answer with the outcome the agent acts on (see ExceptionMapper).
 *
 * A batch (docs/batches.md) is a streamed response: each entry goes through the same path as a
 * single message, its outcome line is flushed as soon as it is done, and between entries the
 * container is reset as Messenger's worker resets it between messages (`services_resetter`,
 * then every Doctrine entity manager cleared).
 *
 * The receiver is built on the first request (a closure from the container): when it cannot be
 * (no AGENT_SIGNING_SECRET in the pool: `%env(AGENT_SIGNING_SECRET)%` not found), the answer is
 * the package's own 503 `amqp-agent: signing secret not configured: …` (a configuration fault
 * to the agent: it pauses the subject and quotes the text), not Symfony's HTML error page.
 */
final class MessageController
{
    private ?Receiver $built = null;

    public function __construct(
        /** The receiver, or a closure that builds it (the container's service closure). */
        private readonly Receiver|\Closure $receiver,
        private readonly EnvelopeDecoder $decoder,
        private readonly MessageBusInterface $bus,
        private readonly ExceptionMapper $mapper,
        private readonly TraceContext $trace,
        private readonly string $transportName = 'amqp-agent',
        private readonly ?LoggerInterface $logger = null,
        /** `services_resetter` (Symfony\Component\HttpKernel\DependencyInjection\ServicesResetter), if any. */
        private readonly ?object $resetter = null,
        /** `doctrine` (Doctrine\Persistence\ManagerRegistry), if any. */
        private readonly ?object $doctrine = null,
    ) {
    }

    public function __invoke(Request $request, string $subject): Response
    {
        $response = $this->serve($request->server->all(), $request->getContent());

        return $response instanceof AgentResponse ? self::toHttp($response) : $response;
    }

    /**
     * Any request of the agent, from the FastCGI params and the body (what a slim front
     * controller calls): a single message's outcome, or a batch's streamed response. Both send().
     */
    public function serve(array $server, string $body): AgentResponse|Response
    {
        // Both kinds are routed here: a single message's ack says batches are taken too.
        return Batch::isBatch($server) ? $this->batch($server, $body) : $this->handle($server, $body)->acceptingBatches();
    }

    /** A batch request: the refusal of the whole, or the streamed outcome lines. */
    public function batch(array $server, string $body, ?BatchOutput $output = null): Response
    {
        $receiver = $this->receiver();
        if ($receiver instanceof AgentResponse) {
            return self::toHttp($receiver);
        }
        $entries = $receiver->openBatch($server, $body);
        if ($entries instanceof AgentResponse) {
            return self::toHttp($entries);
        }

        return new StreamedResponse(function () use ($receiver, $entries, $output): void {
            $receiver->runBatch($entries, $this->handle(...), $output ?? BatchOutput::stream(), $this->reset(...));
        }, 200, BatchOutput::HEADERS);
    }

    /** What Messenger's worker does between two messages. */
    public function reset(): void
    {
        if ($this->resetter !== null && method_exists($this->resetter, 'reset')) {
            $this->resetter->reset();
        }
        if ($this->doctrine !== null && method_exists($this->doctrine, 'getManagers')) {
            foreach ($this->doctrine->getManagers() as $manager) {
                $manager->clear();
            }
        }
    }

    /** The whole exchange without HttpFoundation: $server are the FastCGI params. */
    public function handle(array $server, string $body): AgentResponse
    {
        $receiver = $this->receiver();
        if ($receiver instanceof AgentResponse) {
            return $receiver;
        }
        $message = $receiver->admit($server, $body);
        if ($message instanceof AgentResponse) {
            return $message;
        }

        try {
            $envelope = $this->decoder->decode($message)->with(
                new ReceivedStamp($this->transportName),
                new ConsumedByWorkerStamp(),
                new TransportMessageIdStamp($message->messageId),
                new AgentMessageStamp($message->subject, $message->messageId, $message->attempt, $message->redelivered, $message->traceparent),
            );
            if ($envelope->last(MessageIdStamp::class) === null) {
                $envelope = $envelope->with(new MessageIdStamp($message->messageId));
            }
            $this->trace->within($message->traceparent, $message->tracestate, fn () => $this->bus->dispatch($envelope));
        } catch (\Throwable $e) {
            $response = $this->mapper->map($e);
            $this->logger?->warning('amqp-agent: message {id} (attempt {attempt}) failed with {status}: {reason}', [
                'id' => $message->messageId,
                'attempt' => $message->attempt,
                'status' => $response->status,
                'reason' => trim($response->body),
                'exception' => $e,
            ]);

            return $response;
        }

        return AgentResponse::ack();
    }

    /**
     * The receiver, or the package's answer when it cannot be built: 503 `amqp-agent: signing
     * secret not configured: <why>` for an environment variable not found (the secrets are the
     * receiver's only one), 503 `amqp-agent: configuration error: <class>: <message>` otherwise.
     */
    public function receiver(): Receiver|AgentResponse
    {
        if ($this->receiver instanceof Receiver) {
            return $this->receiver;
        }
        try {
            return $this->built ??= ($this->receiver)();
        } catch (\Throwable $e) {
            $reason = $e instanceof EnvNotFoundException
                ? AgentResponse::SECRET_NOT_CONFIGURED . ': ' . $e->getMessage()
                : 'configuration error: ' . Receiver::describe($e);
            $this->logger?->error('amqp-agent: cannot serve the agent: {reason}', ['reason' => $reason, 'exception' => $e]);

            return AgentResponse::misconfigured($reason);
        }
    }

    public static function toHttp(AgentResponse $response): Response
    {
        return new Response($response->body, $response->status, $response->headers + ['Content-Type' => 'text/plain; charset=utf-8']);
    }
}
