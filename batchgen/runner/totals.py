"""What a run counts: its jobs' outcomes, its money, and why it stopped early."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from batchgen.stops import Stop


@dataclass
class RunTotals:
    succeeded: int = 0
    failed: int = 0
    skipped_done: int = 0
    skipped_failed: int = 0
    not_run: int = 0  # left for the next run when this one stopped early (set at the end)
    unwritten: int = 0  # paid for, but the image could not be written
    # the jobs whose attempt may have been billed, or was billed and its image not had,
    # left to settle from the request history, not retried (once a pass at most: the
    # job ends there), with the attempts each had made by then
    deferred_jobs: dict[str, int] = field(default_factory=dict)
    spent: float = 0.0
    possibly_billed: float = 0.0
    requests: int = 0
    throttled: int = 0
    failures: Counter[tuple[int | None, str]] = field(default_factory=Counter)  # (status, text)
    remaining_credits: str | None = None
    stopped: Stop | None = None  # why the run stopped early, if it did

    @property
    def deferred(self) -> int:
        return len(self.deferred_jobs)
