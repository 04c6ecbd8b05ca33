<?php
// Publish rights must not be PHP object injection (docs/guarantees.md, "Threat model"): the
// bundle as an app wires it (routing names OrderPlaced), fed bodies a publisher could write.
declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Tests;

use AmqpAgent\SymfonyBundle\AmqpAgentBundle;
use AmqpAgent\SymfonyBundle\Controller\MessageController;
use PHPUnit\Framework\TestCase;
use Symfony\Component\DependencyInjection\ContainerBuilder;
use Symfony\Component\DependencyInjection\Definition;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\Handler\HandlersLocator;
use Symfony\Component\Messenger\MessageBus;
use Symfony\Component\Messenger\Middleware\HandleMessageMiddleware;
use Symfony\Component\Messenger\Stamp\BusNameStamp;
use Symfony\Component\Messenger\Stamp\DelayStamp;
use Symfony\Component\Messenger\Transport\Serialization\PhpSerializer;
use Symfony\Component\Messenger\Transport\Serialization\Serializer;

final class AllowlistTest extends TestCase
{
    protected function setUp(): void
    {
        Gadget::$ran = [];
        Handled::$messages = [];
    }

    public function testAMessageOfAClassTheRoutingDoesNotNameIs422AndNeverConstructed(): void
    {
        $body = self::gadgetEnvelope();
        $response = self::controller()->handle(...self::signed($body));

        self::assertSame(422, $response->status, $response->body);
        self::assertStringStartsWith('class not allowed: ' . Gadget::class . ' ', $response->body);
        self::assertSame([], Gadget::$ran, 'no __wakeup, no __destruct: the object was never built');
        self::assertSame([], Handled::$messages);
    }

    public function testAnObjectHiddenInsideAnAllowedMessageIsRefusedToo(): void
    {
        // A Serializable (`C:`) payload, the form unserialize(['allowed_classes' => false]) cannot even parse.
        $inner = 'C:' . strlen(Gadget::class) . ':"' . Gadget::class . '":2:{x;}';
        $message = serialize(new OrderPlaced('o-1', 1, 'PLACEHOLDER'));
        $message = str_replace('s:11:"PLACEHOLDER";', $inner, $message);
        $body = addslashes(str_replace(serialize(new OrderPlaced('x')), $message, serialize(new Envelope(new OrderPlaced('x')))));
        $response = self::controller()->handle(...self::signed($body));

        self::assertSame(422, $response->status, $response->body);
        self::assertStringContainsString(Gadget::class, $response->body);
        self::assertSame([], Gadget::$ran);
    }

    public function testTheSymfonySerializersTypeHeaderIsCheckedBeforeItConstructsAnything(): void
    {
        $body = '{"command":"rm -rf"}';
        $response = self::controller('json')->handle(...self::signed($body, ['type' => Gadget::class, 'Content-Type' => 'application/json']));

        self::assertSame(422, $response->status, $response->body);
        self::assertStringStartsWith('class not allowed: ' . Gadget::class . ' ', $response->body);
        self::assertSame([], Gadget::$ran, 'the serializer never denormalized into it');
    }

    public function testAStampHeaderMustNameAStamp(): void
    {
        $response = self::controller('json')->handle(...self::signed('{"orderId":"o-1","amount":1,"note":""}', [
            'type' => OrderPlaced::class,
            'X-Message-Stamp-' . Gadget::class => '[{"command":"x"}]',
        ]));

        self::assertSame(422, $response->status, $response->body);
        self::assertStringContainsString(Gadget::class, $response->body);
        self::assertSame([], Gadget::$ran);
    }

    public function testRoutedMessagesWithStampsEnumsAndDatesAreHandled(): void
    {
        $message = new Dated('d-1', new \DateTimeImmutable('2024-01-02T03:04:05Z'), Priority::High);
        $body = addslashes(serialize(new Envelope($message, [new BusNameStamp('messenger.bus.default'), new DelayStamp(5)])));
        $response = self::controller(routing: [OrderPlaced::class, MessageMarker::class])->handle(...self::signed($body));

        self::assertSame(200, $response->status, $response->body);
        self::assertEquals([$message], Handled::$messages);

        [$server, $body] = Fixtures::request(Serializer::create(), new Envelope(new OrderPlaced('o-2', 2)));
        self::assertSame(200, self::controller('json')->handle($server, $body)->status);
    }

    public function testAllowedMessagesAndAllowedClassesExtendTheRouting(): void
    {
        $body = addslashes(serialize(new Envelope(new Carrier('c-1', new Payload('p')))));
        $routed = self::controller()->handle(...self::signed($body));
        self::assertSame(422, $routed->status, 'neither is routed');
        self::assertStringStartsWith('class not allowed: ' . Carrier::class . ' ', $routed->body);

        $messageOnly = self::controller(config: ['allowed_messages' => [Carrier::class]])->handle(...self::signed($body));
        self::assertSame(422, $messageOnly->status, 'the value inside is not allowed yet');
        self::assertStringStartsWith('class not allowed: ' . Payload::class . ' ', $messageOnly->body);

        $both = self::controller(config: ['allowed_messages' => [Carrier::class], 'allowed_classes' => ['AmqpAgent\SymfonyBundle\Tests\*']]);
        self::assertSame(200, $both->handle(...self::signed($body))->status);

        // A value class is no message: allowed inside one, refused as one.
        $asMessage = $both->handle(...self::signed(addslashes(serialize(new Envelope(new Payload('p'))))));
        self::assertSame(422, $asMessage->status);
        self::assertStringStartsWith('class not allowed: ' . Payload::class . ' (not in amqp_agent.allowed_messages', $asMessage->body);
    }

    public function testAClassLetThroughOnceLetsNothingElseThroughAndARefusalIsAskedAgain(): void
    {
        // One controller, so one allowlist: what it remembers between messages is what is tested.
        $controller = self::controller(routing: [OrderPlaced::class, MessageMarker::class]);
        $good = addslashes(serialize(new Envelope(new OrderPlaced('o-1'), [new BusNameStamp('messenger.bus.default')])));
        self::assertSame(200, $controller->handle(...self::signed($good))->status);

        $hidden = $controller->handle(...self::signed(self::gadgetEnvelope()));
        self::assertSame(422, $hidden->status, 'the envelope and message classes let through before do not carry a gadget');
        self::assertStringStartsWith('class not allowed: ' . Gadget::class . ' ', $hidden->body);
        self::assertSame(422, $controller->handle(...self::signed(self::gadgetEnvelope()))->status, 'refused again');

        // A message class not declared yet (nothing autoloads it) is refused, then let through
        // once the app declares it: a no is never remembered.
        $late = __NAMESPACE__ . '\\Late' . bin2hex(random_bytes(4));
        $body = addslashes(str_replace('O:' . strlen(Payload::class) . ':"' . Payload::class . '"', 'O:' . strlen($late) . ':"' . $late . '"', serialize(new Envelope(new Payload('p')))));
        $refused = $controller->handle(...self::signed($body));
        self::assertSame(422, $refused->status, $refused->body);
        self::assertStringStartsWith("class not allowed: {$late} ", $refused->body);
        eval('namespace ' . __NAMESPACE__ . '; final class ' . substr($late, strlen(__NAMESPACE__) + 1) . ' implements MessageMarker { public function __construct(public string $value = "") {} }');
        $allowed = $controller->handle(...self::signed($body));
        self::assertSame(200, $allowed->status, $allowed->body);
        self::assertInstanceOf($late, Handled::$messages[array_key_last(Handled::$messages)]);
        self::assertSame(200, $controller->handle(...self::signed($good))->status);
        self::assertSame([], Gadget::$ran);
    }

    /** What PhpSerializer would publish for a Gadget message (built as text: no Gadget is ever constructed here). */
    private static function gadgetEnvelope(): string
    {
        $gadget = 'O:' . strlen(Gadget::class) . ':"' . Gadget::class . '":1:{s:7:"command";s:6:"rm -rf";}';

        return addslashes(str_replace(serialize(new OrderPlaced('x')), $gadget, serialize(new Envelope(new OrderPlaced('x')))));
    }

    /** The bundle compiled into a container whose Messenger routing names $routing. */
    private static function controller(string $serializer = 'php', array $routing = [OrderPlaced::class], array $config = []): MessageController
    {
        $c = new ContainerBuilder();
        $locator = new Definition(HandlersLocator::class, [['*' => [[Handled::class, 'handle']]]]);
        $c->setDefinition('messenger.default_bus', new Definition(MessageBus::class, [[new Definition(HandleMessageMiddleware::class, [$locator])]]));
        $c->setDefinition('messenger.senders_locator', new Definition(\stdClass::class, [array_fill_keys([...$routing, '*'], ['agent'])]));
        $c->setDefinition('messenger.transport.native_php_serializer', new Definition(PhpSerializer::class));
        $c->setDefinition('messenger.transport.symfony_serializer', (new Definition(Serializer::class))->setFactory([Serializer::class, 'create']));
        $bundle = new AmqpAgentBundle();
        $c->registerExtension($bundle->getContainerExtension());
        $c->loadFromExtension('amqp_agent', $config + [
            'signing_secrets' => Fixtures::SECRET,
            'serializer' => $serializer === 'php' ? 'messenger.transport.native_php_serializer' : 'messenger.transport.symfony_serializer',
        ]);
        $bundle->build($c);
        $c->compile();

        return $c->get(MessageController::class);
    }

    /** @return array{0: array<string, string>, 1: string} */
    private static function signed(string $body, array $headers = []): array
    {
        $serializer = new class($body, $headers) implements \Symfony\Component\Messenger\Transport\Serialization\SerializerInterface {
            public function __construct(private string $body, private array $headers)
            {
            }

            public function decode(array $encodedEnvelope): Envelope
            {
                throw new \LogicException();
            }

            public function encode(Envelope $envelope): array
            {
                return ['body' => $this->body, 'headers' => $this->headers];
            }
        };

        return Fixtures::request($serializer, new Envelope(new \stdClass()));
    }
}

/** What a gadget chain is built from: code that runs when it is unserialized or built. */
final class Gadget implements \Serializable
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

/** The routing's marker interface (`App\Message\…Interface: transport`). */
interface MessageMarker
{
}

enum Priority: string
{
    case High = 'high';
}

final class Dated implements MessageMarker
{
    public function __construct(public string $id, public \DateTimeImmutable $at, public Priority $priority)
    {
    }
}

final class Payload
{
    public function __construct(public string $value)
    {
    }
}

final class Carrier
{
    public function __construct(public string $id, public Payload $payload)
    {
    }
}

final class Handled
{
    /** @var list<object> */
    public static array $messages = [];

    public static function handle(object $message): void
    {
        self::$messages[] = $message;
    }
}
