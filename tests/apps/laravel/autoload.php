<?php
// Without Composer: Debian's Laravel package, the repository's PHP packages (PSR-4) and the app.
declare(strict_types=1);

require_once '/usr/share/php/Illuminate/autoload.php';
require_once __DIR__ . '/../../../php/receiver/autoload.php';
spl_autoload_register(static function (string $class): void {
    foreach (['AmqpAgent\\Laravel\\' => __DIR__ . '/../../../php/laravel/src/', 'App\\' => __DIR__ . '/app/'] as $prefix => $dir) {
        if (str_starts_with($class, $prefix)) {
            $file = $dir . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
            if (is_file($file)) {
                require $file;
            }

            return;
        }
    }
});
