<?php
// Without Composer: the frameworks from Debian's packages (or a vendor/ if one was installed),
// next to this package's and the receiver's own PSR-4 autoloading.
declare(strict_types=1);

if (is_file(__DIR__ . '/../vendor/autoload.php')) {
    require __DIR__ . '/../vendor/autoload.php';
} else {
    foreach ([
        'Symfony/Component/Messenger/autoload.php',
        'Symfony/Component/Messenger/Bridge/Amqp/autoload.php',
        'Symfony/Bundle/FrameworkBundle/autoload.php',
        'Symfony/Component/Serializer/autoload.php',
        'Symfony/Component/PropertyAccess/autoload.php',
    ] as $file) {
        require_once '/usr/share/php/' . $file;
    }
}
require_once __DIR__ . '/../../receiver/autoload.php';
require_once __DIR__ . '/../../receiver/tests/Vectors.php'; // the shared known-answer vectors
require_once __DIR__ . '/../../receiver/tests/BatchFixture.php'; // batches as the agent encodes them
spl_autoload_register(static function (string $class): void {
    foreach (['AmqpAgent\\SymfonyBundle\\Tests\\' => '/', 'AmqpAgent\\SymfonyBundle\\' => '/../src/'] as $prefix => $dir) {
        if (str_starts_with($class, $prefix)) {
            $file = __DIR__ . $dir . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
            if (is_file($file)) {
                require $file;
            }

            return;
        }
    }
});
require_once __DIR__ . '/Messages.php';
