"""What a store's ledgers say, for resuming and settling a run on an object store.

`StoreState` is resume state whose finished images are objects: a job is done when its
image object is there with the recorded size (one listing; a store has no cheap way to
hash it again). `StoreIO` is settlement's reads and writes on a store
(`LedgerIO`), and `settle_store` one settlement of a store run's ledger, under
its lease, as `passes.settle_first` settles a local one: the same engine, the same
lines, the recovered images PUT to the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import cast

from batchgen import events, ledger
from batchgen.errors import LedgerError
from batchgen.pacing import Clock, Sleep
from batchgen.settle.decision import HISTORY_LAG_S
from batchgen.settle.folder import settle_out
from batchgen.settle.ledger_io import LedgerIO
from batchgen.settle.passes import GOING_ON, until_decided
from batchgen.settle.report import SettleReport
from batchgen.settle.targets import Targets
from batchgen.store.ledgers import StoredLedger, read_ledgers
from batchgen.store.objects import Store
from batchgen.store.segments import SegmentWriter


@dataclass
class StoreState(ledger.LedgerState):
    """LedgerState whose finished images are objects: done = there, with its size."""

    objects: dict[str, int] = field(default_factory=dict)  # key -> size, one listing

    def is_done(self, job_id: str) -> bool:
        record = self.records.get(job_id)
        path = record.output_path if record is not None else None
        if record is None or record.status != "succeeded" or path is None:
            return False
        size = self.objects.get(PurePosixPath(path).as_posix())
        record.intact = size is not None and (record.size is None or size == record.size)
        return record.intact

    def exists(self, path: Path) -> bool:
        return PurePosixPath(path).as_posix() in self.objects


class StoreIO(LedgerIO):
    """Settlement's reads and writes on a store (`LedgerIO`): the ledgers read
    from their segments (again once this pass has written), what is done by them and
    one listing of the objects, and the lines in new segments of this run's ledger,
    whose lease the caller holds, each recovered image PUT before its line. No asset
    cache: `--upload-images` is for a local `--out` only."""

    def __init__(self, store: Store, name: str, writer: Callable[[], SegmentWriter]) -> None:
        self.store, self.name, self.make = store, name, writer
        self.listing: dict[str, int] = {}
        self._read: list[StoredLedger] | None = None

    async def ledgers(self, read: Sequence[Path], settle: Sequence[Path]) -> list[Path]:
        if self._read is None:
            self.listing = await self.store.listing(self.store.location.root)
            self._read = await read_ledgers(self.store, self.listing)
        return cast(list[Path], list(self._read))

    def state(self, paths: Sequence[Path]) -> ledger.LedgerState:
        state = StoreState(objects=self.listing)
        for path in paths:
            state.scan(path)
        return state

    def writer(self, path: Path) -> SegmentWriter:
        if path.name != self.name:
            raise LedgerError(f"{path}: not this run's ledger ({self.name}); left alone")
        self._read = None  # what this writes, the next step reads back
        return self.make()

    def assets(self, paths: Sequence[Path]) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class Settlement:
    """How a store run settles from the request history (`library.run_async`'s
    `reconcile`, `history_base`, `history_lag`; the v2 base where recorded ids are
    polled; its `sleep` and `clock` seams, real time when None)."""

    history_base: str
    lag: float = HISTORY_LAG_S
    queue_base: str | None = None
    sleep: Sleep | None = None
    clock: Clock | None = None


async def settle_store(
    store: Store,
    name: str,
    writer: Callable[[], SegmentWriter],
    targets: Targets,
    *,
    api_key: str,
    how: Settlement,
    emit: events.Listener,
    then: str = GOING_ON,
) -> SettleReport:
    """What earlier runs left ambiguous in this run's ledger on the store (the lease
    held), settled as on disk (`passes.until_decided`): read from its segments, with
    every other ledger under the prefix for what is done and which ids are claimed;
    settlement lines go in new segments, each recovered image one PUT before its line.
    Other shards' ledgers are only read: their own runs settle them, under their
    leases. `then`: what the run does when the history cannot be read."""
    pause = how.sleep or asyncio.sleep
    monotonic = how.clock or time.monotonic

    async def scan() -> SettleReport:
        io = StoreIO(store, name, writer)
        paths = await io.ledgers((), ())
        own = [path for path in paths if path.name == name]
        if not own:
            return SettleReport()
        return await settle_out(
            paths, api_key=api_key, history_base=how.history_base, lag=how.lag,
            targets=targets, queue_base=how.queue_base, sleep=pause, monotonic=monotonic,
            io=io, only=own,
        )  # fmt: skip

    return await until_decided(scan, how.lag, emit, pause, monotonic, then=then)
