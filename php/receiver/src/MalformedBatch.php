<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver;

/** A batch body that does not follow the format: no entry of it is handled (answer 400). */
final class MalformedBatch extends \RuntimeException
{
}
