"""The settlement passes of a run: before it, what earlier runs left ambiguous; after each
pass, what this one did (answers lost after sending, deferred by the runner instead of
paid again). Settled from the request history (`folder.settle_out`); what it says was not billed
is sent again in the next pass, and the passes' results combine into one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from batchgen import events, ledger, preflight, shard, uploads
from batchgen.batch import BatchResult
from batchgen.manifest import Manifest
from batchgen.pacing import Clock, Sleep
from batchgen.planning import Plan
from batchgen.results import RunResult
from batchgen.runner.options import RunOptions
from batchgen.settle.folder import settle_out
from batchgen.settle.report import SettleReport
from batchgen.settle.targets import Targets
from batchgen.stops import Stop, StopReason

log = logging.getLogger("batchgen")

SETTLE_POLL_S = 5.0  # between scans while some request is still pending or within the lag


SETTLE_MAX_SCANS = 20


# What a run does when the history cannot be read: before it, and within it
GOING_ON = "going on without it"
LEFT_FOR_NEXT_RUN = "what this run could not settle is left for the next run"


SETTLE_MAX_WAIT_S = 60.0  # then what is still unknown is held back, for the next run


async def settle_first(
    loaded: Manifest,
    owned: shard.Shard | None,
    out: Path,
    ledger_path: Path,
    ledger_file: Path | None,
    key: str,
    base: str,
    lag: float,
    emit: events.Listener,
    sleep: Sleep | None,
    queue_base: str | None = None,
    clock: Clock | None = None,
    *,
    then: str = GOING_ON,
) -> SettleReport:
    """Settle what earlier runs left ambiguous, before the plan pass reads any state.
    First the v2 requests whose ids were recorded are polled at `queue_base` (what
    completed is downloaded; `sleep` between polls, their wait timed by `clock`, the
    run's seams, real time when None); then the history. While some attempt is still pending or
    within the lag, scan again (every few seconds, for about the lag); what is still
    unknown then is held back from sending. `then`: what the run does when the history
    cannot be read, as its warning says."""
    paths = sorted({*ledger.ledgers_in(out), ledger_path}) if ledger_file is None else [ledger_path]
    wanted = LazyTargets(loaded, owned, out)
    pause, monotonic = sleep or asyncio.sleep, clock or time.monotonic

    # A shard settles its own ledger only (the others are read): its sibling shards'
    # jobs are theirs to settle, to the output paths only their plans have.
    own = [ledger_path] if owned is not None else None

    async def scan() -> SettleReport:
        return await settle_out(
            paths, api_key=key, history_base=base, lag=lag, held=[ledger_path], targets=wanted,
            queue_base=queue_base, sleep=pause, monotonic=monotonic,
            assets=uploads.digests_by_url([out]), only=own,
        )  # fmt: skip

    return await until_decided(scan, lag, emit, pause, monotonic, then=then)


Scan = Callable[[], Awaitable[SettleReport]]


async def until_decided(
    scan: Scan,
    lag: float,
    emit: events.Listener,
    pause: Sleep,
    clock: Clock = time.monotonic,
    *,
    then: str = GOING_ON,
) -> SettleReport:
    """Settlement passes (`scan`, one `settle_out`), again while some attempt is
    still pending or within the lag (every few seconds, for about the lag); what is
    still unknown then is held back from sending. The local ledgers and a store's
    (`settle.store`) share it. Time spent is by `clock`, the one `pause` moves (a fake
    sleep comes with its fake clock); how long until a scan could decide more is by
    the wall clock (`retry_at`, against the history's times)."""
    began = clock()
    total: SettleReport | None = None
    for _ in range(SETTLE_MAX_SCANS):
        report = await scan()
        total = report if total is None else merged(total, report)
        if report.unavailable is not None:
            log.warning("batchgen: %s; %s", report.unavailable, then)
            break
        if not report.unknown or report.retry_at is None:
            break
        ahead = report.retry_at - time.time()  # until a scan could decide more
        if clock() - began + ahead > min(lag + 2 * SETTLE_POLL_S, SETTLE_MAX_WAIT_S):
            break  # not decidable soon: held back from this run, settled by the next
        await pause(max(0.2, min(SETTLE_POLL_S, ahead)))
    assert total is not None
    if total.settled or total.unknown or total.unavailable is not None:  # news, not noise
        emit(events.Settled(total))
    return total


def merged(a: SettleReport, b: SettleReport) -> SettleReport:
    """Two scans as one (`SettleReport.then`), except that what is still unknown is the
    last scan's alone: a scan looks again at every attempt still unsettled, so an
    attempt unknown in `a` is in `b` again, decided or still unknown, and adding would
    count it twice (and hold back a job `b` decided). Unless `b` could not read the
    history: then only its v2 polls looked again, and what `a` left unknown still is,
    but for the jobs those polls finished (downloaded, or FAILED)."""
    if b.unavailable is not None:
        finished = b.recovered_jobs | b.failed_jobs
        return replace(a.then(b), unknown=max(a.unknown, b.unknown),
                       unknown_jobs=(a.unknown_jobs - finished) | b.unknown_jobs)  # fmt: skip
    return replace(a.then(b), unknown=b.unknown, unknown_jobs=b.unknown_jobs)


class LazyTargets(Targets):
    """Output paths from the manifest, expanded only once an image is to be placed."""

    def __init__(self, loaded: Manifest, owned: shard.Shard | None, out: Path) -> None:
        super().__init__()
        self._source: tuple[Manifest, shard.Shard | None, Path] | None = (loaded, owned, out)

    def place(self, job_id: str, ledger_path: Path, ext: str) -> tuple[str, str]:
        if self._source is not None:
            loaded, owned, out = self._source
            self._source = None
            for job in preflight.shard_jobs(loaded, owned, check_paths=False):
                self.add(job.job_id, out, job.output)
        return super().place(job_id, ledger_path, ext)


SETTLE_ROUNDS = 3  # a pass, then up to two more for what settlement found not billed


@dataclass(frozen=True)
class Passes:
    """What a run's passes did: each pass's batch, the settlement after each pass but
    the last, the settlement of the whole run (before it, and in it), and the jobs
    the last pass held back."""

    batches: list[BatchResult]
    in_run: list[SettleReport]
    settled: SettleReport | None
    held: frozenset[str]
    held_before: frozenset[str] = frozenset()  # by the settlement before the run


@dataclass(frozen=True)
class Used:
    """What a run's earlier passes did, for the next one: the jobs the settlement sent
    back to it (`again`: only those run again; None in the first pass, which runs the
    plan), and what they used, so that the run's limits hold for the run and not for
    each pass: the attempts each job made (`--max-attempts`) and the money spent or
    possibly billed (`--max-cost`)."""

    again: frozenset[str] | None = None
    attempts: Mapping[str, int] = field(default_factory=dict)
    money: float = 0.0

    def options(self, options: RunOptions, *, defer: bool) -> RunOptions:
        """A pass's options: the run's, with what the earlier passes used."""
        return replace(options, defer_ambiguous=defer, prior_attempts=self.attempts,
                       prior_money=self.money)  # fmt: skip

    def to_run(self, planned: int, held: frozenset[str]) -> int | None:
        """How many jobs this pass runs, for counting what an early stop left: the
        plan's count less the held jobs in the first pass (the plan counts them); in a
        later pass, unknown (the runner reads on through the jobs left)."""
        return max(0, planned - len(held)) if self.again is None else None

    def runs(self, job_id: str) -> bool:
        """Whether this pass runs the job (a later pass: only what was sent back to it;
        a job that failed in an earlier pass has had its attempts)."""
        return self.again is None or job_id in self.again


async def run_passes(
    run_pass: Callable[[bool, frozenset[str], Used], Awaitable[BatchResult]],
    settle_pass: Callable[[], Awaitable[SettleReport]],
    replan: Callable[[], Awaitable[None]],
    *,
    settled: SettleReport | None,
    defer: bool,
    price: float,
) -> Passes:
    """A run as passes, the same for a folder and a store. `run_pass(defer, held, used)`
    runs the jobs not held back, deferring lost answers while `defer` (the history can
    say whether they were billed), within what the earlier passes left of the run's
    limits (`used`); when a pass deferred some, `settle_pass` asks the history (billed:
    downloaded; not billed: `replan`, then the next pass sends them). What the last of
    SETTLE_ROUNDS passes defers waits for the next run, which settles it first: a lost
    answer is never sent again blindly while the history can tell. So does what a pass
    deferred when the history then could not be read: it may only be down for a while,
    and the next run asks it first."""
    batches: list[BatchResult] = []
    in_run: list[SettleReport] = []
    used = Used()
    before = settled.unknown_jobs if settled is not None else frozenset()
    while True:
        held = settled.unknown_jobs if settled is not None else frozenset()
        batch = await run_pass(defer, held, used)
        batches.append(batch)
        totals = batch.totals
        if not totals.deferred or totals.stopped is not None or len(batches) >= SETTLE_ROUNDS:
            return Passes(batches, in_run, settled, held, before)
        report = await settle_pass()
        in_run.append(report)
        settled = report if settled is None else merged(settled, report)
        if report.unavailable is not None:
            return Passes(batches, in_run, settled, settled.unknown_jobs, before)
        defer = True
        spent, maybe = money(batches, in_run, price)
        # sent back to the next pass: what this one deferred and what it held back (once
        # decided not billed, they are sent; the rest this run finished, or failed)
        again = frozenset(totals.deferred_jobs) | held
        used = Used(again, {**used.attempts, **totals.deferred_jobs}, spent + maybe)
        await replan()


def left_for_next_run(result: RunResult) -> RunResult:
    """A run that ran to its end but left jobs behind for safety is not a finished one:
    jobs held back (an earlier request of theirs may still be billed, and the history
    has no final word yet) and jobs whose answers were lost in the last pass, or before
    the history became unreadable (deferred: sending them again might pay twice). It
    says so as a stop (exit 3, resumable: the next run settles them first), so
    `stopped is None` keeps meaning every job ran."""
    if result.stopped is not None or not (result.held_back or result.not_run):
        return result
    parts = []
    if result.held_back:
        parts.append(f"{result.held_back:,} held back: an earlier request of theirs may "
                     "still be billed and the request history has no final word yet")  # fmt: skip
    if result.not_run:
        parts.append(f"{result.not_run:,} lost their answers after they were sent: the next "
                     "run asks the request history before paying for them again")  # fmt: skip
    jobs = result.held_back + result.not_run
    message = (f"{jobs:,} job{'s' if jobs != 1 else ''} left for the next run to settle "
               f"first ({'; '.join(parts)})")  # fmt: skip
    return replace(result, stopped=Stop(StopReason.UNSETTLED, message))


def combined(
    batches: list[BatchResult],
    settled: list[SettleReport],
    plan: Plan,
    out: Path | str,
    ledger_path: Path | str,
    price: float,
    held_before: frozenset[str] = frozenset(),
) -> RunResult:
    """One result for the passes of a run: what the first found done or failed before,
    what all of them did, what the last left; the money of attempts settled in the run
    moved from possibly billed (at `price`, as the runner counted it) to spent (at what
    the service charged, as the settling lines say), or to nothing."""
    first, last = batches[0].totals, batches[-1].totals
    failures: Counter[tuple[int | None, str]] = Counter()
    for batch in batches:
        failures.update(batch.totals.failures)
    decided = _decided(batches, settled, held_before)
    spent, possibly_billed = _money(batches, decided, price)
    not_run = last.not_run
    if len(settled) == len(batches):  # the history became unreadable after the last pass
        after = settled[-1]  # but its v2 polls may have decided some of what it deferred
        not_run -= len((after.recovered_jobs | after.failed_jobs) & last.deferred_jobs.keys())
    return RunResult(
        plan, out, ledger_path,
        succeeded=sum(b.totals.succeeded for b in batches) + decided.recovered,
        failed=sum(b.totals.failed for b in batches) + decided.failed,
        skipped_done=first.skipped_done,
        skipped_failed=first.skipped_failed,
        not_run=not_run,
        unwritten=sum(b.totals.unwritten for b in batches),
        spent=spent,
        possibly_billed=possibly_billed,
        requests=sum(b.totals.requests for b in batches),
        throttled=sum(b.totals.throttled for b in batches),
        failures=dict(failures),
        remaining_credits=next(
            (b.totals.remaining_credits for b in reversed(batches) if b.totals.remaining_credits),
            None,
        ),
        stopped=last.stopped,
        seconds=sum(b.seconds for b in batches),
        run_id=batches[0].run_id,
    )  # fmt: skip


@dataclass(frozen=True)
class _Decided:
    """What the settlements within a run decided of the attempts its passes deferred."""

    recovered: int = 0  # images downloaded
    failed: int = 0  # v2 requests found FAILED: their jobs failed for good
    decided: int = 0  # ambiguous attempts decided, billed or not (each held at the price)
    charged: float = 0.0  # what the billed ones cost, as their lines say


def _decided(
    batches: list[BatchResult],
    settled: list[SettleReport],
    held_before: frozenset[str] = frozenset(),
) -> _Decided:
    """Each settlement follows a pass: of what it decided, only the attempts this run's
    passes deferred are this run's money, whichever pass deferred them (one still
    unknown after a settlement is held from the next pass, and a later settlement
    decides it). A job held back from an earlier run (`held_before`) may be decided in
    it too: that run's money, as when it is settled before a run, but this run's job,
    counted once its image is downloaded (or its v2 request FAILED)."""
    recovered = decided = failed = 0
    charged = 0.0
    mine: set[str] = set()  # deferred by this run's passes, not decided yet
    earlier = set(held_before)  # held from an earlier run, not finished yet
    for batch, report in zip(batches, settled, strict=False):
        mine |= batch.totals.deferred_jobs.keys()
        finished = report.recovered_jobs | report.failed_jobs
        recovered += len(report.recovered_jobs & (mine | earlier))
        failed += len(report.failed_jobs & (mine | earlier))
        ours = [job for job in report.charged_jobs if job in mine]
        decided += len(ours)
        charged += sum(report.charged_jobs[job] for job in ours)
        mine &= report.unknown_jobs  # the rest were decided: counted here, once
        earlier -= finished
    return _Decided(recovered, failed, decided, charged)


def money(
    batches: list[BatchResult], settled: list[SettleReport], price: float
) -> tuple[float, float]:
    """(spent, possibly billed) of a run's passes so far: the money of attempts settled
    in the run moved from possibly billed (at `price`, as the runner counted it) to
    spent (at what the service charged), or to nothing."""
    return _money(batches, _decided(batches, settled), price)


def _money(batches: list[BatchResult], decided: _Decided, price: float) -> tuple[float, float]:
    spent = round(sum(b.totals.spent for b in batches) + decided.charged, 6)
    maybe = sum(b.totals.possibly_billed for b in batches) - decided.decided * price
    return spent, round(max(0.0, maybe), 6)
