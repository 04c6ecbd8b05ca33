<?php

return [
    'name' => 'amqp-agent-laravel-test',
    'env' => 'production',
    'debug' => false,
    'key' => 'base64:' . base64_encode(str_repeat('k', 32)),
    'cipher' => 'AES-256-CBC',
    'providers' => [
        Illuminate\Bus\BusServiceProvider::class,
        Illuminate\Queue\QueueServiceProvider::class,
        Illuminate\Encryption\EncryptionServiceProvider::class,
        Illuminate\Filesystem\FilesystemServiceProvider::class,
        AmqpAgent\Laravel\AgentServiceProvider::class,
    ],
    'aliases' => [],
];
