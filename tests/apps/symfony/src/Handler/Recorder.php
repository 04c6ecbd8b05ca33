<?php

declare(strict_types=1);

namespace App\Handler;

use AmqpAgent\Receiver\TraceContext;
use Symfony\Component\Messenger\Exception\RecoverableMessageHandlingException;
use Symfony\Component\Messenger\Exception\UnrecoverableMessageHandlingException;

/** What the handlers share: behave as the message asks, then record one JSON line. */
abstract class Recorder
{
    public function __construct(private readonly TraceContext $trace, private readonly string $recordDir)
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
        $this->record($base, ['kind' => $kind, 'id' => $id, 'traceparent' => $this->trace->traceparent(), 'pid' => getmypid()]);
    }

    private function record(string $base, array $line): void
    {
        file_put_contents("{$base}.jsonl", json_encode($line, JSON_UNESCAPED_SLASHES) . "\n", FILE_APPEND | LOCK_EX);
    }
}
