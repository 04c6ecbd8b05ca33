<?php
// Without Composer: PSR-4 autoloading for AmqpAgent\Laravel\ and, through the receiver's own
// autoload.php (../receiver, as in this repository), AmqpAgent\Receiver\. Laravel itself is the
// app's to load (Debian: /usr/share/php/Illuminate/autoload.php; see README, "Install").
declare(strict_types=1);

require_once __DIR__ . '/../receiver/autoload.php';

spl_autoload_register(static function (string $class): void {
    $prefix = 'AmqpAgent\\Laravel\\';
    if (strncmp($class, $prefix, strlen($prefix)) !== 0) {
        return;
    }
    $file = __DIR__ . '/src/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
    if (is_file($file)) {
        require $file;
    }
});
