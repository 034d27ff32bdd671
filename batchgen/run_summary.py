"""What a person reads at the end of a run: this run's figures, where things went, and
the commands that resume it or rerun what failed for good. The same money lines as
`batchgen report`, from `summaries.money_lines`."""

from __future__ import annotations

from batchgen.errors import failure_text
from batchgen.planning import format_duration
from batchgen.results import RunResult
from batchgen.summaries import UNWRITTEN, money_lines


def render(result: RunResult, *, resume: str | None, retry: str | None = None) -> str:
    """The end-of-run summary; `resume` and `retry` are commands to show, if any."""
    head = "stopped early" if result.stopped else "finished"
    lines = [
        f"{head} in {format_duration(result.seconds)}"
        + (f": {result.stopped}" if result.stopped else ""),
        f"  succeeded   {result.succeeded:,}"
        + (f" ({result.skipped_done:,} were already done)" if result.skipped_done else ""),
        f"  failed      {result.failed:,}"
        + (f" ({result.skipped_failed:,} failed before, skipped)" if result.skipped_failed else ""),
    ]
    top = sorted(result.failures.items(), key=lambda item: -item[1])[:10]
    lines += [f"    {count:>5}  {failure_text(*failure)}" for failure, count in top]
    if result.skipped_failed and retry is None:
        lines.append("              (--retry-failed runs the jobs that failed before again)")
    if result.unwritten:
        lines.append(f"  unwritten   {result.unwritten:,} {UNWRITTEN}")
    if result.not_run:
        lines.append(f"  not run     {result.not_run:,} (the next run does them)")
    money = money_lines(
        result.spent,
        result.requests,
        result.possibly_billed,
        result.remaining_credits,
        why="502/504, timeouts, cut requests",
    )
    lines += [f"  {line}" for line in money]
    lines.append(f"  images      {result.out}/")
    lines.append(f"  ledger      {result.ledger}")
    if resume:
        lines.append(f"  resume      {resume}")
    if retry:
        lines.append(f"  retry       {retry}   # also the jobs that failed for good")
    return "\n".join(lines)
