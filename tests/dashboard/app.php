<?php
// The PHP side of tests/it/dashboard.rs: acks every message, after `sleep:MS` if the JSON body
// asks for it (so the FPM page has busy, slow children). `status:N` answers N (a 404 is
// dead-lettered as `rejected`, a 503 retried until `max_attempts`); `reject-once:TOKEN` answers
// 404 the first time it sees TOKEN and acks afterwards (a dead letter that a replay fixes). Any
// REQUEST_URI is accepted: the test puts markup in it to see the dashboard show it as text.
declare(strict_types=1);

$json = json_decode((string) file_get_contents('php://input'), true);
$behave = is_array($json) && is_string($json['behave'] ?? null) ? $json['behave'] : 'ok';
if (str_starts_with($behave, 'sleep:')) {
    usleep(max(0, (int) substr($behave, 6)) * 1000);
}
if (str_starts_with($behave, 'status:')) {
    http_response_code((int) substr($behave, 7));
    echo "refused by the test app\n";
    exit;
}
if (str_starts_with($behave, 'reject-once:')) {
    $token = preg_replace('/[^A-Za-z0-9_-]/', '', substr($behave, 12));
    $marker = sys_get_temp_dir() . '/amqp-agent-dash-' . $token;
    if (!file_exists($marker)) {
        touch($marker);
        http_response_code(404);
        echo "not found (yet)\n";
        exit;
    }
}
http_response_code(200);
header('X-Agent-Ack: 1');
echo "ok\n";
