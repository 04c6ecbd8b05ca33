<?php
// auto_prepend_file for one short drain: at the end of each request, writes the files of every
// class, interface and trait the request declared, in declaration order (parents first), to
// $_SERVER['CLASSLIST_OUT']. preload.php loads them at php-fpm start-up.
declare(strict_types=1);

register_shutdown_function(static function (): void {
    $files = [];
    foreach ([...get_declared_interfaces(), ...get_declared_traits(), ...get_declared_classes()] as $name) {
        $file = (new ReflectionClass($name))->getFileName();
        if ($file !== false && !str_starts_with($file, __DIR__)) {
            $files[$file] = true;
        }
    }
    file_put_contents($_SERVER['CLASSLIST_OUT'], implode("\n", array_keys($files)) . "\n", LOCK_EX);
});
