<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel;

use AmqpAgent\Receiver\PermanentFailure;
use Illuminate\Contracts\Encryption\Encrypter;

/**
 * Laravel's queue payload (what Queue::createPayload() writes and Publisher sends) back into the
 * job object, as CallQueuedHandler::getCommand() does: `data.command` is serialize($job), or its
 * encryption for ShouldBeEncrypted jobs. Called only after the signature was verified.
 */
final class PayloadDecoder
{
    public function __construct(private readonly ?Encrypter $encrypter = null)
    {
    }

    /** @throws PermanentFailure when the body is not a Laravel job payload (retrying cannot help) */
    public function decode(string $body): object
    {
        $payload = json_decode($body, true);
        $command = is_array($payload) ? ($payload['data']['command'] ?? null) : null;
        if (!is_string($command)) {
            throw new PermanentFailure('not a Laravel job payload (no data.command)');
        }
        if (!str_starts_with($command, 'O:')) {
            if ($this->encrypter === null) {
                throw new PermanentFailure('an encrypted job, and no encrypter to decrypt it');
            }
            $command = $this->encrypter->decrypt($command);
        }
        $job = @unserialize($command);
        if (!is_object($job) || $job instanceof \__PHP_Incomplete_Class) {
            throw new PermanentFailure(sprintf('cannot unserialize the job %s', (string) ($payload['data']['commandName'] ?? '?')));
        }

        return $job;
    }
}
