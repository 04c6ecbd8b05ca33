<?php
// What a publisher with nothing but publish rights could send (tests/it/laravel.rs): one JSON line
// per message, {"id", "subject", "body" (base64)}, for the test to publish raw.
//   php bin/hostile.php <test> <gadget-file>
// `gadget`: a job payload whose command is App\Spy\Gadget (outside amqp-agent.allowed_jobs);
// `plain`: a ShipOrder (ShouldBeEncrypted) serialized in plaintext, as no Laravel queue sends it.
declare(strict_types=1);

use App\Jobs\ShipOrder;
use App\Spy\Gadget;

require __DIR__ . '/../autoload.php';

[, $test, $file] = $argv;
$payload = static fn (string $id, object $job): string => json_encode([
    'uuid' => $id,
    'displayName' => $job::class,
    'job' => 'Illuminate\Queue\CallQueuedHandler@call',
    'data' => ['commandName' => $job::class, 'command' => serialize($job)],
], JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR);
foreach ([['gadget', 'event', new Gadget($file)], ['plain', 'command', new ShipOrder($test, 'plain')]] as [$id, $subject, $job]) {
    echo json_encode(['id' => $id, 'subject' => $subject, 'body' => base64_encode($payload($id, $job))]), "\n";
}
