"""Settler: settles attempts against one request history, reading and writing the
ledgers through a `LedgerIO` (the local files unless told otherwise).

`settle_ledgers` does every unsettled attempt of some ledgers: the rows matched to each
job (`matching`), the verdicts (`decision`), then the lines written and the images
recovered. `collect_queued` is the v2 step before it (`queued`). Within a run, a lost
answer is settled the same way, between passes (`passes`): the runner defers it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from batchgen.history import History, HistoryUnavailable
from batchgen.settle import queued
from batchgen.settle.decision import CLOCK_SLACK_S, HISTORY_LAG_S, Decision, Verdict, decide
from batchgen.settle.ledger_io import LedgerIO
from batchgen.settle.lines import settled_line
from batchgen.settle.matching import rows_by_job
from batchgen.settle.recover import recover
from batchgen.settle.report import SettleReport, charge
from batchgen.settle.targets import Targets, targets_from_manifests
from batchgen.settle.view import read_view

Clock = Callable[[], float]


class Settler:
    """Settles attempts against one history: `settle_ledgers` does every unsettled
    attempt of some ledgers, reading and writing them through `io` (the local files
    unless told otherwise), and `collect_queued` the recorded v2 requests before it."""

    def __init__(
        self,
        history: History,
        *,
        lag: float = HISTORY_LAG_S,
        slack: float = CLOCK_SLACK_S,
        clock: Clock = time.time,
        io: LedgerIO | None = None,
    ) -> None:
        self.history, self.lag, self.slack, self.clock = history, lag, slack, clock
        self.io = io or LedgerIO()

    async def settle_ledgers(
        self,
        settle: Sequence[Path],
        read: Sequence[Path],
        targets: Targets | None = None,
        assets: Mapping[str, str] | None = None,
    ) -> SettleReport:
        """Settle every unsettled attempt in the ledgers `settle` (whose run locks the
        caller holds), with `read` (every ledger of the out folder) for what is done and
        which ids are claimed. `assets` (url -> sha256), with the asset cache beside each
        ledger, names the images requests carried as uploaded URLs (`--upload-images`).
        Appends lines; rewrites nothing. Never raises for the history: an unreadable one
        is `SettleReport.unavailable`."""
        everything = await self.io.ledgers(read, settle)
        view = read_view(everything)
        mine = {str(p) for p in settle}
        attempts = [a for a in view.unsettled() if str(a.ledger) in mine]
        if not attempts:
            return SettleReport()
        state = self.io.state(everything)
        claimed = view.claimed
        targets = targets or targets_from_manifests(view.manifests)
        now = self.clock()
        since = min(a.started_at for a in attempts) - self.slack
        models = {a.model for a in attempts}
        try:
            rows = await self.history.scan(
                since=since, until=now, model=models.pop() if len(models) == 1 else None
            )
            by_id = {row.request_id: row for row in rows}
            for attempt in attempts:  # an id the scan missed (older, another model)
                rid = attempt.request_id
                if (
                    (attempt.status == "unwritten" or attempt.ambiguous)
                    and rid
                    and rid not in by_id
                ):
                    found = await self.history.row(rid)
                    if found is not None:
                        by_id[rid] = found
        except HistoryUnavailable as err:
            return SettleReport(unavailable=str(err), history_calls=self.history.calls)
        known = {**self.io.assets(everything), **(assets or {})}
        by_job = rows_by_job(view.attempts, {a.job_id for a in attempts}, rows, claimed, known)
        decisions: list[Decision] = []
        for job_id in sorted({a.job_id for a in attempts}):
            job_attempts = [a for a in view.attempts[job_id] if str(a.ledger) in mine]
            decisions += decide(
                job_attempts, by_job.get(job_id, []), now=now, lag=self.lag, slack=self.slack,
                done=state.is_done(job_id), settled=view.settled, by_id=by_id,
            )  # fmt: skip
        return await self._apply(decisions, targets, now)

    async def _apply(self, decisions: list[Decision], targets: Targets, now: float) -> SettleReport:
        """Each decision's line, ledger by ledger, an image to recover fetched first."""
        counts = {"recovered": 0, "billed": 0, "not_billed": 0, "unknown": 0, "lost": 0}
        saved = charged = 0.0
        recovered: set[str] = set()
        unknown: set[str] = set()
        by_job: dict[str, float] = {}  # decided ambiguous attempts: their jobs, their cost
        retry_at: float | None = None
        by_ledger: dict[Path, list[Decision]] = {}
        for decision in decisions:
            by_ledger.setdefault(decision.attempt.ledger, []).append(decision)
        for path, mine in by_ledger.items():
            async with self.io.writer(path) as writer:
                for decision in mine:
                    attempt, row = decision.attempt, decision.row
                    if decision.verdict is Verdict.UNKNOWN:
                        counts["unknown"] += 1
                        unknown.add(attempt.job_id)
                        moment = max(attempt.deadline(self.lag), now + 1.0)
                        retry_at = moment if retry_at is None else min(retry_at, moment)
                        continue
                    if decision.recover and row is not None and attempt.job_id not in recovered:
                        if await recover(self.history, writer, attempt, row, targets):
                            counts["recovered"] += 1
                            saved += attempt.price or row.cost
                            charged += row.cost if attempt.ambiguous else 0.0  # as its line
                            recovered.add(attempt.job_id)
                            if attempt.ambiguous:
                                charge(by_job, attempt.job_id, row.cost)
                            continue
                        counts["lost"] += 1
                        if not attempt.ambiguous:
                            continue  # an unwritten one: its money is counted already
                    elif decision.verdict is Verdict.BILLED:
                        counts["billed"] += 1
                    else:
                        counts["not_billed"] += 1
                    line = settled_line(decision)
                    charged += line["cost"] if attempt.ambiguous else 0.0  # else counted
                    if attempt.ambiguous:
                        charge(by_job, attempt.job_id, line["cost"])
                    await writer.write(line)
        return SettleReport(
            recovered=counts["recovered"], saved=round(saved, 6), billed=counts["billed"],
            charged=round(charged, 6),
            not_billed=counts["not_billed"], unknown=counts["unknown"], lost=counts["lost"],
            recovered_jobs=frozenset(recovered), unknown_jobs=frozenset(unknown),
            charged_jobs=by_job,
            retry_at=retry_at, history_calls=self.history.calls,
        )  # fmt: skip

    async def collect_queued(
        self,
        settle: Sequence[Path],
        read: Sequence[Path],
        targets: Targets | None,
        base: str,
        *,
        wait: float = queued.QUEUE_WAIT_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Clock = time.monotonic,
    ) -> SettleReport:
        """The v2 step on resume, before the history (`queued.collect_queued`): recorded
        v2 request ids polled at `base`, what completed downloaded, the wait timed by
        `monotonic` (the clock `sleep` moves; `self.clock` is the wall clock the
        history's times are compared with). Nothing is sent."""
        return await queued.collect_queued(
            self.history, self.io, settle, read, targets, base, wait=wait, sleep=sleep,
            clock=monotonic,
        )  # fmt: skip
