<?php
// Publish rights must not be PHP object injection (docs/guarantees.md, "Threat model"): the
// route fed payloads a publisher could write, with the package's provider as an app wires it.
declare(strict_types=1);

namespace AmqpAgent\Laravel\Tests;

use AmqpAgent\Laravel\Http\MessageController;
use AmqpAgent\Laravel\Publisher;
use Illuminate\Bus\Queueable;
use Illuminate\Contracts\Encryption\Encrypter as EncrypterContract;
use Illuminate\Contracts\Queue\ShouldQueue;
use Illuminate\Encryption\Encrypter;
use Illuminate\Queue\InteractsWithQueue;
use PHPUnit\Framework\TestCase;

final class AllowlistTest extends TestCase
{
    private const JOBS = [PlaceOrder::class, PlaceSecretOrder::class, PlaceFlaggedOrder::class, Holder::class];

    protected function setUp(): void
    {
        Recorded::$handled = [];
        LaravelGadget::$ran = [];
    }

    public function testAJobOfAClassNotAllowedIs422AndNeverConstructed(): void
    {
        $gadget = 'O:' . strlen(LaravelGadget::class) . ':"' . LaravelGadget::class . '":1:{s:7:"command";s:6:"rm -rf";}';
        $response = self::handle(['allowed_jobs' => self::JOBS], $gadget);

        self::assertSame(422, $response->status, $response->body);
        self::assertStringStartsWith('class not allowed: ' . LaravelGadget::class . ' (not in amqp-agent.allowed_jobs)', $response->body);
        self::assertSame([], LaravelGadget::$ran, 'no __wakeup, no __destruct: never built');
    }

    public function testAnObjectInsideAnAllowedJobIsRefusedBeforeAnythingIsBuilt(): void
    {
        $inner = 'C:' . strlen(LaravelGadget::class) . ':"' . LaravelGadget::class . '":2:{x;}';
        $command = str_replace('s:3:"o-1";', $inner, serialize(new Holder('o-1')));
        $response = self::handle(['allowed_jobs' => self::JOBS], $command);

        self::assertSame(422, $response->status, $response->body);
        self::assertStringStartsWith('class not allowed: ' . LaravelGadget::class . ' (not in amqp-agent.allowed_classes)', $response->body);
        self::assertSame([], LaravelGadget::$ran);
        self::assertSame([], Recorded::$handled);
    }

    public function testAllowedClassesLetValueObjectsInAndEnumsAndDatesAlwaysMay(): void
    {
        $job = new Holder(new Money(5), new \DateTimeImmutable('2024-01-02T03:04:05Z'), Currency::Eur);
        self::assertSame(422, self::handle(['allowed_jobs' => self::JOBS], serialize($job))->status, 'Money is not listed');

        $response = self::handle(['allowed_jobs' => self::JOBS, 'allowed_classes' => ['AmqpAgent\\Laravel\\Tests\\Money']], serialize($job));
        self::assertSame(200, $response->status, $response->body);
        self::assertSame([['holder 5 2024-01-02 EUR', null]], Recorded::$handled);

        // Namespaces and interfaces: the tests' whole namespace, ShouldQueue's implementations.
        self::assertSame(200, self::handle(['allowed_jobs' => ['AmqpAgent\\Laravel\\Tests\\']], serialize(new PlaceOrder('o-ns')))->status);
        self::assertSame(200, self::handle(['allowed_jobs' => [ShouldQueue::class]], serialize(new PlaceOrder('o-if')))->status);
    }

    public function testAShouldBeEncryptedJobInPlaintextIsRefusedUnbuilt(): void
    {
        $config = ['allowed_jobs' => self::JOBS];
        foreach ([new PlaceSecretOrder('o-1', '4111111111111111'), new PlaceFlaggedOrder('o-2')] as $job) {
            $response = self::handle($config, serialize($job));
            self::assertSame(422, $response->status, $job::class . ': ' . $response->body);
            self::assertStringContainsString($job::class . ' should be encrypted and arrived in plaintext', $response->body);
        }
        self::assertSame([], Recorded::$handled);

        // Encrypted, the same jobs run.
        $app = TestApp::make($config);
        $app->instance(EncrypterContract::class, $encrypter = new Encrypter(random_bytes(32), 'aes-256-cbc'));
        $body = Publisher::payload(new PlaceSecretOrder('o-3', '4111111111111111'), 'id-3', $encrypter);
        self::assertSame(200, $app->make(MessageController::class)->handle(...TestApp::signed($body, 'id-3'))->status);
    }

    public function testTheDefaultIsTheAppsJobsNamespace(): void
    {
        $config = require __DIR__ . '/../config/amqp-agent.php';
        self::assertSame(['App\\Jobs\\'], $config['allowed_jobs']);
        self::assertSame([], $config['allowed_classes']);
    }

    private static function handle(array $config, string $command): \AmqpAgent\Receiver\Response
    {
        $body = json_encode(['uuid' => 'id-1', 'data' => ['commandName' => 'x', 'command' => $command]], JSON_THROW_ON_ERROR);

        return TestApp::make($config)->make(MessageController::class)->handle(...TestApp::signed($body, 'id-1'));
    }
}

/** What a gadget chain is built from: code that runs when it is unserialized or built. */
final class LaravelGadget implements \Serializable
{
    /** @var list<string> */
    public static array $ran = [];

    public function __construct(public string $command = '')
    {
        self::$ran[] = "__construct {$command}";
    }

    public function __wakeup(): void
    {
        self::$ran[] = "__wakeup {$this->command}";
    }

    public function __destruct()
    {
        self::$ran[] = "__destruct {$this->command}";
    }

    public function serialize(): string
    {
        return $this->command;
    }

    public function unserialize(string $data): void
    {
        self::$ran[] = "unserialize {$data}";
    }

    public function __serialize(): array
    {
        return ['command' => $this->command];
    }

    public function __unserialize(array $data): void
    {
        $this->command = $data['command'];
        self::$ran[] = "__unserialize {$this->command}";
    }
}

enum Currency: string
{
    case Eur = 'EUR';
}

final class Money
{
    public function __construct(public int $amount)
    {
    }
}

/** A job holding other objects. */
final class Holder implements ShouldQueue
{
    use InteractsWithQueue;
    use Queueable;

    public function __construct(public mixed $what, public ?\DateTimeImmutable $at = null, public ?Currency $currency = null)
    {
    }

    public function handle(): void
    {
        Recorded::$handled[] = [sprintf('holder %s %s %s', $this->what instanceof Money ? $this->what->amount : $this->what, $this->at?->format('Y-m-d'), $this->currency?->value), null];
    }
}
