<?php
// Slim front controller for the agent's requests only (point fpm.script_filename here): boots the
// kernel from its cached container and hands the FastCGI params and body straight to the bundle's
// controller, skipping HttpFoundation's Request, routing and the kernel's request events.
// The same bus, middleware and handlers as public/index.php; bench/RESULTS.md measures the gain.
// What it gives up: no kernel.request/response/terminate listeners run (no Request object), so an
// app that relies on them for the agent's requests (e.g. work deferred to kernel.terminate) keeps
// public/index.php. php/symfony-bundle/README.md ("Throughput") shows the same file;
// tests/it/symfony.rs serves single messages and batches through it.
declare(strict_types=1);

use AmqpAgent\SymfonyBundle\Controller\MessageController;
use App\Kernel;

require __DIR__ . '/../autoload.php';

$kernel = new Kernel('prod', false);
$kernel->boot();
$kernel->getContainer()->get(MessageController::class)->serve($_SERVER, (string) file_get_contents('php://input'))->send();
