<?php
// Publishes through the app's own bus (Messenger's AMQP transport) to the agent's queues:
//   php bin/publish.php <test> <events> <commands> [id:behave …]
// Events are dispatched inside a trace context (the "current" one, as in a request), commands
// with an explicit TraceparentStamp; each message's trace id is its id's bytes in hex, left-padded with zeros.
declare(strict_types=1);

use AmqpAgent\Receiver\TraceContext;
use AmqpAgent\SymfonyBundle\Messenger\TraceparentStamp;
use App\Kernel;
use App\Message\OrderPlaced;
use App\Message\PlaceOrder;
use Symfony\Component\Messenger\MessageBusInterface;

require __DIR__ . '/../autoload.php';

[, $test, $events, $commands] = $argv + [null, null, '0', '0'];
$special = [];
foreach (array_slice($argv, 4) as $arg) {
    [$id, $behave] = explode(':', $arg, 2);
    $special[$id] = $behave;
}
$traceparent = static fn (string $id): string => sprintf('00-%s-%s-01', str_pad(bin2hex($id), 32, '0', STR_PAD_LEFT), substr(hash('sha256', "span {$id}"), 0, 16));

$kernel = new Kernel('prod', false);
$kernel->boot();
$container = $kernel->getContainer();
/** @var MessageBusInterface $bus */
$bus = $container->get('messenger.default_bus');
/** @var TraceContext $trace */
$trace = $container->get(TraceContext::class);

for ($i = 0; $i < (int) $events; $i++) {
    $id = "e{$i}";
    $trace->within($traceparent($id), null, static fn () => $bus->dispatch(new OrderPlaced($test, $id, $special[$id] ?? 'ok')));
}
for ($i = 0; $i < (int) $commands; $i++) {
    $id = "c{$i}";
    $bus->dispatch(new PlaceOrder($test, $id, $special[$id] ?? 'ok'), [new TraceparentStamp($traceparent($id))]);
}
echo "published {$events} events and {$commands} commands\n";
