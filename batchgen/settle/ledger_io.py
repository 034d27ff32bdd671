"""LedgerIO: the seam through which settlement reads and writes ledgers. This class is
the local files; an object store's objects (`settle.store.StoreIO`) override it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from batchgen import ledger, uploads
from batchgen.ledger_sink import LedgerSink


class LedgerIO:
    """Where settlement reads and writes: this class, the local files; an object store's
    objects (`settle.store.StoreIO`) override it.

    - `ledgers(read, settle)`: the ledgers to read, as of now (a local file is read
      where it lies; a store's are read again, as `store.StoredLedger`s, once lines
      were written since);
    - `state(paths)`: what is done, by the ledgers `paths` and the images they name;
    - `writer(path)`: the one writer of the ledger `path` (a `ledger_sink.LedgerSink`)
      for settlement lines, a recovered image put in place by it before its
      `succeeded` line (`submit(record, output=...)`: a file, or one PUT);
    - `assets(paths)`: url -> sha256 of the images uploaded from their out folders."""

    async def ledgers(self, read: Sequence[Path], settle: Sequence[Path]) -> list[Path]:
        return sorted({*read, *settle})

    def state(self, paths: Sequence[Path]) -> ledger.LedgerState:
        return ledger.load_state(paths)

    def writer(self, path: Path) -> AbstractAsyncContextManager[LedgerSink]:
        return ledger.LedgerWriter(path)

    def assets(self, paths: Sequence[Path]) -> Mapping[str, str]:
        return uploads.digests_by_url(p.parent for p in paths)
