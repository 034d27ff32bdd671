"""What the runner needs of a ledger writer: the local file's (`ledger.LedgerWriter`,
group-committed fsyncs) and an object store's (`store.segments.SegmentWriter`, one segment
object per commit) both satisfy it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Protocol

from batchgen.errors import LedgerError
from batchgen.ledger import WriteFailure


class LedgerSink(Protocol):
    path: Path  # the ledger, as output paths are made relative to (virtual on a store)
    tag: str

    @property
    def failed(self) -> LedgerError | None: ...

    async def note(self, record: dict[str, Any]) -> None:
        """A `started` or `retry` line, durable enough to send a request after it: in the
        page cache for a local file (it survives a killed process), in a segment object on
        a store. Raises LedgerError when it cannot be written (then nothing is sent)."""

    async def write(self, record: dict[str, Any]) -> None: ...

    def submit(
        self, record: dict[str, Any], *, output: tuple[str, bytes] | None = None
    ) -> asyncio.Future[WriteFailure | None]: ...

    async def settle(self, committed: asyncio.Future[WriteFailure | None]) -> None:
        """Wait as the money invariant needs after a `succeeded` line was submitted: a
        local writer until it is on disk; a store's not at all, since the worker's next
        request waits for its `started` line, in the same segment or a later one
        (commits are in order), so one segment carries both."""

    async def drain(self) -> None: ...
