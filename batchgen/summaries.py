"""Summaries: what a run did, rebuilt from ledgers alone (several merge into one)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batchgen import images, ledger
from batchgen.errors import failure_text


@dataclass
class Summary:
    ledgers: list[str]
    jobs: int = 0
    succeeded: int = 0
    failed: int = 0
    not_finished: int = 0  # started or interrupted, never finished: the next run does them
    unwritten: int = 0  # paid for, not on disk (full disk, cut off…): downloaded, or run again
    spent: float = 0.0
    possibly_billed: float = 0.0
    requests: int = 0
    remaining_credits: str | None = None
    wall_seconds: float = 0.0
    runs: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    failed_jobs: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(paths: Iterable[Path]) -> Summary:
    """The report of some ledgers, from the one fold every reader uses (`ledger.fold`):
    an attempt that may have been billed (`maybe`, or cut short by a crash) is possibly
    billed until a line settles it (batchgen/settle/); then it counts as what the
    service charged: spent, or nothing."""
    paths = list(paths)
    folded = ledger.fold(ledger.ledgers(paths))
    summary = Summary([str(p) for p in paths], runs=folded.runs, requests=folded.requests,
                      wall_seconds=folded.wall_seconds,
                      remaining_credits=folded.remaining_credits)  # fmt: skip
    failures: Counter[str] = Counter()
    for job_id, job in folded.jobs.items():
        if job.status == "succeeded":
            summary.succeeded += 1
        elif job.status == "failed":
            summary.failed += 1
            reason = failure_text(job.http_status, str(job.error))
            failures[reason] += 1
            params = job.params or {}
            summary.failed_jobs.append(
                {"job_id": job_id, "error": reason, "retryable": job.retryable,
                 "image": images.source(params.get("image_file")),
                 "prompt": params.get("prompt"), "seed": params.get("seed")}
            )  # fmt: skip
        elif job.status == "unwritten":
            summary.unwritten += 1
        else:
            summary.not_finished += 1
    summary.jobs = len(folded.jobs)
    summary.failures = dict(failures.most_common())
    summary.spent = round(folded.spent, 6)
    summary.possibly_billed = round(folded.possibly_billed(), 6)
    return summary


UNWRITTEN = (
    "paid for but not written (see the error above); the next run downloads them from the "
    "request history, or pays again if it cannot"
)
PAID_NOT_ON_DISK = (
    "paid for, not on disk (not written, or cut off on the way); the next run downloads "
    "them from the request history, or pays again if it cannot"
)


def render(summary: Summary) -> str:
    lines = [
        f"ledgers     {', '.join(summary.ledgers) or '(none)'} ({summary.runs} runs)",
        f"jobs        {summary.jobs:,}",
        f"succeeded   {summary.succeeded:,}",
        f"failed      {summary.failed:,}",
    ]
    lines += [f"  {count:>6}  {reason}" for reason, count in summary.failures.items()]
    if summary.not_finished:
        lines.append(f"unfinished  {summary.not_finished:,} (the next run does them)")
    if summary.unwritten:
        lines.append(f"unwritten   {summary.unwritten:,} {PAID_NOT_ON_DISK}")
    lines += money_lines(
        summary.spent,
        summary.requests,
        summary.possibly_billed,
        summary.remaining_credits,
        why="gateway errors, timeouts, crashes",
    )
    if summary.wall_seconds:
        lines.append(f"wall time   {summary.wall_seconds:,.1f}s")
    if summary.failed_jobs:
        lines.append("failed jobs:")
        lines += [
            f"  {j['job_id'][:12]}  {j['image']}  {j['prompt']!r} seed {j['seed']}: {j['error']}"
            for j in summary.failed_jobs
        ]
    return "\n".join(lines)


def money_lines(
    spent: float, requests: int, maybe: float, credits: str | None, *, why: str
) -> list[str]:
    """What was paid, what may have been, what is left: the same lines for a ledger's
    report and a run's summary."""
    lines = [f"spent       ${spent:,.2f} over {requests:,} requests"]
    if maybe:
        lines.append(f"maybe       ${maybe:,.2f} possibly billed ({why})")
    if credits is not None:
        lines.append(f"credits     {credits} remaining, as the service said")
    return lines
