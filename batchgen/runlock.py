"""The run lock: one `batchgen run` at a time per ledger, so overlapping runs never pay twice.

Two runs writing the same ledger at once (cron fires again while last night's run is still
going) would read the same resume state and send every job twice. So a run holds an
exclusive lock on the ledger it writes from before it reads any ledger state until its
last line is written; another run refuses at once (`LockedError`: exit 3, naming the
holder) or, with `--wait-lock`, polls until the lock frees. Shards write ledgers of their
own and so lock their own: they still run side by side. `plan` and `report` only read and
never take it.

Why `fcntl.flock` rather than "the lock file exists" or a pid check: the kernel holds the
lock for the open file and drops it when the process ends, however it ends (kill -9, the
OOM killer, a container torn down), so a crashed run never leaves a stale lock to clear by
hand, and nothing guesses whether a pid is alive (pids are reused, and mean nothing on
another host). The file beside the ledger, `ledger.jsonl.lock`, only says who holds the
lock (pid, host, start time in UTC) so a refusal can name them. Between machines sharing
a volume it holds as far as the filesystem passes flock on: Linux NFS clients send it to
the server as a whole-file lock.

The holder removes the file while it still holds the lock; a run that locked a file just
removed (it opened it before the removal) sees that the path no longer names it and
tries again, so two runs can never each hold a lock on a different file of the same name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from batchgen.errors import LedgerError, LockedError

SUFFIX: Final = ".lock"
POLL_S: Final = 0.2  # how often --wait-lock tries again
HOLDER_GRACE_S: Final = 1.0  # how long to wait for a new holder to write who it is


def refusal(what: object, holder: object, wait: float) -> LockedError:
    """What a run is told when the ledger `what` stays held (a lock or a store's lease)."""
    waited = f"waited {wait:g}s, " if wait > 0 else ""
    return LockedError(f"{what} is in use by {holder}; {waited}nothing sent")


def waiting_line(what: object, holder: object, wait: float) -> str:
    return f"{what} is in use by {holder}; waiting up to {wait:g}s for it"


def lock_path(ledger_path: Path) -> Path:
    """The lock file of a ledger: beside it, `ledger.jsonl.lock`."""
    return ledger_path.with_name(ledger_path.name + SUFFIX)


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lock, as its lock file says; None for what it does not say."""

    pid: int | None = None
    host: str | None = None
    since: str | None = None  # UTC, 2026-11-27T02:00:03Z

    def __str__(self) -> str:
        if self.pid is None:
            return "another batchgen run"
        words = [f"pid {self.pid}"]
        if self.host:
            words.append(f"on {self.host}")
        if self.since:
            words.append(f"since {_clock(self.since)}")
        return " ".join(words) + " (another batchgen run)"


def _clock(since: str) -> str:
    """02:00:03 UTC, with the date in front when it is not today's (UTC)."""
    try:
        when = datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return since
    today = datetime.now(UTC).date()
    return when.strftime("%H:%M:%S UTC" if when.date() == today else "%Y-%m-%d %H:%M:%S UTC")


@contextlib.contextmanager
def hold(
    ledger_path: Path, *, wait: float = 0.0, on_wait: Callable[[str], None] | None = None
) -> Iterator[Path]:
    """Hold the exclusive lock on `ledger_path` for the body; yields the lock file's path.

    Raises LockedError when another process holds it and still does after `wait` seconds
    (0: refuse at once); `on_wait` is told once, with a line to show, if it has to wait.
    Folders made for the lock file are removed again if nothing else was put in them."""
    path = lock_path(ledger_path)
    made = _missing_folders(path.parent)
    try:
        fd = _acquire(path, ledger_path, wait, on_wait)
        try:
            _write_holder(fd)
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # while still holding: see the module's docstring
            os.close(fd)  # releases the lock
    finally:
        for folder in made:  # deepest first; only the ones that are still empty
            with contextlib.suppress(OSError):
                folder.rmdir()


def _acquire(
    path: Path, ledger_path: Path, wait: float, on_wait: Callable[[str], None] | None
) -> int:
    deadline = time.monotonic() + wait
    told = False
    while True:
        fd = _open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
        except OSError as err:
            os.close(fd)
            raise LedgerError(f"{path}: cannot lock the ledger: {err.strerror}") from None
        else:
            if _names(path, fd):
                return fd
            os.close(fd)  # its holder removed it as we locked it: lock the new one
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise refusal(ledger_path, holder, wait)
        if on_wait is not None and not told:
            on_wait(waiting_line(ledger_path, holder, wait))
            told = True
        try:
            time.sleep(min(POLL_S, remaining))
        except KeyboardInterrupt:
            raise LockedError(
                f"{ledger_path} is in use by {holder}; stopped waiting (interrupted), nothing sent"
            ) from None


def _missing_folders(folder: Path) -> list[Path]:
    """The folders that do not exist yet on the way to `folder`, deepest first, made now."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        for made in reversed(missing):
            made.mkdir(exist_ok=True)
    except OSError as err:
        raise LedgerError(f"{err.filename}: cannot make the folder: {err.strerror}") from None
    return missing


def _open(path: Path) -> int:
    """Open (never truncate: a holder's details are in it) or create the lock file."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:  # a holder that made our folder removed it as it ended
        path.parent.mkdir(parents=True, exist_ok=True)
        return _open(path)
    except OSError as err:
        raise LedgerError(f"{path}: cannot open the lock file: {err.strerror}") from None


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _write_holder(fd: int) -> None:
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
    try:
        os.ftruncate(fd, 0)  # a crashed holder's details may still be in it
        os.pwrite(fd, json.dumps(line).encode() + b"\n", 0)
        os.fsync(fd)  # so a run on another machine sharing the volume can read it
    except OSError as err:
        raise LedgerError(f"cannot write the lock file: {err.strerror}") from None


def _read_holder(fd: int) -> Holder:
    """Who holds the lock; a holder that has just taken it gets a moment to say so."""
    deadline = time.monotonic() + HOLDER_GRACE_S
    while True:
        try:
            data = json.loads(os.pread(fd, 4096, 0))
            return Holder(int(data["pid"]), str(data.get("host") or ""), data.get("since"))
        except (ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return Holder()
            time.sleep(0.02)
