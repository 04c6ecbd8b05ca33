<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver;

/**
 * The classes an app accepts in what it unserializes from the broker: publish rights on a queue
 * must not mean PHP object injection (docs/guarantees.md, "Threat model").
 *
 * An entry is a class or interface name (the class itself, its subclasses and implementations
 * match), or a namespace: `App\Message\` or `App\Message\*`. Names compare case-insensitively,
 * as PHP resolves them. Testing a name against a class or interface entry autoloads the class
 * (loaded, never instantiated); only syntactically valid class names are ever autoloaded.
 */
final class ClassAllowlist
{
    /** PHP's own value classes: unserializing them runs no code of the app. */
    private const PHP_VALUES = ['datetime', 'datetimeimmutable', 'datetimezone', 'dateinterval'];

    /**
     * The classes allows() said yes to, by lowercased name. Only yes is remembered: within a
     * process a class, once declared, keeps its name and ancestors, and the entries never change,
     * so the answer cannot turn into no; a no may (a class not loadable now may be later).
     *
     * @var array<string, true>
     */
    private array $allowed = [];

    /** @param list<string> $entries class, interface or namespace names */
    public function __construct(private readonly array $entries)
    {
    }

    /** @param list<string> $entries */
    public function with(array $entries): self
    {
        return new self([...$this->entries, ...$entries]);
    }

    public function allows(string $class): bool
    {
        $class = ltrim($class, '\\');
        if (isset($this->allowed[$key = strtolower($class)])) {
            return true;
        }
        if (!self::isClassName($class)) {
            return false;
        }
        if ($this->matches($class)) {
            return $this->allowed[$key] = true;
        }

        return false;
    }

    private function matches(string $class): bool
    {
        $types = [];
        foreach ($this->entries as $entry) {
            $entry = ltrim($entry, '\\');
            $namespace = str_ends_with($entry, '\\*') ? substr($entry, 0, -1) : (str_ends_with($entry, '\\') ? $entry : null);
            if ($namespace !== null) {
                if (strncasecmp($class, $namespace, strlen($namespace)) === 0) {
                    return true;
                }
            } elseif (strcasecmp($class, $entry) === 0) {
                return true;
            } else {
                $types[] = $entry;
            }
        }
        foreach ($types as $type) {
            if (is_subclass_of($class, $type)) {
                return true;
            }
        }

        return false;
    }

    /**
     * The first class that $serialized (what unserialize() is about to read) names and this list
     * does not allow, or null. Enums and PHP's date classes are always allowed: they run no code.
     * The names are found as text (`O:`, `C:` and `E:` tokens anywhere, nested Serializable
     * payloads included), a superset of the classes unserialize() would construct: a string
     * value that merely looks like an object is refused too, never a real object let through.
     */
    public function firstRefused(string $serialized): ?string
    {
        foreach (self::namedIn($serialized) as $class) {
            if (!self::isPlainValue($class) && !$this->allows($class)) {
                return $class;
            }
        }

        return null;
    }

    /**
     * Every class name a serialized PHP value may construct, in order, once each, keyed by its
     * lowercased form (PHP's names compare case-insensitively).
     *
     * @return array<string, string>
     */
    public static function namedIn(string $serialized): array
    {
        preg_match_all('/[OCE]:[+-]?\d+:"([^"]*)"/i', $serialized, $m);
        $names = [];
        foreach ($m[1] as $name) {
            // An enum case is `E:<len>:"Class:Case"`.
            $name = ltrim(explode(':', $name, 2)[0], '\\');
            $names[strtolower($name)] ??= $name;
        }

        return $names;
    }

    /** The class name the serialized value at the start of $serialized is an object of, if any. */
    public static function topLevel(string $serialized): ?string
    {
        return preg_match('/\A[OC]:[+-]?\d+:"([^"]*)"/i', $serialized, $m) === 1 ? ltrim($m[1], '\\') : null;
    }

    /** An enum or one of PHP's date classes: nothing of the app runs when one is unserialized. */
    public static function isPlainValue(string $class): bool
    {
        return in_array(strtolower($class), self::PHP_VALUES, true) || (self::isClassName($class) && enum_exists($class));
    }

    /** Whether $name may be autoloaded: a class name, nothing a naive autoloader makes a path of. */
    public static function isClassName(string $name): bool
    {
        return preg_match('/\A[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*(?:\\\\[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)*\z/', $name) === 1;
    }
}
