<?php

declare(strict_types=1);

namespace App\Spy;

/**
 * Test-only: what a gadget chain is built from, a class of the app that is no message and does
 * something when it is unserialized (here: appends to the file its payload names). The allowlist
 * must refuse it before it is ever built (tests/it/symfony.rs).
 */
final class Gadget
{
    public function __construct(public string $file)
    {
    }

    public function __wakeup(): void
    {
        file_put_contents($this->file, "woke\n", FILE_APPEND);
    }
}
