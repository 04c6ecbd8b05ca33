<?php
// Without Composer: Debian's Symfony packages, the repository's PHP packages (PSR-4) and the app.
declare(strict_types=1);

foreach ([
    'Symfony/Bundle/FrameworkBundle/autoload.php',
    'Symfony/Component/Messenger/autoload.php',
    'Symfony/Component/Messenger/Bridge/Amqp/autoload.php',
] as $file) {
    require_once '/usr/share/php/' . $file;
}
require_once __DIR__ . '/../../../php/receiver/autoload.php';
spl_autoload_register(static function (string $class): void {
    foreach (['AmqpAgent\\SymfonyBundle\\' => __DIR__ . '/../../../php/symfony-bundle/src/', 'App\\' => __DIR__ . '/src/'] as $prefix => $dir) {
        if (str_starts_with($class, $prefix)) {
            $file = $dir . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
            if (is_file($file)) {
                require $file;
            }

            return;
        }
    }
});
