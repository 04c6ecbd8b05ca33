<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver\Tests;

use AmqpAgent\Receiver\ClassAllowlist;
use AmqpAgent\Receiver\ClassNotAllowed;
use AmqpAgent\Receiver\PermanentFailure;
use PHPUnit\Framework\TestCase;

final class ClassAllowlistTest extends TestCase
{
    public function testEntriesAreClassesInterfacesOrNamespaces(): void
    {
        $list = new ClassAllowlist([\ArrayIterator::class, \Countable::class, 'Foo\\Bar\\', 'Baz\\*']);

        self::assertTrue($list->allows('ArrayIterator'));
        self::assertTrue($list->allows('\\arrayiterator'), 'case-insensitive, as PHP resolves classes');
        self::assertTrue($list->allows(\RecursiveArrayIterator::class), 'a subclass');
        self::assertTrue($list->allows(\ArrayObject::class), 'an implementation of an interface entry');
        self::assertTrue($list->allows('Foo\\Bar\\Anything'), 'a namespace, not autoloaded');
        self::assertTrue($list->allows('Baz\\Deep\\Thing'));
        self::assertFalse($list->allows('Foo\\Barn'), 'a namespace is a whole segment');
        self::assertFalse($list->allows(\stdClass::class));
        self::assertFalse($list->allows('../../etc/passwd'), 'never autoloaded: not a class name');
        self::assertFalse((new ClassAllowlist([]))->allows(\ArrayIterator::class));
    }

    public function testNamedInFindsEveryClassASerializedValueMayConstruct(): void
    {
        $serialized = serialize([new \ArrayObject([new \SplObjectStorage()]), Suit::Hearts, 'O:3:"Foo":0:{}']);

        self::assertSame(['arrayobject' => \ArrayObject::class, 'splobjectstorage' => \SplObjectStorage::class, strtolower(Suit::class) => Suit::class, 'foo' => 'Foo'], ClassAllowlist::namedIn($serialized), 'a string that looks like an object counts too');
        self::assertSame(['gadget' => 'Gadget'], ClassAllowlist::namedIn('a:1:{i:0;C:6:"Gadget":2:{x;}}'), 'Serializable payloads');
        self::assertSame(['gadget' => 'Gadget'], ClassAllowlist::namedIn('o:+6:"\\Gadget":0:{}'), 'any case, a signed length, a leading backslash');
        self::assertSame(['gadget' => 'Gadget'], ClassAllowlist::namedIn('a:2:{i:0;O:6:"Gadget":0:{}i:1;O:6:"GADGET":0:{}}'), 'once each, whatever the case, as first written');
        self::assertSame(\ArrayObject::class, ClassAllowlist::topLevel(serialize(new \ArrayObject())));
        self::assertNull(ClassAllowlist::topLevel('s:1:"O";'));
    }

    public function testFirstRefusedAllowsEnumsAndPhpDatesAlways(): void
    {
        $list = new ClassAllowlist([\ArrayObject::class]);

        self::assertNull($list->firstRefused(serialize(new \ArrayObject([new \DateTimeImmutable(), new \DateTimeZone('UTC'), Suit::Hearts]))));
        self::assertSame(\SplObjectStorage::class, $list->firstRefused(serialize(new \ArrayObject([new \SplObjectStorage()]))));
    }

    public function testARefusalIsPermanentAndNamesTheClass(): void
    {
        $e = new ClassNotAllowed('App\\Gadget', 'amqp_agent.allowed_messages');

        self::assertInstanceOf(PermanentFailure::class, $e);
        self::assertSame('App\\Gadget', $e->class);
        self::assertSame('class not allowed: App\\Gadget (not in amqp_agent.allowed_messages)', $e->getMessage());
    }

    /** allows() remembers its yes (case-insensitively, as PHP names classes), never its no. */
    public function testAYesIsRememberedAndANoIsAskedAgain(): void
    {
        $list = new ClassAllowlist(['Countable']);
        $class = 'AmqpAgentLater\\DeclaredLater' . bin2hex(random_bytes(4));
        self::assertFalse($list->allows($class), 'not declared yet');
        eval('namespace AmqpAgentLater; final class ' . substr($class, strrpos($class, '\\') + 1) . ' implements \\Countable { public function count(): int { return 0; } }');
        self::assertTrue($list->allows($class), 'a no is not remembered');
        self::assertTrue($list->allows(strtoupper($class)), 'the same class, another case');
        self::assertTrue($list->allows('\\' . $class));
        self::assertFalse($list->allows('Exception'), 'another class');
        self::assertFalse($list->allows('not a class'));
        self::assertFalse((new ClassAllowlist([]))->allows($class), 'another list remembers nothing');
    }
}

enum Suit
{
    case Hearts;
}
