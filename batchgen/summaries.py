"""Summaries: what a run did, rebuilt from ledgers alone (several merge into one)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from batchgen import images, ledger
from batchgen.errors import failure_text


@dataclass
class _Job:
    status: str = "started"
    error: str | None = None
    http_status: int | None = None
    retryable: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    open_attempt: float = 0.0  # price of an attempt with no recorded outcome yet
    open_key: tuple[str, str, int] | None = None  # that attempt: (ledger, started ts, attempt)
    maybe: dict[tuple[str, str, int], float] = field(default_factory=dict)  # not yet settled


@dataclass
class Summary:
    ledgers: list[str]
    jobs: int = 0
    succeeded: int = 0
    failed: int = 0
    not_finished: int = 0  # started or interrupted, never finished: the next run does them
    unwritten: int = 0  # paid for, never written (full disk…): the next run does them again
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
    paths = list(paths)
    summary = Summary([str(p) for p in paths])
    jobs: dict[str, _Job] = {}
    for path in paths:
        started_at: datetime | None = None
        for record in ledger.read(path):
            status = record["status"]
            if status == "run":
                summary.runs += 1
                started_at = _when(record)
            elif status == "run_end" and started_at is not None:
                ended = _when(record)
                if ended is not None:
                    summary.wall_seconds += (ended - started_at).total_seconds()
                started_at = None
            elif isinstance(record.get("job_id"), str):
                _account(summary, jobs.setdefault(record["job_id"], _Job()), record, str(path))
    _finish(summary, jobs)
    return summary


def _when(record: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None


def _account(summary: Summary, job: _Job, record: dict[str, Any], path: str = "") -> None:
    """Money: an attempt that may have been billed (`maybe`, or cut short by a crash) is
    possibly billed until a line settles it (`settles`: batchgen/settle.py); then it
    counts as what the service charged: spent, or nothing."""
    status = record["status"]
    billed, cost = record.get("billed"), float(record.get("cost", 0.0))
    settles = record.get("settles")
    if isinstance(settles, dict):
        key = (path, str(settles.get("started")), int(settles.get("attempt", 0)))
        if key == job.open_key:
            job.open_attempt, job.open_key, resolved = 0.0, None, True
        else:
            resolved = job.maybe.pop(key, None) is not None
        if resolved and (status == "succeeded" or billed == "billed"):
            summary.spent += cost
        if status == ledger.SETTLED:
            return
    elif status == "started":
        summary.requests += 1
        if job.open_attempt and job.open_key is not None:  # an attempt a crash cut short
            job.maybe[job.open_key] = job.open_attempt
        job.open_attempt = float(record.get("price", 0.0))
        job.open_key = (path, str(record.get("ts")), int(record.get("attempt", 0)))
        if job.status != "succeeded":
            job.status = "started"
        job.params = record.get("params", job.params)
        return
    elif status in (ledger.SETTLED, ledger.SUBMITTED):  # submitted: still open, maybe billed
        return
    else:
        opened, job.open_attempt, job.open_key = job.open_key, 0.0, None
        if status == "succeeded" or billed == "billed":
            summary.spent += cost
        elif billed == "maybe":
            key = opened or (path, str(record.get("ts")), int(record.get("attempt", 0)))
            job.maybe[key] = job.maybe.get(key, 0.0) + cost
    if status == "succeeded":
        job.status = "succeeded"
        credits = record.get("headers", {}).get("x-remaining-credits")
        summary.remaining_credits = credits or summary.remaining_credits
    elif status in ("failed", "interrupted", "unwritten") and job.status != "succeeded":
        job.status = status
        job.error, job.http_status = record.get("error"), record.get("http_status")
        job.retryable = bool(record.get("retryable", True))


def _finish(summary: Summary, jobs: dict[str, _Job]) -> None:
    failures: Counter[str] = Counter()
    for job_id, job in jobs.items():
        summary.possibly_billed += job.open_attempt + sum(job.maybe.values())
        if job.status == "succeeded":
            summary.succeeded += 1
        elif job.status == "failed":
            summary.failed += 1
            reason = failure_text(job.http_status, str(job.error))
            failures[reason] += 1
            summary.failed_jobs.append(
                {"job_id": job_id, "error": reason, "retryable": job.retryable,
                 "image": images.source(job.params.get("image_file")),
                 "prompt": job.params.get("prompt"), "seed": job.params.get("seed")}
            )  # fmt: skip
        elif job.status == "unwritten":
            summary.unwritten += 1
        else:
            summary.not_finished += 1
    summary.jobs = len(jobs)
    summary.failures = dict(failures.most_common())
    summary.spent = round(summary.spent, 6)
    summary.possibly_billed = round(summary.possibly_billed, 6)


UNWRITTEN = "paid for but not written (see the error above); the next run pays for them again"


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
        lines.append(f"unwritten   {summary.unwritten:,} {UNWRITTEN}")
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
