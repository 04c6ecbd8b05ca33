<?php
// The latency rows' handler (run.py --trickle, --slowdown): like trivial.php, a Messenger bus
// wired by hand, with one middleware instead of a handler. For each message it reads its cost
// in milliseconds from the file BENCH_COST_FILE (read per message, so the bench can change it
// mid-run; absent or empty: 0), sleeps that long, and appends one JSON line to
// RECORD_DIR/latency-<test>.jsonl: the id, the publish time the message carries (`behave`, set by
// paced-publish.php), when the entry started and ended, the request it came in (the FPM child's
// pid and the request's start time), that request's batch size, and the agent's attempt and
// redelivered flag. Times are microtime(true): the same wall clock as the publisher's.
declare(strict_types=1);

use AmqpAgent\SymfonyBundle\Messenger\AgentMessageStamp;
use App\Message\OrderPlaced;
use App\Message\PlaceOrder;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\MessageBus;
use Symfony\Component\Messenger\Middleware\MiddlewareInterface;
use Symfony\Component\Messenger\Middleware\StackInterface;

require (getenv('TRIVIAL_APP') ?: __DIR__ . '/../../tests/apps/symfony') . '/autoload.php';

return new MessageBus([new class () implements MiddlewareInterface {
    public function handle(Envelope $envelope, StackInterface $stack): Envelope
    {
        $start = microtime(true);
        $m = $envelope->getMessage();
        assert($m instanceof OrderPlaced || $m instanceof PlaceOrder);
        $costFile = getenv('BENCH_COST_FILE');
        $ms = $costFile ? (float) @file_get_contents($costFile) : 0.0;
        if ($ms > 0) {
            usleep((int) round($ms * 1000));
        }
        $agent = $envelope->last(AgentMessageStamp::class);
        $line = json_encode([
            'id' => $m->id,
            'pub' => (float) $m->behave,
            'start' => $start,
            'end' => microtime(true),
            'cost' => $ms,
            'req' => getmypid() . '/' . $_SERVER['REQUEST_TIME_FLOAT'],
            'req_start' => (float) $_SERVER['REQUEST_TIME_FLOAT'],
            'size' => (int) ($_SERVER['HTTP_X_AGENT_BATCH_SIZE'] ?? 1),
            'attempt' => $agent instanceof AgentMessageStamp ? $agent->attempt : 0,
            'redelivered' => $agent instanceof AgentMessageStamp && $agent->redelivered,
        ]);
        $dir = getenv('RECORD_DIR') ?: sys_get_temp_dir();
        file_put_contents("{$dir}/latency-{$m->test}.jsonl", $line . "\n", FILE_APPEND | LOCK_EX);

        return $envelope;
    }
}]);
