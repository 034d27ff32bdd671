"""The group-commit loop both ledger writers share: the local file's (`writer.py`) and an
object store's (`store/segments.py`).

Lines are queued with `submit`; one task commits whatever has arrived as soon as the
previous commit is done (a busy pool fills each commit by itself; an idle one pays no
timer). A commit that fails fails its lines and every later one: a ledger that could
not be written once cannot be trusted to have the next line either. What a commit is
(files, syncs, one segment object) is the subclass's `_commit`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from batchgen.errors import LedgerError
from batchgen.ledger.schema import envelope
from batchgen.ledger.schema import unwritten as unwritten_line


@dataclass(frozen=True, slots=True)
class WriteFailure:
    """An output that could not be put in place (full disk, read-only folder…)."""

    path: str
    error: OSError

    def __str__(self) -> str:
        return f"{self.path}: {self.error.strerror or self.error}"


def unwritten(record: dict[str, Any], failure: WriteFailure) -> dict[str, Any]:
    """`schema.unwritten` for a file that could not be put in place."""
    return unwritten_line(record, str(failure))


@dataclass(eq=False, slots=True)
class Pending:
    """A line waiting for its group commit (and its file, if it has one)."""

    record: dict[str, Any]
    output: tuple[str, bytes] | None
    waiter: asyncio.Future[WriteFailure | None]


class GroupCommit:
    """`submit`, `write`, `drain` and the commit loop; subclasses say what a commit is."""

    def __init__(self) -> None:
        self._pending: list[Pending] = []
        self._last: asyncio.Future[WriteFailure | None] | None = None
        self._failed: LedgerError | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def failed(self) -> LedgerError | None:
        """Why the ledger can no longer be written, once that happened."""
        return self._failed

    async def write(self, record: dict[str, Any]) -> None:
        """Append a line and wait until it is durable. Raises LedgerError."""
        await asyncio.shield(self.submit(record))

    def submit(
        self, record: dict[str, Any], *, output: tuple[str, bytes] | None = None
    ) -> asyncio.Future[WriteFailure | None]:
        """Queue a line (and its output file) for the next group commit; the future
        is done once both are durable, with the WriteFailure if the file could not be
        written (its line then says `unwritten`)."""
        record = envelope(record)
        waiter: asyncio.Future[WriteFailure | None] = asyncio.get_running_loop().create_future()
        if self._failed is not None:  # a failed ledger stays failed: say so at once
            waiter.set_exception(self._failed)
            return waiter
        self._pending.append(Pending(record, output, waiter))
        self._last = waiter
        self._wake.set()
        return waiter

    async def drain(self) -> None:
        """Wait until everything submitted so far is durable (commits are in order)."""
        if self._last is not None and not self._last.done():
            await asyncio.wait([self._last])

    def _start(self, name: str) -> None:
        self._task = asyncio.create_task(self._commit_loop(), name=name)

    async def _stop(self) -> None:
        """Commit what is queued, then end the loop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _commit_loop(self) -> None:
        while True:
            if self._failed is not None and self._pending:
                self._fail(self._pending, self._failed)
                self._pending = []
            if not self._pending:
                if self._closing:
                    await self._closed()
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            await self._gather()
            entries, self._pending = self._pending, []
            try:
                failures = await self._commit(entries)
            except Exception as err:  # the one writer must not die and leave waiters hanging
                if self._failed is None:
                    self._failed = self._ledger_error(err)
                self._fail(entries, self._failed)
                continue
            for entry in entries:
                entry.waiter.set_result(failures.get(entry))

    @staticmethod
    def _fail(entries: list[Pending], error: LedgerError) -> None:
        for entry in entries:
            if not entry.waiter.done():
                entry.waiter.set_exception(error)

    # -- what a subclass says ------------------------------------------------------

    async def _commit(self, entries: list[Pending]) -> dict[Pending, WriteFailure]:
        """Make the entries' files and lines durable; the files that failed, with why."""
        raise NotImplementedError

    def _ledger_error(self, err: Exception) -> LedgerError:
        """The error every line fails with from now on, for a commit that raised `err`."""
        raise NotImplementedError

    async def _gather(self) -> None:
        """Before a commit takes what is queued (a store waits a moment under load)."""

    async def _closed(self) -> None:
        """Everything is committed and the writer is closing."""
