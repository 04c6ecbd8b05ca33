<?php
// opcache.preload script: the app's autoloader, then every file a request declared classes from
// (written by classlist.php; its path in the PRELOAD_LIST environment variable at php-fpm start).
declare(strict_types=1);

require getenv('PRELOAD_APP') . '/autoload.php';
foreach (file(getenv('PRELOAD_LIST'), FILE_IGNORE_NEW_LINES | FILE_SKIP_EMPTY_LINES) as $file) {
    require_once $file;
}
