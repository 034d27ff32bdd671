"""What one run did (`RunResult`): the figures `batchgen.run` returns and the CLI prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from batchgen import (
    settle,
)
from batchgen.batch import BatchResult
from batchgen.planning import Plan
from batchgen.stops import Stop


@dataclass(frozen=True)
class RunResult:
    """What one run did. Counts are this run's own work: a rerun of a finished batch
    has `succeeded == 0` and `skipped_done == plan.jobs`, and sent nothing."""

    plan: Plan
    out: Path | str  # a str for an object store's URL (`s3://bucket/prefix`)
    ledger: Path | str
    succeeded: int = 0
    failed: int = 0
    skipped_done: int = 0  # done by an earlier run, its image still on disk
    skipped_failed: int = 0  # failed for good earlier; `retry_failed=True` runs them
    not_run: int = 0  # left for the next run because this one stopped early
    unwritten: int = 0  # paid for, but the image could not be written
    spent: float = 0.0  # USD the service charged for this run's requests
    possibly_billed: float = 0.0  # USD of 502/504s and timeouts that may have been charged
    requests: int = 0
    throttled: int = 0  # answers that were 429
    failures: dict[tuple[int | None, str], int] = field(default_factory=dict)  # (status, text)
    remaining_credits: str | None = None  # as the service last said
    stopped: Stop | None = None  # why the run stopped early; None when it ran to the end
    seconds: float = 0.0
    run_id: str | None = None  # None when nothing ran (not confirmed)
    settlement: settle.SettleReport | None = None  # what the request history settled first
    held_back: int = 0  # jobs not sent: an earlier request of theirs may still be billed
    uploaded: int = 0  # local images uploaded by this run (upload_images=True)

    @classmethod
    def of(
        cls, batch: BatchResult, plan: Plan, out: Path | str, ledger_path: Path | str
    ) -> RunResult:
        t = batch.totals
        return cls(
            plan, out, ledger_path, t.succeeded, t.failed, t.skipped_done, t.skipped_failed,
            t.not_run, t.unwritten, round(t.spent, 6), round(t.possibly_billed, 6), t.requests,
            t.throttled, dict(t.failures), t.remaining_credits, t.stopped, batch.seconds,
            batch.run_id,
        )  # fmt: skip
