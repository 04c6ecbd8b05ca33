<?php

declare(strict_types=1);

namespace App\Jobs;

use Illuminate\Bus\Queueable;
use Illuminate\Contracts\Queue\ShouldQueue;
use Illuminate\Queue\InteractsWithQueue;
use Illuminate\Queue\SerializesModels;

/** A job that does nothing (the traits of Recorded, as `make:job` writes them): bench/php/batch-entry.php measures the package around it. */
final class Ping implements ShouldQueue
{
    use InteractsWithQueue;
    use Queueable;
    use SerializesModels;

    public function __construct(public string $id)
    {
    }

    public function handle(): void
    {
    }
}
