<?php

declare(strict_types=1);

namespace App\Jobs;

use AmqpAgent\Laravel\AgentContext;
use AmqpAgent\Receiver\PermanentFailure;
use AmqpAgent\Receiver\RetryLater;
use AmqpAgent\Receiver\TraceContext;
use Illuminate\Bus\Queueable;
use Illuminate\Contracts\Queue\ShouldQueue;
use Illuminate\Queue\InteractsWithQueue;
use Illuminate\Queue\SerializesModels;

/** What the jobs share: behave as asked (ok | retry-once | permanent), then record one JSON line. */
abstract class Recorded implements ShouldQueue
{
    use InteractsWithQueue;
    use Queueable;
    use SerializesModels;

    public function __construct(public string $test, public string $id, public string $behave = 'ok')
    {
    }

    public function handle(TraceContext $trace, AgentContext $agent): void
    {
        $base = getenv('RECORD_DIR') . "/laravel-{$this->test}";
        if ($this->behave === 'permanent') {
            throw new PermanentFailure("{$this->id} can never be handled");
        }
        if ($this->behave === 'retry-once' && @mkdir("{$base}-{$this->id}.once")) {
            $this->record($base, ['kind' => $this->kind(), 'id' => $this->id, 'failed' => 'retry-later']);
            throw new RetryLater(1, "{$this->id} fails once");
        }
        $this->record($base, [
            'kind' => $this->kind(),
            'id' => $this->id,
            'traceparent' => $trace->traceparent(),
            'message_id' => $agent->message()?->messageId,
            'pid' => getmypid(),
        ]);
    }

    abstract protected function kind(): string;

    private function record(string $base, array $line): void
    {
        file_put_contents("{$base}.jsonl", json_encode($line, JSON_UNESCAPED_SLASHES) . "\n", FILE_APPEND | LOCK_EX);
    }
}
