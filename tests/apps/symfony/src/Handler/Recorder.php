<?php

declare(strict_types=1);

namespace App\Handler;

use AmqpAgent\Receiver\TraceContext;
use AmqpAgent\SymfonyBundle\Messenger\AgentMessageStamp;
use AmqpAgent\SymfonyBundle\Messenger\MessageIdStamp;
use AmqpAgent\SymfonyBundle\Messenger\TraceparentStamp;
use App\Spy\Delivery;
use Symfony\Component\Messenger\Exception\RecoverableMessageHandlingException;
use Symfony\Component\Messenger\Exception\UnrecoverableMessageHandlingException;

/**
 * What the handlers share: behave as the message asks, then record one JSON line: the current
 * trace context, the agent's message id, and the publisher's stamps as the transport serializer
 * decoded them (MessageIdStamp, TraceparentStamp).
 */
abstract class Recorder
{
    public function __construct(private readonly TraceContext $trace, private readonly Delivery $delivery, private readonly string $recordDir)
    {
    }

    protected function handle(string $kind, string $test, string $id, string $behave): void
    {
        $base = "{$this->recordDir}/symfony-{$test}";
        if ($behave === 'unrecoverable') {
            throw new UnrecoverableMessageHandlingException("{$id} can never be handled");
        }
        // "Once": the first attempt leaves a marker and fails; the next one finds it.
        if ($behave === 'recover-once' && @mkdir("{$base}-{$id}.once")) {
            $this->record($base, ['kind' => $kind, 'id' => $id, 'failed' => 'recoverable']);
            throw new RecoverableMessageHandlingException("{$id} fails once");
        }
        $this->record($base, ['kind' => $kind, 'id' => $id, 'traceparent' => $this->trace->traceparent(), 'pid' => getmypid()] + $this->stamps());
    }

    /** @return array{agent_id: ?string, stamp_id: ?string, stamp_traceparent: ?string} */
    private function stamps(): array
    {
        $dispatched = $this->delivery->dispatched;
        $decoded = $this->delivery->decoded;
        if ($decoded !== null && $decoded->getMessage() !== $dispatched?->getMessage()) {
            $decoded = null; // not this delivery's
        }
        $agent = $dispatched?->last(AgentMessageStamp::class);
        $id = $decoded?->last(MessageIdStamp::class);
        $tp = $decoded?->last(TraceparentStamp::class);

        return [
            'agent_id' => $agent instanceof AgentMessageStamp ? $agent->messageId : null,
            'stamp_id' => $id instanceof MessageIdStamp ? $id->id : null,
            'stamp_traceparent' => $tp instanceof TraceparentStamp ? $tp->traceparent : null,
        ];
    }

    private function record(string $base, array $line): void
    {
        file_put_contents("{$base}.jsonl", json_encode($line, JSON_UNESCAPED_SLASHES) . "\n", FILE_APPEND | LOCK_EX);
    }
}
