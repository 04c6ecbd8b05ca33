<?php
// Publisher of the latency rows (run.py --trickle, --slowdown), driven by the bench over stdin:
//   php paced-publish.php
// Each line `<queue> <count>` publishes <count> OrderPlaced messages to <queue> through
// Messenger's AMQP transport (PhpSerializer, the default exchange, persistent, a message_id):
// test `<queue>` (latency.php records to latency-<queue>.jsonl), id `<queue>-<n>`, and the
// publish time (microtime(true), taken just before each send) in `behave`; then it answers
// `ok <count>`. The bench paces the lines; EOF ends it.
declare(strict_types=1);

use App\Message\OrderPlaced;
use Symfony\Component\Messenger\Bridge\Amqp\Transport\AmqpSender;
use Symfony\Component\Messenger\Bridge\Amqp\Transport\AmqpStamp;
use Symfony\Component\Messenger\Bridge\Amqp\Transport\Connection;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\Transport\Serialization\PhpSerializer;

require (getenv('TRIVIAL_APP') ?: __DIR__ . '/../../tests/apps/symfony') . '/autoload.php';

$dsn = 'amqp://guest:guest@127.0.0.1:5672/%2f/bench';
$sender = new AmqpSender(Connection::fromDsn($dsn, ['auto_setup' => false, 'exchange' => ['name' => '']]), new PhpSerializer());
$sent = [];
while (($line = fgets(STDIN)) !== false) {
    [$queue, $count] = explode(' ', trim($line));
    for ($i = 0; $i < (int) $count; $i++) {
        $n = $sent[$queue] = ($sent[$queue] ?? 0) + 1;
        $id = "{$queue}-{$n}";
        $message = new OrderPlaced($queue, $id, sprintf('%.6f', microtime(true)));
        $sender->send(new Envelope($message, [new AmqpStamp($queue, AMQP_NOPARAM, ['message_id' => $id])]));
    }
    echo "ok {$count}\n";
    fflush(STDOUT);
}
