<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel;

use AmqpAgent\Receiver\MessageId;
use AmqpAgent\Receiver\TraceContext;
use Illuminate\Contracts\Encryption\Encrypter;
use Illuminate\Contracts\Queue\ShouldBeEncrypted;

/**
 * Sends a job or command to the agent's queue of a subject, as Laravel's own queue payload
 * (so the receiving side — this package, or a Laravel queue worker — decodes it as usual), with
 * the AMQP message_id set to the payload's uuid and the current traceparent in the headers.
 * A ShouldBeEncrypted job is encrypted with the app's encrypter, as Laravel's queue does.
 *
 *     app(Publisher::class)->publish(new PlaceOrder($id), 'command');
 */
final class Publisher
{
    /**
     * @param array<string, string> $queues subject => queue name
     * @param Encrypter|(\Closure(): ?Encrypter)|null $encrypter for ShouldBeEncrypted jobs; a closure
     *        is called only when such a job is published (so an app without APP_KEY can still
     *        publish plain jobs)
     */
    public function __construct(
        private readonly Transport $transport,
        private readonly TraceContext $trace,
        private readonly array $queues,
        private readonly Encrypter|\Closure|null $encrypter = null,
    ) {
    }

    /** @return string the message id */
    public function publish(object $job, string $subject = 'command', ?string $messageId = null): string
    {
        $queue = $this->queues[$subject] ?? null;
        if (!is_string($queue) || $queue === '') {
            throw new \InvalidArgumentException(sprintf('no queue configured for the subject "%s" (amqp-agent.queues)', $subject));
        }
        $id = $messageId ?? MessageId::generate();
        $headers = [];
        if (($traceparent = $this->trace->traceparent()) !== null) {
            $headers['traceparent'] = $traceparent;
            if (($tracestate = $this->trace->tracestate()) !== null) {
                $headers['tracestate'] = $tracestate;
            }
        }
        $encrypter = self::shouldBeEncrypted($job) && $this->encrypter instanceof \Closure ? ($this->encrypter)() : $this->encrypter;
        $this->transport->publish($queue, self::payload($job, $id, $encrypter instanceof Encrypter ? $encrypter : null), [
            'message_id' => $id,
            'content_type' => 'application/json',
            'type' => $job::class,
            'delivery_mode' => 2,
            'timestamp' => time(),
            'headers' => $headers,
        ]);

        return $id;
    }

    /**
     * Laravel's queue payload (Illuminate\Queue\Queue::createObjectPayload) for $job: `data.command`
     * is serialize($job), encrypted with $encrypter when the job should be encrypted.
     *
     * @throws \LogicException for a job that should be encrypted, without an encrypter: Laravel's
     *         queue would then send it in plaintext; this refuses to
     */
    public static function payload(object $job, string $uuid, ?Encrypter $encrypter = null): string
    {
        $command = serialize(clone $job);
        if (self::shouldBeEncrypted($job)) {
            if ($encrypter === null) {
                throw new \LogicException(sprintf('%s should be encrypted, and no encrypter is bound (set APP_KEY): not publishing it in plaintext', $job::class));
            }
            $command = $encrypter->encrypt($command);
        }

        return json_encode([
            'uuid' => $uuid,
            'displayName' => method_exists($job, 'displayName') ? $job->displayName() : $job::class,
            'job' => 'Illuminate\\Queue\\CallQueuedHandler@call',
            'maxTries' => $job->tries ?? null,
            'maxExceptions' => $job->maxExceptions ?? null,
            'failOnTimeout' => $job->failOnTimeout ?? false,
            'backoff' => null,
            'timeout' => $job->timeout ?? null,
            'retryUntil' => null,
            'data' => [
                'commandName' => $job::class,
                'command' => $command,
            ],
        ], JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR);
    }

    /** As Illuminate\Queue\Queue::jobShouldBeEncrypted(): the interface, or a true $shouldBeEncrypted. */
    private static function shouldBeEncrypted(object $job): bool
    {
        return $job instanceof ShouldBeEncrypted || (isset($job->shouldBeEncrypted) && $job->shouldBeEncrypted);
    }
}
