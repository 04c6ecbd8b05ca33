<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Messenger;

use AmqpAgent\Receiver\ClassAllowlist;
use AmqpAgent\Receiver\ClassNotAllowed;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\Stamp\StampInterface;

/**
 * Which classes a received message may be, and what else its body may hold: publish rights on
 * the agent's queues must not mean PHP object injection. Checked twice by EnvelopeDecoder:
 *
 *  - before the serializer runs, on what it would construct: every class a PhpSerializer body
 *    names (as unserialize() will read it; enums, PHP's date classes, Envelope and stamps always
 *    may be there), the Symfony Serializer's `type` header and its stamp headers;
 *  - after, on the message itself: only a message class reaches the bus.
 *
 * The messages are the types `framework.messenger.routing` names (and `#[AsMessage]` routes,
 * Symfony ≥ 7.2) plus `amqp_agent.allowed_messages`; the other classes `amqp_agent.allowed_classes`.
 */
final class MessageAllowlist
{
    private const MESSAGES = 'amqp_agent.allowed_messages or framework.messenger.routing';
    private const CLASSES = 'amqp_agent.allowed_classes, amqp_agent.allowed_messages or framework.messenger.routing';
    private const AS_MESSAGE = 'Symfony\Component\Messenger\Attribute\AsMessage';

    private readonly ClassAllowlist $messages;
    private readonly ClassAllowlist $classes;
    private readonly ClassAllowlist $stamps;

    /**
     * The names checkEncoded() let through, lowercased. Only a yes is remembered, for the reason
     * ClassAllowlist::allows() gives (an enum, a date class, an allowed class or a message stays
     * one for the life of the process): each body names the same few classes (the message, the
     * envelope, its stamps), checked once per allowlist (under php-fpm, once per request: per
     * batch) instead of once per message.
     *
     * @var array<string, true>
     */
    private array $passed = [];

    /**
     * @param list<string> $messages classes, interfaces or namespaces a message may be
     * @param list<string> $classes  the same for the other objects a message holds
     */
    public function __construct(array $messages, array $classes = [])
    {
        $this->messages = new ClassAllowlist($messages);
        $this->classes = new ClassAllowlist([...$classes, Envelope::class, StampInterface::class]);
        $this->stamps = new ClassAllowlist([StampInterface::class]);
    }

    /**
     * @param array<string, string> $headers
     *
     * @throws ClassNotAllowed before the serializer constructs an object of a class not allowed
     */
    public function checkEncoded(string $body, array $headers): void
    {
        if (isset($headers['type'])) {
            $this->checkMessageClass($headers['type']);
        }
        foreach (array_keys($headers) as $name) {
            $stamp = stripos($name, 'X-Message-Stamp-') === 0 ? substr($name, strlen('X-Message-Stamp-')) : null;
            if ($stamp !== null && !$this->stamps->allows($stamp)) {
                throw new ClassNotAllowed($stamp, 'the stamps (StampInterface)');
            }
        }
        // PhpSerializer reads base64 unless the body ends with `}`, then stripslashes(); only a
        // serialized object, enum or array can construct anything.
        $serialized = stripslashes(str_ends_with($body, '}') ? $body : (string) base64_decode($body));
        if (preg_match('/\A[OCEa]:/i', $serialized) !== 1) {
            return;
        }
        foreach (ClassAllowlist::namedIn($serialized) as $key => $class) {
            if (isset($this->passed[$key])) {
                continue;
            }
            if (!ClassAllowlist::isPlainValue($class) && !$this->classes->allows($class) && !$this->isMessage($class)) {
                throw new ClassNotAllowed($class, self::CLASSES);
            }
            $this->passed[$key] = true;
        }
    }

    /** @throws ClassNotAllowed when $message is not of a message class */
    public function checkMessage(object $message): void
    {
        $this->checkMessageClass($message::class);
    }

    private function checkMessageClass(string $class): void
    {
        if (!$this->isMessage($class)) {
            throw new ClassNotAllowed($class, self::MESSAGES);
        }
    }

    private function isMessage(string $class): bool
    {
        return $this->messages->allows($class) || self::routedByAttribute($class);
    }

    /** `#[AsMessage(transport: …)]` (Symfony ≥ 7.2) routes a class as the routing config does. */
    private static function routedByAttribute(string $class): bool
    {
        if (!class_exists(self::AS_MESSAGE) || !ClassAllowlist::isClassName($class) || !class_exists($class)) {
            return false;
        }
        foreach ((new \ReflectionClass($class))->getAttributes(self::AS_MESSAGE) as $attribute) {
            if (($attribute->newInstance()->transport ?? null) !== null) {
                return true;
            }
        }

        return false;
    }
}
