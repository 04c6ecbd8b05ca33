<?php

declare(strict_types=1);

namespace AmqpAgent\Receiver;

/** The result of checking the X-Agent-Signature header of one request. */
enum SignatureCheck
{
    /** A configured secret signed exactly these fields, within the clock-skew window. */
    case Valid;

    /** Missing, malformed, or signed by no configured secret: answer 401, never handle it. */
    case Invalid;

    /**
     * Correctly signed, but its timestamp is outside the clock-skew window. The clocks disagree
     * (or the request waited too long): answer 503 + Retry-After, the agent signs the retry anew.
     */
    case Stale;
}
