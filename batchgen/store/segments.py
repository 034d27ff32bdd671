"""The ledger on an object store: immutable segment objects, one per group commit.

`SegmentWriter` is `ledger.LedgerWriter`'s twin for a store (both satisfy
`ledger_sink.LedgerSink`). A commit takes whatever lines and images arrived since the
last one: every image is PUT (one request each, atomic by nature, several at once),
then the lines go in one new object `ledger.jsonl.d/NNNNNN.jsonl`, created exclusively
(If-None-Match: *), so two writers can never both write segment N: a writer whose
segment number was taken has lost its lease to another run, and stops. A `succeeded`
line is in a segment only once its image object exists; a `started` line is in a
segment before its request is sent (`await note(...)`: the worker waits for the commit,
which it shares with every other worker's lines).

Under load, commits start at most every `interval` seconds (100 ms), so a pool of
workers shares each segment PUT: a worker does not wait for its `succeeded` line
(`settle` returns at once) but for its next `started` line, which lands in the same
segment, so each worker needs one segment a job and the pool shares it (about 0.14
segment PUTs per image at concurrency 8, `bench/bench_object_store.py`). An idle writer
commits at once; the wait costs a real run (11 s an image) about 1%.

A PUT that fails is tried again with backoff (the same segment number: if an earlier
try did land, the object read back is ours); one that keeps failing fails the ledger
(LedgerError), which stops the run, and an image that cannot be PUT turns its line into
`unwritten` (paid for, not stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any, Final

from batchgen.errors import LedgerError
from batchgen.ledger import Pending, WriteFailure, encode, unwritten
from batchgen.ledger.commits import GroupCommit
from batchgen.store.ledgers import covering, segment_name, segment_range
from batchgen.store.location import SEGMENTS_SUFFIX
from batchgen.store.objects import Conflict, Store

COMMIT_INTERVAL_S: Final = 0.1
PUT_ATTEMPTS: Final = 6
PUT_BACKOFF_S: Final = 0.25  # doubling: 0.25 + 0.5 + 1 + 2 + 4 s before giving up
KEEP_BYTES: Final = 32 << 20  # this run's segments kept for compaction, up to this much


class SegmentWriter(GroupCommit):
    """The one writer of a ledger on a store (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        name: str,
        out: Path,
        *,
        interval: float | None = None,
        attempts: int | None = None,
        backoff: float | None = None,
    ) -> None:
        super().__init__()
        location = store.location
        self.store = store
        self.name = name
        self.path = location.folder / name  # virtual: what the Runner computes paths from
        self.url = location.url(location.key(name))
        self.prefix = location.key(name + SEGMENTS_SUFFIX)
        self.tag = name.removesuffix(".jsonl")
        self.fsyncs = 0  # segments written, as LedgerWriter counts its syncs
        self.images = 0
        self.interval = COMMIT_INTERVAL_S if interval is None else interval
        self.attempts = PUT_ATTEMPTS if attempts is None else attempts
        self.backoff = PUT_BACKOFF_S if backoff is None else backoff
        self._root = str(out.resolve())  # as the Runner resolves its `out`
        self._next = 1
        self._kept: dict[str, bytes] = {}  # segment name -> its bytes, for compaction
        self._kept_bytes = 0
        self._started_at = -1e9

    async def __aenter__(self) -> SegmentWriter:
        try:
            names = await self.store.listing(self.prefix)
        except OSError as err:
            raise LedgerError(f"{self.url}: cannot list the ledger: {err}") from None
        ranges = [segment_range(key.rsplit("/", 1)[-1]) for key in names]
        self._next = max((last for found in ranges if found for last in found[1:]), default=0) + 1
        self._start("segment-writer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()

    def fence(self, error: LedgerError) -> None:
        """This writer may no longer write (its lease was lost): every line from now on,
        and every one waiting, fails with `error`."""
        if self._failed is None:
            self._failed = error
        self._wake.set()

    def append_now(self, record: dict[str, Any]) -> None:
        """Queue a line for the next commit without waiting (not durable until then)."""
        if self._failed is not None:
            raise self._failed
        self.submit(record)

    async def note(self, record: dict[str, Any]) -> None:
        """A `started` or `retry` line, in a segment on the store when this returns."""
        if self._failed is not None:
            raise self._failed
        await asyncio.shield(self.submit(record))

    async def settle(self, committed: asyncio.Future[WriteFailure | None]) -> None:
        """Nothing to wait for here: the worker's next `started` line waits for a commit
        at or after this one, so its image and line are on the store before it sends."""

    async def _gather(self) -> None:
        loop = asyncio.get_running_loop()
        pause = self._started_at + self.interval - loop.time()
        if pause > 0 and not self._closing:
            await asyncio.sleep(pause)  # under load: let more lines join this segment
        self._started_at = loop.time()

    def _ledger_error(self, err: Exception) -> LedgerError:
        reason = err if isinstance(err, LedgerError) else f"{self.url}: {err}"
        return LedgerError(f"cannot write the ledger: {reason}")

    async def _commit(self, entries: list[Pending]) -> dict[Pending, WriteFailure]:
        files = [entry for entry in entries if entry.output is not None]
        failures: dict[Pending, WriteFailure] = {}
        if files:
            results = await asyncio.gather(*(self._put_image(entry) for entry in files))
            failures = {
                entry: failure for entry, failure in zip(files, results, strict=True) if failure
            }
        if self._failed is not None:
            raise self._failed  # fenced meanwhile: no line of ours may follow another run's
        data = b"".join(
            encode(unwritten(entry.record, failures[entry]) if entry in failures else entry.record)
            for entry in entries
        )
        await self._put_segment(data)
        return failures

    def key_of(self, target: str) -> str:
        """The object key of an output path as the Runner makes it (under its `out`)."""
        relative = os.path.relpath(target, self._root)
        if relative.startswith(".."):
            raise ValueError(f"output path {target!r} escapes the output prefix")
        return self.store.location.key(relative.replace(os.sep, "/"))

    async def _put_image(self, entry: Pending) -> WriteFailure | None:
        assert entry.output is not None
        target, content = entry.output
        try:
            key = self.key_of(target)
        except ValueError as err:
            return WriteFailure(target, OSError(0, str(err)))
        url = self.store.location.url(key)
        for attempt in range(self.attempts):
            try:
                await self.store.put(key, content)
            except Exception as err:  # a store's errors are not all OSErrors (botocore's)
                if attempt + 1 >= self.attempts:
                    return WriteFailure(url, OSError(getattr(err, "errno", 0) or 0, _why(err)))
                await asyncio.sleep(self.backoff * 2**attempt)
                continue
            self.images += 1
            return None
        raise AssertionError("unreachable")

    async def _put_segment(self, data: bytes) -> None:
        number = self._next
        key = f"{self.prefix}/{segment_name(number)}"
        for attempt in range(self.attempts):
            try:
                await self.store.create(key, data)
            except Conflict:
                if attempt > 0 and await self._is_ours(key, data):
                    break  # an earlier try landed; only its answer was lost
                raise LedgerError(
                    f"{self.store.location.url(key)} was written by another run: this run "
                    "no longer holds the ledger's lease; stopping"
                ) from None
            except Exception as err:  # a store's errors are not all OSErrors (botocore's)
                if attempt + 1 >= self.attempts:
                    raise LedgerError(
                        f"{self.store.location.url(key)}: cannot write the ledger: {_why(err)}"
                    ) from None
                await asyncio.sleep(self.backoff * 2**attempt)
                continue
            break
        self._next = number + 1
        self.fsyncs += 1
        if self._kept_bytes + len(data) <= KEEP_BYTES:
            self._kept[segment_name(number)] = data
            self._kept_bytes += len(data)

    async def _is_ours(self, key: str, data: bytes) -> bool:
        with contextlib.suppress(Exception):
            return await self.store.get(key) == data
        return False

    async def compact(self) -> int:
        """Merge this ledger's segments into one object, written before the parts are
        deleted (readers take a merged object over the parts it covers). Only with the
        lease held. Returns how many objects it replaced (0: nothing to do)."""
        listing = await self.store.listing(self.prefix)
        names = [key.rsplit("/", 1)[-1] for key in listing]
        chosen = covering(names)
        if len(chosen) < 2:
            return 0
        missing = [f"{self.prefix}/{name}" for name, _, _ in chosen if name not in self._kept]
        fetched = dict(zip(missing, await self.store.get_many(missing), strict=True))
        data = b"".join(
            self._kept.get(name) or fetched[f"{self.prefix}/{name}"] for name, _, _ in chosen
        )
        merged = f"{self.prefix}/{segment_name(chosen[0][1], chosen[-1][2])}"
        await self.store.create(merged, data)
        covered = [f"{self.prefix}/{name}" for name in names if name != merged.rsplit("/", 1)[-1]]
        await self.store.remove(covered)
        return len(covered)


def _why(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err) or type(err).__name__
