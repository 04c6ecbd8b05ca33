<?php
// The package's own PSR-4 autoloading, without Composer (no registry on CI machines).
declare(strict_types=1);

require __DIR__ . '/../autoload.php';
spl_autoload_register(static function (string $class): void {
    $prefix = 'AmqpAgent\\Receiver\\Tests\\';
    if (str_starts_with($class, $prefix)) {
        require __DIR__ . '/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
    }
});
