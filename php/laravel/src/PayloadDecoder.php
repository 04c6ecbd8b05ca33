<?php

declare(strict_types=1);

namespace AmqpAgent\Laravel;

use AmqpAgent\Receiver\ClassAllowlist;
use AmqpAgent\Receiver\ClassNotAllowed;
use AmqpAgent\Receiver\PermanentFailure;
use Illuminate\Contracts\Encryption\Encrypter;

/**
 * Laravel's queue payload (what Queue::createPayload() writes and Publisher sends) back into the
 * job object, as CallQueuedHandler::getCommand() does: `data.command` is serialize($job), or its
 * encryption for ShouldBeEncrypted jobs. Called only after the signature was verified.
 *
 * Publish rights must not mean PHP object injection: before anything is unserialized, the job's
 * class must be in `amqp-agent.allowed_jobs`, every other class the payload names in
 * `allowed_classes` (or always allowed: ALWAYS, enums, PHP's dates), and a job that should be
 * encrypted must have arrived encrypted; unserialize() then gets exactly those allowed_classes.
 */
final class PayloadDecoder
{
    /** What SerializesModels and Laravel's dates leave in a job: data, nothing runs when unserialized. */
    public const ALWAYS = [
        'Illuminate\Contracts\Database\ModelIdentifier',
        'Illuminate\Support\Carbon',
        'Carbon\Carbon',
        'Carbon\CarbonImmutable',
    ];

    private readonly ClassAllowlist $classes;

    public function __construct(
        private readonly ClassAllowlist $jobs,
        ?ClassAllowlist $classes = null,
        private readonly ?Encrypter $encrypter = null,
    ) {
        $this->classes = ($classes ?? new ClassAllowlist([]))->with(self::ALWAYS);
    }

    /**
     * @throws ClassNotAllowed  when the payload names a class the app does not accept
     * @throws PermanentFailure when the body is not a Laravel job payload, or a job that should
     *                          be encrypted arrived in plaintext (retrying cannot help)
     */
    public function decode(string $body): object
    {
        $payload = json_decode($body, true);
        $command = is_array($payload) ? ($payload['data']['command'] ?? null) : null;
        if (!is_string($command)) {
            throw new PermanentFailure('not a Laravel job payload (no data.command)');
        }
        $plaintext = str_starts_with($command, 'O:');
        if (!$plaintext) {
            if ($this->encrypter === null) {
                throw new PermanentFailure('an encrypted job, and no encrypter to decrypt it');
            }
            $command = $this->encrypter->decrypt($command);
        }
        $allowed = $this->allowedClasses($command, $plaintext);
        $job = @unserialize($command, ['allowed_classes' => $allowed]);
        if (!is_object($job) || $job instanceof \__PHP_Incomplete_Class) {
            throw new PermanentFailure(sprintf('cannot unserialize the job %s', (string) ($payload['data']['commandName'] ?? '?')));
        }
        if ($plaintext && ($job->shouldBeEncrypted ?? false) === true) {
            throw self::plaintext($job::class);
        }

        return $job;
    }

    /**
     * The classes $command names, once each is known to be allowed.
     *
     * @return list<string>
     */
    private function allowedClasses(string $command, bool $plaintext): array
    {
        $job = ClassAllowlist::topLevel($command) ?? throw new PermanentFailure('data.command is not a serialized job');
        if (!$this->jobs->allows($job)) {
            throw new ClassNotAllowed($job, 'amqp-agent.allowed_jobs');
        }
        if ($plaintext && self::shouldBeEncrypted($job)) {
            throw self::plaintext($job);
        }
        $classes = array_values(ClassAllowlist::namedIn($command));
        foreach ($classes as $class) {
            if (!ClassAllowlist::isPlainValue($class) && !$this->jobs->allows($class) && !$this->classes->allows($class)) {
                throw new ClassNotAllowed($class, 'amqp-agent.allowed_classes');
            }
        }

        return $classes;
    }

    /** Queue::jobShouldBeEncrypted() of the class, before any instance exists. */
    private static function shouldBeEncrypted(string $class): bool
    {
        $interface = 'Illuminate\Contracts\Queue\ShouldBeEncrypted';
        if (interface_exists($interface) && is_subclass_of($class, $interface)) {
            return true;
        }

        return class_exists($class) && ((new \ReflectionClass($class))->getDefaultProperties()['shouldBeEncrypted'] ?? false) === true;
    }

    private static function plaintext(string $class): PermanentFailure
    {
        return new PermanentFailure(sprintf('job %s should be encrypted and arrived in plaintext', $class));
    }
}
