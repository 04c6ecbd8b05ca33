<?php
// What a publisher with nothing but publish rights could send (tests/it/symfony.rs): one JSON line
// per message, {"id", "body" (base64)}, for the test to publish raw to the event queue.
//   php bin/hostile.php <gadget-file>
// `gadget`: a PhpSerializer envelope whose message is App\Spy\Gadget (routing names no such class).
declare(strict_types=1);

use App\Spy\Gadget;
use Symfony\Component\Messenger\Envelope;

require __DIR__ . '/../autoload.php';

[, $file] = $argv;
echo json_encode(['id' => 'gadget', 'body' => base64_encode(addslashes(serialize(new Envelope(new Gadget($file)))))]), "\n";
