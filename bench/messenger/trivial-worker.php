<?php
// Messenger's own Worker on the hand-wired bus of trivial.php, reading both queues of the DSN in
// AGENT_AMQP_DSN with the AMQP transport and PhpSerializer (what the app published with).
declare(strict_types=1);

use Symfony\Component\Messenger\Bridge\Amqp\Transport\AmqpTransport;
use Symfony\Component\Messenger\Bridge\Amqp\Transport\Connection;
use Symfony\Component\Messenger\Transport\Serialization\PhpSerializer;
use Symfony\Component\Messenger\Worker;

$bus = require __DIR__ . '/trivial.php';
$connection = Connection::fromDsn(getenv('AGENT_AMQP_DSN'), ['auto_setup' => false, 'exchange' => ['name' => '']]);
(new Worker(['agent' => new AmqpTransport($connection, new PhpSerializer())], $bus))->run(['sleep' => 100000]);
