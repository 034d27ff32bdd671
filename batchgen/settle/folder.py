"""One settlement pass over an out folder's ledgers: those this process holds or can
lock are settled, the rest only read (a ledger another run holds is left alone); one
history session, the v2 step first (`queued`), then the history (`Settler`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from batchgen import runlock
from batchgen.errors import LedgerError, LockedError
from batchgen.history import History, HistoryUnavailable
from batchgen.settle.decision import HISTORY_LAG_S
from batchgen.settle.ledger_io import LedgerIO
from batchgen.settle.queued import QUEUE_WAIT_S
from batchgen.settle.report import SettleReport
from batchgen.settle.settler import Clock, Settler
from batchgen.settle.targets import Targets

log = logging.getLogger("batchgen")


@contextlib.contextmanager
def lockable(paths: Iterable[Path], held: Iterable[Path] = ()) -> Iterator[list[Path]]:
    """The ledgers among `paths` this process may append to: those in `held` (locked by
    the caller), and each other one whose run lock is free, held for the block. A ledger
    another run holds is left out (its attempts may be in flight right now)."""
    mine = {Path(p) for p in held}
    with contextlib.ExitStack() as stack:
        usable: list[Path] = []
        for path in paths:
            if path in mine:
                usable.append(path)
                continue
            try:
                stack.enter_context(runlock.hold(path))
            except (LockedError, LedgerError) as err:
                log.info("batchgen: %s", err)
                continue
            usable.append(path)
        yield usable


async def settle_out(
    paths: Sequence[Path],
    *,
    api_key: str,
    history_base: str | None = None,
    lag: float = HISTORY_LAG_S,
    held: Iterable[Path] = (),
    targets: Targets | None = None,
    clock: Clock = time.time,
    queue_base: str | None = None,
    queue_wait: float = QUEUE_WAIT_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    monotonic: Clock = time.monotonic,
    assets: Mapping[str, str] | None = None,
    io: LedgerIO | None = None,
    only: Sequence[Path] | None = None,
) -> SettleReport:
    """One settlement pass over the ledgers `paths` of an out folder: those this process
    holds or can lock are settled, the rest only read. With `queue_base` (the v2 base),
    recorded v2 request ids are polled first (`Settler.collect_queued`), every 1-2 s by
    `sleep` for up to `queue_wait` s by `monotonic` (the clock `sleep` moves; `clock` is
    the wall clock history rows are compared with). `assets`: see
    `settle_ledgers`. `io` and `only`: ledgers on an object store (`settle.store.StoreIO`),
    of which only those in `only` are settled (their leases the caller holds: a store
    has no run locks to take), the rest read."""

    async def settle(usable: Sequence[Path]) -> SettleReport:
        async with History(api_key=api_key, base=history_base) as history:
            settler = Settler(history, lag=lag, clock=clock, io=io)
            first = SettleReport()
            if queue_base is not None:
                first = await settler.collect_queued(
                    usable, paths, targets, queue_base, wait=queue_wait, sleep=sleep,
                    monotonic=monotonic,
                )  # fmt: skip
            try:
                report = await settler.settle_ledgers(usable, paths, targets, assets)
            except HistoryUnavailable as err:  # never into a run
                report = SettleReport(unavailable=str(err))
            return first.then(report)

    if only is not None:
        return await settle(only)
    with lockable(paths, held) as usable:
        skipped = tuple(str(p) for p in paths if p not in usable)
        report = await settle(usable)
    if skipped:
        report = replace(report, skipped_ledgers=skipped)
    return report
