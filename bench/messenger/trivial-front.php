<?php
// php-fpm front controller of the trivial variant: the bundle's controller, built by hand around
// the bus of trivial.php (signature check, envelope decoding, ReceivedStamp, exception mapping).
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

$bus = require __DIR__ . '/trivial.php';
$controller = new MessageController(new Receiver(Signature::fromEnv($_SERVER)), new EnvelopeDecoder(new PhpSerializer(), new MessageAllowlist([OrderPlaced::class, PlaceOrder::class])), $bus, new ExceptionMapper(), new TraceContext());
// A single message's outcome, or with batch_max > 1 (docs/batches.md) the streamed batch reply.
$controller->serve($_SERVER, (string) file_get_contents('php://input'))->send();
