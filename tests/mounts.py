"""Real filesystem conditions for tests: a tiny tmpfs that fills up (ENOSPC) and a
read-only folder (EROFS).

Both are real mounts, so they need root (or CAP_SYS_ADMIN). As root, `chmod a-w` is
no test at all (root writes anyway); a read-only bind mount is refused by the kernel
for everyone. Without the privilege, or where mount(8) is refused (an unprivileged
container), the calling test is skipped with a message that says so.

    with small_tmpfs(tmp_path / "disk", size="2m") as disk: ...   # ENOSPC at ~2 MB
    with read_only(src, tmp_path / "ro") as ro: ...                # EROFS on any write
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _need_mount(what: str) -> str:
    if os.name != "posix" or not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip(f"REAL-MOUNT TEST SKIPPED: {what} needs root to mount(8); run as root")
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip(f"REAL-MOUNT TEST SKIPPED: {what} needs mount(8), which is not installed")
    return mount


def _mount(what: str, args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(
            f"REAL-MOUNT TEST SKIPPED: {what}: `{' '.join(args)}` failed "
            f"(exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
        )


def _unmount(target: Path) -> None:
    done = subprocess.run(["umount", str(target)], capture_output=True, text=True)
    if done.returncode != 0:  # busy (a file still open): detach now, freed when closed
        subprocess.run(["umount", "-l", str(target)], capture_output=True, text=True, check=True)


@contextmanager
def small_tmpfs(target: Path, *, size: str = "2m") -> Iterator[Path]:
    """A real tmpfs of `size` mounted at `target` (created if missing): writes past it
    fail with ENOSPC. Unmounted on the way out, whatever happened."""
    what = f"a {size} tmpfs at {target}"
    mount = _need_mount(what)
    target.mkdir(parents=True, exist_ok=True)
    _mount(what, [mount, "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(target)])
    try:
        yield target
    finally:
        _unmount(target)


@contextmanager
def read_only(source: Path, target: Path) -> Iterator[Path]:
    """`source` seen read-only at `target` (a bind mount): reads work, any write, create,
    rename or delete fails with EROFS, for root too. Unmounted on the way out."""
    what = f"a read-only bind mount of {source} at {target}"
    mount = _need_mount(what)
    target.mkdir(parents=True, exist_ok=True)
    _mount(what, [mount, "-o", "bind,ro", str(source), str(target)])
    try:
        if not os.statvfs(target).f_flag & os.ST_RDONLY:
            # an old mount(8) makes the bind first and ignores ro: remount it read-only
            _mount(what, [mount, "-o", "remount,bind,ro", str(target)])
        if not os.statvfs(target).f_flag & os.ST_RDONLY:
            pytest.skip(f"REAL-MOUNT TEST SKIPPED: {what} stayed writable")
        yield target
    finally:
        _unmount(target)
