"""The one writer of a ledger file: append-only, group-committed, torn-tail tolerant.

Lines are written by one writer task that group-commits: many lines, one fsync. A commit
starts as soon as the previous one is done, with whatever arrived meanwhile: workers wait
for their own image to be durable before they send again, so a busy pool fills each
commit by itself and an idle one pays no timer. A torn last line (a crash mid-write) is
cut off before the next append. The lines themselves are `schema`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from batchgen import durable
from batchgen.errors import LedgerError
from batchgen.ledger.commits import GroupCommit, Pending, WriteFailure, unwritten
from batchgen.ledger.schema import encode, envelope


def _cut_torn_tail(path: Path) -> None:
    """Drop a partial last line so the next append starts on a line of its own."""
    try:
        with path.open("rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            chunk = min(size, 1 << 20)
            handle.seek(size - chunk)
            tail = handle.read(chunk)
            cut = tail.rfind(b"\n")
            handle.truncate(size - chunk + cut + 1 if cut >= 0 else 0)
    except FileNotFoundError:
        return


class LedgerWriter(GroupCommit):
    """The one writer of a ledger file. `await write(record)` returns once the line
    is on disk; lines that arrive together share one fsync (group commit).

    `submit(record, output=(path, bytes))` also puts an output file in place first,
    in the same batch: every file of the batch is written, fsync'd and renamed,
    each folder fsync'd once, and only then are the lines appended. So a
    `succeeded` line never precedes its file, and a busy run pays one thread hop
    and a handful of fsyncs per batch instead of several per image. A file that
    cannot be written turns its line into an `unwritten` one (the image was paid
    for) and its future's result into the `WriteFailure`; a ledger that cannot be
    written fails every future with LedgerError, from then on."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.fsyncs = 0
        self.tag = path.name.removesuffix(".jsonl")  # names this ledger's temp files
        self._fd = -1
        self._folders: dict[str, int] = {}  # output folders known to exist: their device
        self._device = -1  # the ledger's
        self._dirty = False  # lines written by append_now and not yet fsync'd

    async def __aenter__(self) -> LedgerWriter:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _cut_torn_tail(self.path)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._device = os.fstat(self._fd).st_dev
        except OSError as err:
            raise LedgerError(f"{self.path}: cannot write the ledger: {err.strerror}") from None
        self._start("ledger-writer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()
        os.close(self._fd)

    def append_now(self, record: dict[str, Any]) -> None:
        """Write a line at once, without waiting for an fsync (the next group commit
        syncs it). For `started` and `retry` lines: once written they survive a killed
        process (they are in the kernel's page cache), which is the crash they are
        evidence for, and a request need not wait a disk round trip to be sent.
        Raises LedgerError when the line cannot be written: then nothing may be sent."""
        if self._failed is not None:
            raise self._failed
        try:
            _write_all(self._fd, encode(envelope(record)))
        except OSError as err:
            self._failed = LedgerError(f"{self.path}: cannot write the ledger: {err.strerror}")
            raise self._failed from None
        self._dirty = True

    async def note(self, record: dict[str, Any]) -> None:
        """`append_now`, as `ledger_sink.LedgerSink` has it (a store's writer awaits)."""
        self.append_now(record)

    async def settle(self, committed: asyncio.Future[WriteFailure | None]) -> None:
        """Until `committed` (a `submit`'s future) is on disk: see `ledger_sink`."""
        await asyncio.wait([committed])

    def _ledger_error(self, err: Exception) -> LedgerError:
        reason = err.strerror if isinstance(err, OSError) else err
        return LedgerError(f"{self.path}: cannot write the ledger: {reason}")

    async def _closed(self) -> None:
        if self._dirty and self._failed is None:  # started/retry lines since the last sync
            with contextlib.suppress(OSError):
                await asyncio.to_thread(os.fsync, self._fd)

    async def _commit(self, entries: list[Pending]) -> dict[Pending, WriteFailure]:
        """Files written, synced and renamed; then the lines appended; then one sync
        that makes both the renames and the lines durable.

        Two syncs a commit, not three: the folders' sync and the ledger's are one call
        (one syncfs when they share a filesystem). A power cut between the two could
        leave a `succeeded` line whose rename was lost; the resume then finds no file
        and runs the job again, so the bound on images paid twice still holds, while
        a rename never points at a file whose bytes are not on disk.

        Quick system calls that need no disk (create and write each temp file) run
        here on the event loop; everything after them, from the first sync to the
        last, is one call in a thread. Each hop back to a busy loop waits behind the
        answers queued there, and a worker waits for its commit before it sends again:
        one hop a commit instead of two measured ~1 ms less a commit at zero latency.
        (A thread that made every small call itself would wait for the GIL after each
        one while the loop is busy: measured at about 1.2 ms a file instead of 0.06.)"""
        failures: dict[Pending, WriteFailure] = {}
        staged = self._stage([entry for entry in entries if entry.output is not None], failures)
        lines = [None if entry in failures else encode(entry.record) for entry in entries]
        self._dirty = False  # the sync in _finish covers lines appended before this point
        await asyncio.to_thread(self._finish, entries, lines, staged, failures)
        self.fsyncs += 1
        return failures

    def _stage(
        self, entries: list[Pending], failures: dict[Pending, WriteFailure]
    ) -> list[tuple[Pending, durable.Staged]]:
        """Each entry's file written under its temp name (not yet durable); what
        fails goes into `failures`."""
        staged: list[tuple[Pending, durable.Staged]] = []
        for entry in entries:
            assert entry.output is not None
            path, content = entry.output
            try:
                folder = os.path.dirname(path)
                if folder not in self._folders:
                    os.makedirs(folder, exist_ok=True)
                    self._folders[folder] = os.stat(folder).st_dev
                staged.append((entry, durable.stage(path, content, self.tag)))
            except OSError as err:
                failures[entry] = WriteFailure(path, err)
        return staged

    def _finish(
        self,
        entries: list[Pending],
        lines: list[bytes | None],
        staged: list[tuple[Pending, durable.Staged]],
        failures: dict[Pending, WriteFailure],
    ) -> None:
        """Blocking, in a thread: sync the staged files, rename them, append the
        lines (an `unwritten` one for each file that failed) and sync the lines and
        the renames. Raises OSError when the ledger cannot be written."""
        folders = self._publish(staged, failures)
        data = b"".join(
            line if line is not None and entry not in failures
            else encode(unwritten(entry.record, failures[entry]))
            for entry, line in zip(entries, lines, strict=True)
        )  # fmt: skip
        _write_all(self._fd, data)
        same_disk = all(self._folders[folder] == self._device for folder in folders)
        durable.make_durable_with(folders, self._fd, same_disk)

    def _publish(
        self, staged: list[tuple[Pending, durable.Staged]], failures: dict[Pending, WriteFailure]
    ) -> set[str]:
        """Blocking: sync and rename the staged files; what fails goes into
        `failures`. Returns the folders whose renames are still to be made durable."""
        if not staged:
            return set()
        try:
            durable.make_durable([item for _, item in staged])
        except OSError:
            for entry, item in staged:  # which of them? each file's own fsync tells
                try:
                    os.fsync(item.fd)
                except OSError as err:
                    failures[entry] = WriteFailure(item.path, err)
        finally:
            durable.close_staged([item for _, item in staged])
        folders = set()
        for entry, item in staged:
            try:
                if entry in failures:
                    raise failures[entry].error
                os.replace(item.tmp, item.path)
                folders.add(os.path.dirname(item.path))
            except OSError as err:
                failures.setdefault(entry, WriteFailure(item.path, err))
                with contextlib.suppress(OSError):
                    os.unlink(item.tmp)
        return folders


def _write_all(fd: int, data: bytes) -> None:
    """One write() per call where the kernel allows: O_APPEND keeps lines whole."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
