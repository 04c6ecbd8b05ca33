<?php

return [
    // The agent's signing secrets, comma separated (rotation: new and old).
    'signing_secrets' => env('AGENT_SIGNING_SECRET', ''),

    // Also accept the legacy v1 signature (agents older than the v2 signature).
    'allow_v1' => (bool) env('AGENT_SIGNATURE_ALLOW_V1', false),

    // Seconds a signature timestamp may differ from this clock; beyond: 503, retried.
    'clock_skew' => (int) env('AGENT_SIGNATURE_TOLERANCE', 300),

    // The job classes the route runs: class or interface names, or namespaces ('App\\Jobs\\').
    // Checked before the payload is unserialized: a job of any other class is refused (422,
    // dead-lettered with "class not allowed: <class>") and never constructed, so publish rights
    // on the agent's queues do not mean PHP object injection. Laravel's own wrappers (queued
    // closures, listeners, notifications, mail) are not what the Publisher sends; list one to
    // accept it. Too broad: ShouldQueue::class (every job of every installed package).
    'allowed_jobs' => ['App\\Jobs\\'],

    // Other classes a job may hold (value objects, collections), same forms. Enums, PHP's dates,
    // Carbon and SerializesModels' ModelIdentifier always may.
    'allowed_classes' => [],

    // The endpoint the agent's request_uri points at ("/_agent/messages/{subject}").
    'route' => [
        'enabled' => true,
        'path' => '/_agent/messages/{subject}',
        // Keep it out of the "web" group: no session, no CSRF. The signature is the authentication.
        'middleware' => [],
    ],

    // Publisher: the AMQP broker and the agent's queue of each subject.
    'amqp' => [
        'host' => env('AGENT_AMQP_HOST', '127.0.0.1'),
        'port' => (int) env('AGENT_AMQP_PORT', 5672),
        'vhost' => env('AGENT_AMQP_VHOST', '/'),
        'login' => env('AGENT_AMQP_USER', 'guest'),
        'password' => env('AGENT_AMQP_PASSWORD', 'guest'),
    ],
    'queues' => [
        'event' => env('AGENT_EVENT_QUEUE', 'event'),
        'command' => env('AGENT_COMMAND_QUEUE', 'command'),
    ],
];
