<?php
// PHP's own cost per entry of a batch request (docs/batches.md), the boot excluded: for each
// package, a real signed batch body of N entries (built once, signed as the agent signs), run
// through the package's batch path in a loop, with a handler that does nothing and the outcome
// lines written to a memory stream (one write per entry, as BatchOutput flushes them).
//
//   php -d opcache.enable_cli=1 bench/php/batch-entry.php [--package receiver,symfony,laravel]
//       [--entries 1,50] [--reps 9] [--min-entries 2000] [--out memory|null] [--instructions]
//
// Prints, per package and N, the wall-clock µs per entry (hrtime, median and spread of --reps
// repetitions, each of ≥ --min-entries entries after a warm-up) and, with --instructions, the
// user-space instructions per entry under `valgrind --tool=callgrind`: two runs of this script
// that differ only in the number of batches, so the boot and the warm-up cancel out:
// (Ir(2k batches) − Ir(k batches)) / (k × N). Repeatable within a fraction of a percent, whatever
// the machine's load. docs/performance.md ("PHP's cost per batch entry") has the figures.
//
// The apps are the test apps (tests/apps/symfony: its kernel booted once, prod, cached container;
// tests/apps/laravel: its HTTP kernel bootstrapped once), each with the packages of this checkout;
// their trivial message (App\Message\Ping, App\Jobs\Ping) reaches a handler that does nothing.
declare(strict_types=1);

use AmqpAgent\Receiver\BatchOutput;
use AmqpAgent\Receiver\Message;
use AmqpAgent\Receiver\Receiver;
use AmqpAgent\Receiver\Signature;
use AmqpAgent\Receiver\SignedFields;
use AmqpAgent\Receiver\Tests\BatchFixture;

const SECRET = 'bench-secret';
$root = dirname(__DIR__, 2);
require_once $root . '/php/receiver/autoload.php';
require_once $root . '/php/receiver/tests/BatchFixture.php';
const NONCE = BatchFixture::NONCE;

$opts = getopt('', ['package:', 'entries:', 'reps:', 'min-entries:', 'out:', 'instructions', 'batches:', 'warmup:', 'quiet', 'preload']);
$packages = explode(',', $opts['package'] ?? 'receiver,symfony,laravel');
$sizes = array_map('intval', explode(',', $opts['entries'] ?? '1,50'));
$reps = (int) ($opts['reps'] ?? 9);
$minEntries = (int) ($opts['min-entries'] ?? 2000);
$outKind = $opts['out'] ?? 'memory';

$preload = isset($opts['preload']);
if (isset($opts['instructions'])) {
    instructions($packages, $sizes, $outKind, $preload);
    exit(0);
}

// One package per process: the apps' autoloaders and globals stay apart.
if (count($packages) > 1 || !isset($opts['batches'])) {
    foreach ($packages as $package) {
        foreach ($sizes as $n) {
            if (isset($opts['batches'])) {
                continue;
            }
            $batches = max(1, intdiv($minEntries + $n - 1, $n));
            $cmd = [PHP_BINARY, ...ini_args(), ...($preload ? preload_args($package, $n) : []), __FILE__, '--package', $package, '--entries', (string) $n, '--reps', (string) $reps, '--batches', (string) $batches, '--out', $outKind];
            passthru(implode(' ', array_map('escapeshellarg', $cmd)), $rc);
            if ($rc !== 0) {
                exit($rc);
            }
        }
    }
    exit(0);
}

// --- one package, one size: this process ---------------------------------------------------
$package = $packages[0];
$n = $sizes[0];
$batches = (int) $opts['batches'];
$warmup = (int) ($opts['warmup'] ?? max(2, intdiv(200, $n)));
putenv('AGENT_SIGNING_SECRET=' . SECRET);
$_SERVER['AGENT_SIGNING_SECRET'] = SECRET;
putenv('RECORD_DIR=' . sys_get_temp_dir());

$sink = $outKind === 'null' ? fopen('/dev/null', 'w') : fopen('php://memory', 'w+');
$written = 0;
$output = new BatchOutput(static function (string $chunk) use ($sink, &$written): void {
    fwrite($sink, $chunk);
    fflush($sink);
    ++$written;
});

[$run, $body] = match ($package) {
    'receiver' => receiver($root, $n, $output),
    'symfony' => symfony($root, $n, $output),
    'laravel' => laravel($root, $n, $output),
    default => throw new InvalidArgumentException("--package: receiver, symfony or laravel, not {$package}"),
};

// The path must answer every entry with an ack, or this measures a refusal.
if ($outKind === 'memory') {
    ftruncate($sink, 0);
    rewind($sink);
    $run();
    rewind($sink);
    $reply = stream_get_contents($sink);
    $acks = substr_count($reply, ' ack' . "\n");
    if ($acks !== $n || !str_contains($reply, NONCE . " done {$n}\n")) {
        fwrite(STDERR, "{$package}: expected {$n} acks, got:\n{$reply}\n");
        exit(1);
    }
}
for ($i = 0; $i < $warmup; ++$i) {
    $run();
    reset_sink($sink, $outKind);
}
$times = [];
for ($r = 0; $r < $reps; ++$r) {
    gc_collect_cycles();
    $t = hrtime(true);
    for ($i = 0; $i < $batches; ++$i) {
        $run();
        if (($i & 63) === 63) {
            reset_sink($sink, $outKind);
        }
    }
    $times[] = (hrtime(true) - $t) / 1e3 / ($batches * $n);
    reset_sink($sink, $outKind);
}
if (!isset($opts['quiet'])) {
    sort($times);
    printf(
        "%-8s N=%-3d %4d batches x %2d reps: %7.2f us/entry (median; min %.2f, max %.2f), body %d bytes, opcache %s\n",
        $package,
        $n,
        $batches,
        $reps,
        $times[intdiv(count($times), 2)],
        $times[0],
        $times[count($times) - 1],
        strlen($body),
        opcache_state(),
    );
}
exit(0);

// --- the packages --------------------------------------------------------------------------

/** Receiver::handleBatch() (what Receiver::run() does with a batch, without the globals). */
function receiver(string $root, int $n, BatchOutput $output): array
{
    require_once $root . '/php/receiver/autoload.php';
    $receiver = new Receiver(Signature::fromEnv($_SERVER));
    $messages = [];
    for ($i = 0; $i < $n; ++$i) {
        $messages[] = ['id' => "m{$i}", 'body' => json_encode(['order' => $i, 'sku' => 'ABC-123', 'qty' => 2]), 'content_type' => 'application/json', 'headers' => '{}'];
    }
    [$server, $body] = batch($messages);
    $handler = static function (Message $m): void {
    };
    $open = static fn (): BatchOutput => $output;

    return [static function () use ($receiver, $server, $body, $handler, $open): void {
        $refused = $receiver->handleBatch($server, $body, $handler, $open);
        if ($refused !== null) {
            throw new RuntimeException("refused: {$refused->status} {$refused->body}");
        }
    }, $body];
}

/** The test app's kernel, booted once; the bundle's MessageController::batch() and its StreamedResponse. */
function symfony(string $root, int $n, BatchOutput $output): array
{
    require_once $root . '/tests/apps/symfony/autoload.php';
    $kernel = new App\Kernel('prod', false);
    $kernel->boot();
    $controller = $kernel->getContainer()->get(AmqpAgent\SymfonyBundle\Controller\MessageController::class);
    $serializer = new Symfony\Component\Messenger\Transport\Serialization\PhpSerializer();
    $trace = new AmqpAgent\Receiver\TraceContext();
    $messages = [];
    for ($i = 0; $i < $n; ++$i) {
        // What the app's bus publishes: the publish middleware's stamps, PhpSerializer's body, the
        // AmqpStamp's headers as AMQP application headers (AmqpSender).
        $traceparent = sprintf('00-%032x-%016x-01', $i + 1, $i + 1);
        $envelope = $trace->within($traceparent, null, static fn () => AmqpAgent\SymfonyBundle\Messenger\PublishMiddleware::stamp(
            new Symfony\Component\Messenger\Envelope(new App\Message\Ping("p{$i}")),
            $trace,
        ));
        $amqp = $envelope->last(Symfony\Component\Messenger\Bridge\Amqp\Transport\AmqpStamp::class);
        $messages[] = [
            'id' => $amqp->getAttributes()['message_id'],
            'body' => $serializer->encode($envelope)['body'],
            'content_type' => null,
            'headers' => json_encode($amqp->getAttributes()['headers'] ?? (object) []),
            'traceparent' => $traceparent,
        ];
    }
    [$server, $body] = batch($messages, ['SCRIPT_FILENAME' => $root . '/tests/apps/symfony/public/agent.php']);

    return [static function () use ($controller, $server, $body, $output): void {
        $controller->batch($server, $body, $output)->sendContent();
    }, $body];
}

/** The test app, its HTTP kernel bootstrapped once; the package's MessageController::batch(). */
function laravel(string $root, int $n, BatchOutput $output): array
{
    $app = require $root . '/tests/apps/laravel/bootstrap/app.php';
    $app->make(Illuminate\Contracts\Http\Kernel::class)->bootstrap();
    $controller = $app->make(AmqpAgent\Laravel\Http\MessageController::class);
    $messages = [];
    for ($i = 0; $i < $n; ++$i) {
        // What the package's Publisher sends.
        $id = AmqpAgent\Receiver\MessageId::generate();
        $traceparent = sprintf('00-%032x-%016x-01', $i + 1, $i + 1);
        $messages[] = [
            'id' => $id,
            'body' => AmqpAgent\Laravel\Publisher::payload(new App\Jobs\Ping("p{$i}"), $id),
            'content_type' => 'application/json',
            'type' => App\Jobs\Ping::class,
            'headers' => json_encode(['traceparent' => $traceparent]),
            'traceparent' => $traceparent,
        ];
    }
    [$server, $body] = batch($messages);

    return [static function () use ($controller, $server, $body, $output): void {
        $controller->batch($server, $body, $output)->sendContent();
    }, $body];
}

// --- the request -----------------------------------------------------------------------------

/**
 * A batch request as the agent builds it (src/batch/wire.rs, docs/batches.md): the request's
 * params, and the body with each entry's params (the agent's per-message fields, signed v2 now
 * with the one secret; encoded by the receiver's BatchFixture) and raw body.
 *
 * @param list<array{id: string, body: string, content_type: ?string, headers: string}> $messages
 * @return array{0: array<string, string>, 1: string}
 */
function batch(array $messages, array $extra = []): array
{
    $subject = 'event';
    $now = time();
    $singles = [];
    foreach ($messages as $m) {
        // Each entry's fields: the params of its single request (src/contract.rs).
        $fields = [
            'HTTP_X_AGENT_MESSAGE_ID' => $m['id'],
            'HTTP_X_AGENT_ATTEMPT' => '1',
            'HTTP_X_AGENT_DELIVERY_COUNT' => '1',
            'HTTP_X_AGENT_REDELIVERED' => '0',
            'HTTP_X_AGENT_ROUTING_KEY' => 'agent_events',
            'HTTP_X_AGENT_EXCHANGE' => '',
            // Always sent, empty when the message has none.
            'HTTP_X_AGENT_CONTENT_TYPE' => $m['content_type'] ?? '',
        ];
        if (isset($m['type'])) {
            $fields['HTTP_X_AGENT_TYPE'] = $m['type'];
        }
        $fields['HTTP_X_AGENT_TIMESTAMP'] = (string) $now;
        $fields['HTTP_X_AGENT_HEADERS'] = $m['headers'];
        $signed = new SignedFields($subject, $m['id'], 1, 'agent_events', '', $m['content_type'] ?? '', $m['headers'], $m['body']);
        // The agent's default: v2 only (one value per secret).
        $fields['HTTP_X_AGENT_SIGNATURE'] = "t={$now},v2=" . Signature::v2(SECRET, $now, $signed);
        if (isset($m['traceparent'])) {
            $fields['HTTP_TRACEPARENT'] = $m['traceparent'];
        }
        $singles[] = [$fields, $m['body']];
    }
    // The body as the agent encodes it (the receiver's test fixture, nonce BatchFixture::NONCE).
    [, $body] = BatchFixture::encode($singles, $subject);

    // The agent's params of a batch request (src/contract.rs) and what php-fpm adds (a pool with
    // clear_env = yes and the secret in env[...]): not the CLI's environment.
    $server = $extra + [
        'GATEWAY_INTERFACE' => 'FastCGI/1.0',
        'SERVER_SOFTWARE' => 'amqp-agent',
        'SERVER_PROTOCOL' => 'HTTP/1.1',
        'REQUEST_METHOD' => 'POST',
        'SCRIPT_FILENAME' => '/srv/app/public/index.php',
        'SCRIPT_NAME' => '/index.php',
        'DOCUMENT_ROOT' => '/srv/app/public',
        'REQUEST_URI' => "/_agent/messages/{$subject}",
        'QUERY_STRING' => '',
        'SERVER_NAME' => 'localhost',
        'SERVER_PORT' => '80',
        'REMOTE_ADDR' => '127.0.0.1',
        'CONTENT_TYPE' => 'application/vnd.amqp-agent.batch',
        'CONTENT_LENGTH' => (string) strlen($body),
        'HTTP_X_AGENT_SUBJECT' => $subject,
        'HTTP_X_AGENT_BATCH' => '2',
        'HTTP_X_AGENT_BATCH_SIZE' => (string) count($messages),
        'USER' => 'www-data',
        'HOME' => '/var/www',
        'AGENT_SIGNING_SECRET' => SECRET,
        'FCGI_ROLE' => 'RESPONDER',
        'PHP_SELF' => '/index.php',
        'REQUEST_TIME_FLOAT' => microtime(true),
        'REQUEST_TIME' => $now,
    ];

    return [$server, $body];
}

// --- helpers -------------------------------------------------------------------------------

function reset_sink($sink, string $kind): void
{
    if ($kind === 'memory') {
        ftruncate($sink, 0);
        rewind($sink);
    }
}

/** The php -d settings this process runs with that matter here, for the child processes. */
function ini_args(): array
{
    $args = ['-d', 'opcache.enable_cli=' . (ini_get('opcache.enable_cli') ? '1' : '0')];
    foreach (['opcache.preload', 'opcache.preload_user', 'opcache.jit', 'opcache.jit_buffer_size', 'memory_limit'] as $name) {
        $value = ini_get($name);
        if ($value !== false && $value !== '') {
            $args[] = '-d';
            $args[] = "{$name}={$value}";
        }
    }

    return $args;
}

/**
 * OPcache preloading as bench/messenger/run.py sets it up for php-fpm: one short run lists the
 * files of every class the package's path declared (bench/messenger/classlist.php, the
 * container's own cache file left out: the kernel loads it), and the measured process starts
 * with opcache.preload=bench/messenger/preload.php, which loads the app's autoloader and them.
 */
function preload_args(string $package, int $n): array
{
    static $lists = [];
    $root = dirname(__DIR__, 2);
    $app = ['receiver' => "{$root}/php/receiver", 'symfony' => "{$root}/tests/apps/symfony", 'laravel' => "{$root}/tests/apps/laravel"][$package];
    if (!isset($lists[$package])) {
        $list = tempnam(sys_get_temp_dir(), "preload-{$package}-");
        $cmd = [PHP_BINARY, ...ini_args(), '-d', "auto_prepend_file={$root}/bench/messenger/classlist.php", __FILE__,
            '--package', $package, '--entries', (string) $n, '--reps', '1', '--batches', '2', '--quiet'];
        exec('CLASSLIST_OUT=' . escapeshellarg($list) . ' ' . implode(' ', array_map('escapeshellarg', $cmd)), $lines, $rc);
        $files = array_filter(file($list, FILE_IGNORE_NEW_LINES | FILE_SKIP_EMPTY_LINES) ?: [], static fn (string $f): bool => !str_contains($f, '/cache/prod'));
        if ($rc !== 0 || $files === []) {
            throw new RuntimeException("could not list the classes of {$package} for preloading");
        }
        file_put_contents($list, implode("\n", $files) . "\n");
        $lists[$package] = $list;
    }
    putenv("PRELOAD_APP={$app}");
    putenv("PRELOAD_LIST={$lists[$package]}");
    $args = ['-d', "opcache.preload={$root}/bench/messenger/preload.php"];
    if (function_exists('posix_geteuid') && posix_geteuid() === 0) {
        $args = [...$args, '-d', 'opcache.preload_user=root'];
    }

    return $args;
}

function opcache_state(): string
{
    if (!function_exists('opcache_get_status')) {
        return 'off';
    }
    $status = @opcache_get_status(false);
    if (!is_array($status) || !($status['opcache_enabled'] ?? false)) {
        return 'off';
    }

    return isset($status['preload_statistics']) ? 'on, preloaded' : 'on';
}

/**
 * Instructions per entry: for each package and N, this script under callgrind twice (k and 2k
 * batches, one repetition each, same warm-up), and the difference of their totals.
 */
function instructions(array $packages, array $sizes, string $outKind, bool $preload): void
{
    foreach ($packages as $package) {
        foreach ($sizes as $n) {
            $k = max(10, intdiv(400, $n));
            $ir = [];
            // Once without valgrind: the Symfony app's container is compiled on its first boot.
            $warm = [PHP_BINARY, ...ini_args(), __FILE__, '--package', $package, '--entries', (string) $n, '--reps', '1', '--batches', '1', '--warmup', '0', '--quiet'];
            exec(implode(' ', array_map('escapeshellarg', $warm)), $lines, $rc);
            foreach ([$k, 2 * $k] as $batches) {
                $file = tempnam(sys_get_temp_dir(), 'cg-');
                $cmd = ['valgrind', '--tool=callgrind', '--dump-instr=no', "--callgrind-out-file={$file}", PHP_BINARY, ...ini_args(), ...($preload ? preload_args($package, $n) : []), __FILE__,
                    '--package', $package, '--entries', (string) $n, '--reps', '1', '--batches', (string) $batches, '--warmup', '2', '--out', $outKind, '--quiet'];
                exec(implode(' ', array_map('escapeshellarg', $cmd)) . ' 2>/dev/null', $lines, $rc);
                if ($rc !== 0) {
                    fwrite(STDERR, "callgrind run failed ({$rc}): " . implode(' ', $cmd) . "\n");
                    exit(1);
                }
                $total = null;
                foreach (file($file) as $line) {
                    if (preg_match('/^(?:summary|totals): (\d+)/', $line, $m) === 1) {
                        $total = (int) $m[1];
                    }
                }
                unlink($file);
                $ir[] = $total ?? throw new RuntimeException("no totals in the callgrind output of {$package}");
            }
            printf("%-8s N=%-3d callgrind: %8.0f instructions/entry (Ir %d batches %d, %d batches %d), opcache %s\n",
                $package, $n, ($ir[1] - $ir[0]) / ($k * $n), $k, $ir[0], 2 * $k, $ir[1], ini_get('opcache.enable_cli') ? ($preload ? 'on, preloaded' : 'on') : 'off');
        }
    }
}
