<?php
// php-fpm front controller of the latency rows: trivial-front.php around the bus of latency.php
// (the bundle's controller: signature check, envelope decoding, single or batch reply).
declare(strict_types=1);

use AmqpAgent\Receiver\Receiver;
use AmqpAgent\Receiver\Signature;
use AmqpAgent\Receiver\TraceContext;
use AmqpAgent\SymfonyBundle\Controller\MessageController;
use AmqpAgent\SymfonyBundle\Messenger\EnvelopeDecoder;
use AmqpAgent\SymfonyBundle\Messenger\ExceptionMapper;
use AmqpAgent\SymfonyBundle\Messenger\MessageAllowlist;
use App\Message\OrderPlaced;
use App\Message\PlaceOrder;
use Symfony\Component\Messenger\Transport\Serialization\PhpSerializer;

$bus = require __DIR__ . '/latency.php';
$controller = new MessageController(new Receiver(Signature::fromEnv($_SERVER)), new EnvelopeDecoder(new PhpSerializer(), new MessageAllowlist([OrderPlaced::class, PlaceOrder::class])), $bus, new ExceptionMapper(), new TraceContext());
$controller->serve($_SERVER, (string) file_get_contents('php://input'))->send();
