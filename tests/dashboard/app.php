<?php
// The PHP side of tests/dashboard.rs: acks every message, after `sleep:MS` if the JSON body
// asks for it (so the FPM page has busy, slow children). Any REQUEST_URI is accepted: the test
// puts markup in it to see the dashboard show it as text.
declare(strict_types=1);

$json = json_decode((string) file_get_contents('php://input'), true);
$behave = is_array($json) && is_string($json['behave'] ?? null) ? $json['behave'] : 'ok';
if (str_starts_with($behave, 'sleep:')) {
    usleep(max(0, (int) substr($behave, 6)) * 1000);
}
http_response_code(200);
header('X-Agent-Ack: 1');
echo "ok\n";
