<?php
// The trivial-handler variant: no kernel, no container. A Messenger bus wired by hand (only
// HandleMessageMiddleware) whose handlers append the message id to RECORD_DIR/symfony-<test>.jsonl,
// as the app's handlers do. Shared by trivial-worker.php (Messenger's Worker) and trivial-front.php
// (php-fpm behind the agent). Needs the app's autoloader: PRELOAD_APP or the default layout.
declare(strict_types=1);

use App\Message\OrderPlaced;
use App\Message\PlaceOrder;
use Symfony\Component\Messenger\Handler\HandlersLocator;
use Symfony\Component\Messenger\MessageBus;
use Symfony\Component\Messenger\Middleware\HandleMessageMiddleware;

require (getenv('TRIVIAL_APP') ?: __DIR__ . '/../../tests/apps/symfony') . '/autoload.php';

return (static function (): MessageBus {
    $dir = getenv('RECORD_DIR') ?: sys_get_temp_dir();
    $record = static function (OrderPlaced|PlaceOrder $m) use ($dir): void {
        file_put_contents("{$dir}/symfony-{$m->test}.jsonl", "{\"id\":\"{$m->id}\"}\n", FILE_APPEND | LOCK_EX);
    };

    return new MessageBus([new HandleMessageMiddleware(new HandlersLocator([OrderPlaced::class => [$record], PlaceOrder::class => [$record]]))]);
})();
