<?php
// Publishes with the package's Publisher to the agent's queues:
//   php bin/publish.php <test> <events> <commands> [id:behave …]
// Each message is published inside a trace context whose trace id is its id's bytes in hex,
// left-padded with zeros.
declare(strict_types=1);

use AmqpAgent\Laravel\Publisher;
use AmqpAgent\Receiver\TraceContext;
use App\Jobs\OrderShipped;
use App\Jobs\ShipOrder;

$app = require __DIR__ . '/../bootstrap/app.php';
$app->make(Illuminate\Contracts\Http\Kernel::class)->bootstrap();

[, $test, $events, $commands] = $argv + [null, null, '0', '0'];
$special = [];
foreach (array_slice($argv, 4) as $arg) {
    [$id, $behave] = explode(':', $arg, 2);
    $special[$id] = $behave;
}
$traceparent = static fn (string $id): string => sprintf('00-%s-%s-01', str_pad(bin2hex($id), 32, '0', STR_PAD_LEFT), substr(hash('sha256', "span {$id}"), 0, 16));
$publisher = $app->make(Publisher::class);
$trace = $app->make(TraceContext::class);

for ($i = 0; $i < (int) $events; $i++) {
    $id = "e{$i}";
    $trace->within($traceparent($id), null, static fn () => $publisher->publish(new OrderShipped($test, $id, $special[$id] ?? 'ok'), 'event'));
}
for ($i = 0; $i < (int) $commands; $i++) {
    $id = "c{$i}";
    $trace->within($traceparent($id), null, static fn () => $publisher->publish(new ShipOrder($test, $id, $special[$id] ?? 'ok'), 'command'));
}
echo "published {$events} events and {$commands} commands\n";
