<?php
// Without Composer: Laravel from Debian's package (or a vendor/ if one was installed), next to
// this package's and the receiver's own PSR-4 autoloading.
declare(strict_types=1);

if (is_file(__DIR__ . '/../vendor/autoload.php')) {
    require __DIR__ . '/../vendor/autoload.php';
} else {
    require_once '/usr/share/php/Illuminate/autoload.php';
}
require_once __DIR__ . '/../../receiver/autoload.php';
require_once __DIR__ . '/../../receiver/tests/Vectors.php'; // the shared known-answer vectors
require_once __DIR__ . '/../../receiver/tests/BatchFixture.php'; // batches as the agent encodes them
spl_autoload_register(static function (string $class): void {
    foreach (['AmqpAgent\\Laravel\\Tests\\' => '/', 'AmqpAgent\\Laravel\\' => '/../src/'] as $prefix => $dir) {
        if (str_starts_with($class, $prefix)) {
            $file = __DIR__ . $dir . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
            if (is_file($file)) {
                require $file;
            }

            return;
        }
    }
});
require_once __DIR__ . '/Jobs.php';
