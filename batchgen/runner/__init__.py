"""The worker pool: a run's jobs sent, retried and recorded, a module a job.

    options.py        RunOptions: what a run is told (the CLI's flags, as the library passes them)
    totals.py         RunTotals: what it counts, and why it stopped
    pool.py           Runner: the producer, the workers, the one stop flag, what was not run
    attempts.py       one job's attempts: the breaker, the pacer, the budget, retry decisions
    recording.py      each outcome's ledger line, output path, count and event
    answer_errors.py  what an error answer means: its (status, text), billed or not, the stop

The money invariant and the stop flag are described in `pool.py`.
"""

from batchgen.runner.options import RunOptions
from batchgen.runner.pool import Runner
from batchgen.runner.totals import RunTotals

__all__ = ["RunOptions", "RunTotals", "Runner"]
