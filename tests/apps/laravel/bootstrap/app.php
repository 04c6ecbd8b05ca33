<?php
// The smallest Laravel app the agent can serve: Bus, Queue (sync) and the package's provider.
declare(strict_types=1);

require __DIR__ . '/../autoload.php';

// Writable caches outside the source tree (the provider manifest is written on first boot).
$cache = sys_get_temp_dir() . '/amqp-agent-laravel-app/' . md5(__DIR__);
@mkdir($cache, 0777, true);
$_SERVER['APP_SERVICES_CACHE'] = $_ENV['APP_SERVICES_CACHE'] = "{$cache}/services.php";
$_SERVER['APP_PACKAGES_CACHE'] = $_ENV['APP_PACKAGES_CACHE'] = "{$cache}/packages.php";

$app = new Illuminate\Foundation\Application(dirname(__DIR__));
$app->useStoragePath($cache);
$app->singleton(Illuminate\Contracts\Http\Kernel::class, App\Http\Kernel::class);
$app->singleton(Illuminate\Contracts\Debug\ExceptionHandler::class, Illuminate\Foundation\Exceptions\Handler::class);

return $app;
