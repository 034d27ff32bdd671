"""The verdict on a job's unsettled attempts, from the history rows that are its (pure).

Per job, the COMPLETED rows left after the job's attempts known to be billed without an
id are the billed ones among its unsettled attempts, oldest first. Past those, an attempt
is NOT_BILLED once no PENDING row is left and its lag (`history_lag`, default 30 s, from
its outcome line, else from its `started` line) has passed; until then it is UNKNOWN and
the next scan decides. Only rows created at or after the earliest unsettled attempt's
start, less `CLOCK_SLACK_S`, count. An attempt whose v2 request id is known is decided by
its own row; an `unwritten` one (paid, its image lost on our side or cut off on the way) is
found by its id, and is UNKNOWN while its row may yet show (within the lag). Each
billed attempt of a job not done whose image may be had is offered for recovery
(`Decision.recover`): the caller downloads the first that can be fetched instead of
paying again, and settles the rest billed, no image needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from batchgen.history import Row
from batchgen.ledger.fold import Attempt, Key

HISTORY_LAG_S: Final = 30.0  # a row shows up to this long after its request (pinned)
CLOCK_SLACK_S: Final = 120.0  # our clock and the service's may disagree by this much


class Verdict(Enum):
    BILLED = "billed"
    NOT_BILLED = "not billed"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Decision:
    attempt: Attempt
    verdict: Verdict
    row: Row | None = None
    recover: bool = False  # download the row's image for the job


def decide(
    attempts: Sequence[Attempt],
    rows: Iterable[Row],
    *,
    now: float,
    lag: float = HISTORY_LAG_S,
    slack: float = CLOCK_SLACK_S,
    done: bool = False,
    settled: frozenset[Key] | set[Key] = frozenset(),
    by_id: Mapping[str, Row] | None = None,
) -> list[Decision]:
    """The verdict on each unsettled attempt of one job.

    `attempts`: every attempt the ledgers hold for the job; `rows`: the history's rows
    whose body is the job's and whose ids no line claims; `settled`: keys already settled;
    `done`: the job's image is in place; `by_id`: rows by id, for attempts with a known id
    (an `unwritten` one is billed, and only needs its image)."""
    pending_attempts = sorted(
        (a for a in attempts if a.ambiguous and a.key not in settled), key=lambda a: a.started_at
    )
    unwritten = [a for a in attempts if a.status == "unwritten" and a.key not in settled]
    if not pending_attempts and (done or not unwritten):
        return []
    begins = min(a.started_at for a in [*pending_attempts, *unwritten]) - slack
    known = sum(
        1 for a in attempts
        if a.billed == "billed" and a.request_id is None and a.started_at >= begins + slack
    )  # fmt: skip
    window = [r for r in rows if r.created_at is None or r.created_at >= begins]
    completed = sorted(
        (r for r in window if r.status == "COMPLETED"), key=lambda r: r.created_at or 0.0
    )[known:]
    pending = any(r.status == "PENDING" for r in window)
    # Every attempt of the window (the rows' own: from the first unsettled one less the
    # clock slack) has its finished row: the ones left without a COMPLETED row FAILED,
    # and need not wait out the lag. An attempt that never reached the service leaves
    # no row, so then the lag decides, as before.
    tried = sum(1 for a in attempts if a.started_at >= begins)
    finished = sum(1 for r in window if r.status in ("COMPLETED", "FAILED"))
    all_rows_in = not pending and finished >= tried
    decisions: list[Decision] = []
    for attempt in pending_attempts:
        if attempt.request_id is not None:  # a v2 request: its own row, by its id
            decisions.append(_by_own_id(attempt, (by_id or {}).get(attempt.request_id), now, lag))
        elif completed:
            decisions.append(Decision(attempt, Verdict.BILLED, completed.pop(0)))
        elif not all_rows_in and (pending or now < attempt.deadline(lag)):
            decisions.append(Decision(attempt, Verdict.UNKNOWN))
        else:
            decisions.append(Decision(attempt, Verdict.NOT_BILLED))
    if done:
        return decisions
    # Every billed attempt whose image can be had is offered for the job, in order: when
    # one cannot be fetched (its output expired) the next is tried, and once one is in
    # place the rest are settled billed, no image needed (`Settler._apply`).
    for index, decision in enumerate(decisions):
        if decision.verdict is Verdict.BILLED and decision.row and decision.row.generation_url:
            decisions[index] = Decision(decision.attempt, Verdict.BILLED, decision.row, True)
    # Paid and lost on our side (not written, or cut off on the way): by its id, newest
    # first (its output the least likely to have expired). One whose row may not show
    # yet is waited for, never paid again, unless an image is to be had already.
    fetchable, waiting = [], []
    for attempt in sorted(unwritten, key=lambda a: a.started_at, reverse=True):
        row = (by_id or {}).get(attempt.request_id or "")
        if row is not None and row.status == "COMPLETED" and row.generation_url:
            fetchable.append(Decision(attempt, Verdict.BILLED, row, True))
        elif (
            attempt.request_id
            and (row is None or row.status == "PENDING")
            and now < attempt.deadline(lag)
        ):
            waiting.append(Decision(attempt, Verdict.UNKNOWN))
    if fetchable or any(decision.recover for decision in decisions):
        return [*decisions, *fetchable]
    return [*decisions, *waiting]


def _by_own_id(attempt: Attempt, row: Row | None, now: float, lag: float) -> Decision:
    """An attempt whose request id is known (v2 `submitted`): its row says, or, once
    the lag has passed with no row, it was not billed."""
    if row is not None and row.status == "COMPLETED":
        return Decision(attempt, Verdict.BILLED, row)
    if row is not None and row.status == "FAILED":
        return Decision(attempt, Verdict.NOT_BILLED, row)
    if row is not None or now < attempt.deadline(lag):
        return Decision(attempt, Verdict.UNKNOWN)
    return Decision(attempt, Verdict.NOT_BILLED)
