"""SettleReport: what one settlement pass did, its counts and money, and its one line
for the user (`settled 7 requests: 5 completed (downloaded, $0.32 not paid twice), …`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class SettleReport:
    """What one settlement pass did."""

    recovered: int = 0  # images downloaded instead of paid again
    saved: float = 0.0  # what those would have cost again
    charged: float = 0.0  # what the attempts found billed cost, as their lines say: the
    # service's figure (the row's), which may differ from the manifest's price
    billed: int = 0  # other attempts found billed (no image needed, or none to be had)
    not_billed: int = 0
    unknown: int = 0  # left for the next scan (pending, or within the lag)
    lost: int = 0  # billed, but the image could not be fetched or written: runs again
    unavailable: str | None = None  # why the history could not be read
    skipped_ledgers: tuple[str, ...] = ()  # locked by a run: left alone
    recovered_jobs: frozenset[str] = frozenset()
    # each job an ambiguous attempt of which was decided (recovered, billed, not billed,
    # lost, failed), with what those attempts cost as their lines say: a run counts only
    # its own attempts' (an earlier run's, settled in this one, were that run's money)
    charged_jobs: Mapping[str, float] = field(default_factory=dict)
    failed_jobs: frozenset[str] = frozenset()  # v2 requests FAILED: their jobs failed for good
    unknown_jobs: frozenset[str] = frozenset()
    retry_at: float | None = None  # when a new scan could decide an unknown one
    history_calls: int = 0
    polled: int = 0  # of `recovered`: v2 requests downloaded by polling their recorded id
    failed: int = 0  # v2 requests that ended FAILED (not billed): their jobs failed for good
    polls: int = 0  # v2 result GETs made (free)

    @property
    def settled(self) -> int:
        return self.recovered + self.billed + self.not_billed + self.failed

    def then(self, later: SettleReport) -> SettleReport:
        """Two steps of one pass as one: counts added, the rest from `later`. The steps
        (the v2 polls, then the history: `folder.settle_out`) decide different
        attempts (what the polls leave open, the history step decides or counts
        unknown), so adding counts none twice; two scans of the same attempts, where
        only the last one's unknown count, are `passes.merged`."""
        return replace(
            later, recovered=self.recovered + later.recovered,
            saved=round(self.saved + later.saved, 6), billed=self.billed + later.billed,
            charged=round(self.charged + later.charged, 6),
            not_billed=self.not_billed + later.not_billed, lost=self.lost + later.lost,
            unknown=self.unknown + later.unknown, polled=self.polled + later.polled,
            failed=self.failed + later.failed, polls=self.polls + later.polls,
            recovered_jobs=self.recovered_jobs | later.recovered_jobs,
            charged_jobs=_added(self.charged_jobs, later.charged_jobs),
            failed_jobs=self.failed_jobs | later.failed_jobs,
            unknown_jobs=self.unknown_jobs | later.unknown_jobs,
            history_calls=self.history_calls + later.history_calls,
        )  # fmt: skip

    def line(self) -> str:
        """`settled 7 requests: 5 completed (downloaded, $0.32 not paid twice), 2 not billed`"""
        if self.unavailable is not None:
            return f"cannot settle from the request history: {self.unavailable}"
        parts = []
        if self.recovered:
            by_id = f"; {self.polled} by their v2 request id" if self.polled else ""
            parts.append(f"{self.recovered} completed (downloaded, ${self.saved:,.2f} not paid "
                         f"twice{by_id})")  # fmt: skip
        if self.failed:
            parts.append(f"{self.failed} FAILED (not billed; failed for good)")
        if self.billed:
            parts.append(f"{self.billed} billed (no image needed)")
        if self.not_billed:
            parts.append(f"{self.not_billed} not billed")
        words = f"settled {self.settled} request{'s' if self.settled != 1 else ''}"
        text = f"{words}: {', '.join(parts)}" if parts else words
        if self.unknown:
            text += f"; {self.unknown} still unknown (the history has no final word yet)"
        if self.lost:
            text += f"; {self.lost} billed images could not be fetched (their jobs run again)"
        return text


def charge(by_job: dict[str, float], job_id: str, cost: float) -> None:
    """Add what one decided attempt cost to its job's figure in `charged_jobs`."""
    by_job[job_id] = round(by_job.get(job_id, 0.0) + cost, 6)


def _added(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    both = dict(a)
    for job, cost in b.items():
        charge(both, job, cost)
    return both
