<?php
// Queue chores for bench/messenger/run.py through ext-amqp (no management API needed):
//   php queues.php declare|delete|count <queue> …
// `declare` makes plain durable queues, as the agent declares its main queues.
declare(strict_types=1);

[, $verb] = $argv;
$connection = new AMQPConnection(['host' => '127.0.0.1', 'port' => 5672, 'login' => 'guest', 'password' => 'guest', 'vhost' => '/']);
$connection->connect();
$channel = new AMQPChannel($connection);
foreach (array_slice($argv, 2) as $name) {
    $queue = new AMQPQueue($channel);
    $queue->setName($name);
    if ($verb === 'delete') {
        try {
            $queue->delete();
        } catch (AMQPQueueException) {
            $channel = new AMQPChannel($connection); // absent: the broker closed the channel
        }
        continue;
    }
    $queue->setFlags(AMQP_DURABLE | ($verb === 'count' ? AMQP_PASSIVE : 0));
    $count = $queue->declareQueue();
    if ($verb === 'count') {
        echo "{$name} {$count}\n";
    }
}
