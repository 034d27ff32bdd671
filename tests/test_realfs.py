"""The real-filesystem helpers do what they say: a slow fsync, a full disk, a read-only one."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mounts import read_only, small_tmpfs
from tests.slowdisk import slow_disk_env, slow_fsync_library

TIMED_SYNCS = r"""
import ctypes, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"x")
libc = ctypes.CDLL(None, use_errno=True)   # as batchgen.durable reaches syncfs
for name, call in (("fsync", os.fsync), ("fdatasync", os.fdatasync),
                   ("syncfs", lambda fd: libc.syncfs(fd))):
    began = time.perf_counter()
    assert call(fd) in (None, 0), name
    print(name, time.perf_counter() - began)
os.close(fd)
"""


def timed_syncs(tmp_path: Path, env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", TIMED_SYNCS, str(tmp_path / "f")],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return {name: float(seconds) for name, seconds in map(str.split, done.stdout.splitlines())}


def test_the_shim_delays_every_sync_call_of_a_real_process(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    library = slow_fsync_library(tmp_path_factory)
    slow = timed_syncs(tmp_path, slow_disk_env(library, delay_ms=200))
    assert set(slow) == {"fsync", "fdatasync", "syncfs"}
    assert all(seconds >= 0.2 for seconds in slow.values()), slow


def test_a_small_tmpfs_fills_up_with_enospc_at_its_size(tmp_path: Path) -> None:
    target = tmp_path / "disk"
    with small_tmpfs(target, size="2m") as disk:
        written = 0
        chunk = b"\0" * 65536
        with pytest.raises(OSError) as full, (disk / "big").open("wb", buffering=0) as handle:
            while written < 8 << 20:
                written += handle.write(chunk)
        assert full.value.errno == errno.ENOSPC
        assert 1 << 20 < written <= 2 << 20, written
    assert not os.path.ismount(target)  # unmounted: back to the plain folder
    assert list(target.iterdir()) == []


def test_a_read_only_mount_refuses_root_with_erofs(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "kept.txt").write_text("hello")
    with read_only(source, tmp_path / "ro") as ro:
        assert (ro / "kept.txt").read_text() == "hello"  # reading works
        for attempt in (
            lambda: (ro / "new.txt").write_text("x"),
            lambda: (ro / "kept.txt").write_text("x"),
            lambda: (ro / "sub").mkdir(),
            lambda: (ro / "kept.txt").unlink(),
        ):
            with pytest.raises(OSError) as refused:
                attempt()
            assert refused.value.errno == errno.EROFS
    assert not os.path.ismount(tmp_path / "ro")
    (source / "new.txt").write_text("x")  # the source itself stayed writable
