"""Putting a file on disk for good: temp file, fsync, rename, folder fsync.

The ledger's writer stages a batch's files and makes them durable with as few syncs
as the kernel allows (one syncfs for a batch on Linux); `write_atomic` does it for one
file. Temp files are named per ledger (`.NAME.TAG.part`), so the run after a killed one
removes exactly its own leftovers. `room_problem` is checked before a run's first
request, while nothing is paid for yet.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final


def write_atomic(path: Path, data: bytes, tag: str = "batchgen") -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = stage(str(path), data, tag)
    try:
        os.fsync(staged.fd)
    finally:
        os.close(staged.fd)
    os.replace(staged.tmp, staged.path)
    fsync_dir(str(path.parent))


PART_SUFFIX: Final = ".part"


def temp_name(path: str, tag: str) -> str:
    """`.NAME.TAG.part` beside `path`. One writer owns a tag at a time (the run holding
    its ledger's lock) and one job owns a path, so the name needs no randomness, and
    a later run of the same ledger can tell its own leftovers from a live shard's."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{tag}{PART_SUFFIX}")


def remove_stale_parts(out: str, tag: str) -> int:
    """Blocking: delete the temp files a killed run of this ledger left under `out`
    (the lock says none of this tag is being written now). Returns how many."""
    suffix = f".{tag}{PART_SUFFIX}"
    removed = 0
    for folder, _, names in os.walk(out):
        for name in names:
            if name.startswith(".") and name.endswith(suffix):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


PREFLIGHT_IMAGES: Final = 4  # a run must have room for its first few images ...
PREFLIGHT_IMAGE_BYTES: Final = 2 * 1024 * 1024  # ... each at most this (1536x1536 JPEG: ~1 MB)


def room_problem(out: Path, images: int) -> str | None:
    """Why `out` cannot take the first `images` images (not writable, too full), or None.

    Checked before the first request, so a machine problem is found while nothing is
    paid for yet; the writer still handles a disk that fills up later."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".batchgen-probe-{os.getpid()}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
        stat = os.statvfs(out)
    except OSError as err:
        return f"{out}: cannot write the output folder: {err.strerror}"
    free = stat.f_bavail * stat.f_frsize
    need = min(images, PREFLIGHT_IMAGES) * PREFLIGHT_IMAGE_BYTES
    if free < need:
        return (
            f"{out}: only {free / 1e6:.1f} MB free; the first {min(images, PREFLIGHT_IMAGES)} "
            f"images need about {need / 1e6:.0f} MB"
        )
    return None


@dataclass(slots=True)
class Staged:
    """A file written under its temp name, its descriptor still open until durable."""

    path: str
    tmp: str
    fd: int


def stage(path: str, data: bytes, tag: str) -> Staged:
    """Write `data` beside `path` under a temp name, not yet durable."""
    tmp = temp_name(path, tag)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Staged(path, tmp, fd)


def make_durable(staged: list[Staged]) -> None:
    """Blocking: one syncfs(2) for a batch (one journal commit instead of one per
    file: about 3x faster here for small images), or an fsync per file for a few
    files or where syncfs is missing (not Linux)."""
    if _syncfs is not None and len(staged) >= SYNCFS_MIN_FILES:
        _sync_filesystem(os.path.dirname(staged[0].path))
        return
    for item in staged:
        os.fsync(item.fd)


def close_staged(staged: list[Staged]) -> None:
    for item in staged:
        os.close(item.fd)


def publish(staged: list[Staged]) -> None:
    """Rename each durable temp file to its name: each appears whole or not at all."""
    for item in staged:
        os.replace(item.tmp, item.path)


def make_durable_with(folders: set[str], fd: int, same_disk: bool) -> None:
    """Blocking: make the renames in `folders` and the file open as `fd` (the ledger)
    durable, as one syncfs where they share a filesystem and are several, else an
    fsync of each folder and of the file."""
    if _syncfs is not None and same_disk and len(folders) >= SYNCFS_MIN_FILES:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return
    for folder in folders:
        fsync_dir(folder)
    os.fsync(fd)


SYNCFS_MIN_FILES: Final = 4


def _load_syncfs() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


def _sync_filesystem(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), folder)
    finally:
        os.close(fd)


def fsync_dir(folder: str | Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
