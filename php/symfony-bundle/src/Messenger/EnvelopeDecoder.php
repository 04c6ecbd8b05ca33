<?php

declare(strict_types=1);

namespace AmqpAgent\SymfonyBundle\Messenger;

use AmqpAgent\Receiver\ClassNotAllowed;
use AmqpAgent\Receiver\Message;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\Exception\MessageDecodingFailedException;
use Symfony\Component\Messenger\Transport\Serialization\SerializerInterface;

/**
 * Turns what Messenger's AMQP transport published back into an Envelope, with the serializer it
 * was published with: the AMQP body and application headers (`type`, `X-Message-Stamp-*`) are
 * exactly what AmqpReceiver would give that serializer. Only what the allowlist accepts is
 * decoded, and only a message class comes out (MessageAllowlist).
 */
final class EnvelopeDecoder
{
    public function __construct(
        private readonly SerializerInterface $serializer,
        private readonly MessageAllowlist $allowlist,
    ) {
    }

    /**
     * @throws ClassNotAllowed                when it names a class the app does not accept
     * @throws MessageDecodingFailedException when the message is not a Messenger envelope
     */
    public function decode(Message $message): Envelope
    {
        $headers = [];
        foreach ($message->headers as $name => $value) {
            // Messenger's own headers are strings; the agent passes others (x-death, …) as JSON values.
            if (is_string($value)) {
                $headers[$name] = $value;
            }
        }
        if ($message->contentType !== null && !isset($headers['Content-Type'])) {
            // AmqpSender moved the serializer's Content-Type header into the AMQP property.
            $headers['Content-Type'] = $message->contentType;
        }

        $this->allowlist->checkEncoded($message->body, $headers);
        $envelope = $this->serializer->decode(['body' => $message->body, 'headers' => $headers]);
        $this->allowlist->checkMessage($envelope->getMessage());

        return $envelope;
    }
}
