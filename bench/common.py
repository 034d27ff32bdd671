"""Shared pieces of the benchmarks: a standalone emulator, manifests, batchgen runs.

The emulator always runs in its own process, so batchgen and the baseline it is
compared with each get a core of their own and meet the same server.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from PIL import Image

from batchgen import events, grid, ledger, manifest
from batchgen.batch import BatchConfig, BatchResult, run_batch
from batchgen.images import EncodedImages
from batchgen.library import DEFAULT_CONCURRENCY
from batchgen.progress import Progress
from batchgen.runner import RunOptions
from tests.processes import EmulatorProcess, serve_emulator

KEY = "bench-key"


def scratch() -> Path:
    """Where benchmarks write: a folder in the project, marked as a top of directory
    trees for ext4's Orlov allocator, so each run's folder lands in a fresh block group.

    Why: this machine's ext4 runs without a journal, and there a new inode skips
    every inode of its group deleted in the last 60 s (360 s while the inode table
    is dirty), one buffer lookup each. Right after a benchmark deleted its 10,000
    files, a create measured 0.6 ms of kernel CPU against 0.02 ms in a fresh
    group: enough to swamp what the benchmarks compare."""
    folder = Path(__file__).resolve().parent.parent / ".bench-scratch"
    folder.mkdir(exist_ok=True)
    _mark_top_directory(folder)
    return folder


_FS_IOC_GETFLAGS: Final = 0x80086601
_FS_IOC_SETFLAGS: Final = 0x40086602
_FS_TOPDIR_FL: Final = 0x00020000


def _mark_top_directory(folder: Path) -> None:
    """`chattr +T folder`, where the platform and filesystem allow; else nothing."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
        if not flags[0] & _FS_TOPDIR_FL:
            flags[0] |= _FS_TOPDIR_FL
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags)
    except OSError:
        pass
    finally:
        os.close(fd)


def machine() -> str:
    return f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}"


@contextmanager
def emulator(*options: str) -> Iterator[EmulatorProcess]:
    with serve_emulator(*options, key=KEY) as served:
        yield served


def tiny_images(folder: Path, count: int) -> None:
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (8, 8), (i * 20 % 256, 90, 160)).save(folder / "photos" / f"p{i}.png")


def write_manifest(folder: Path, *, images: int, prompts: int, seeds: int) -> Path:
    tiny_images(folder, images)
    body = {
        "output": "{image}/{prompt}-{seed}.{ext}",
        "grid": {
            "image_file": ["photos/"],
            "prompt": [f"prompt {i}" for i in range(prompts)],
            "seed": list(range(101, 101 + seeds)),
        },
    }
    path = folder / "bench.yaml"
    path.write_text(json.dumps(body))
    return path


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_batchgen(
    manifest_path: Path,
    out: Path,
    url: str,
    *,
    concurrency: int | None,
    rpm: float | None = None,
    images: EncodedImages | None = None,
    listener: events.Listener | None = None,
) -> tuple[BatchResult, float, float]:
    """(result, wall seconds, CPU seconds of this process) for one batchgen run.
    `concurrency` as `--concurrency`: None is the default (64, probing up from 2), a
    number is the user's (the run starts with that many in flight)."""
    loaded = manifest.load(manifest_path)
    state = ledger.load_state(ledger.ledgers_in(out))
    config = BatchConfig(
        manifest=loaded,
        out=out,
        ledger_path=out / ledger.DEFAULT_NAME,
        api_base=url,
        api_key=KEY,
        options=RunOptions(
            concurrency=concurrency or DEFAULT_CONCURRENCY, first_window=concurrency
        ),
        rpm=rpm,
    )
    jobs = grid.expand(loaded)
    with open(os.devnull, "w") as nowhere:  # the bar's work is done, its output dropped
        total = sum(1 for _ in grid.expand(loaded, check_paths=False))
        progress = Progress(bar=True, stream=nowhere, total=total)
        began, cpu = time.perf_counter(), cpu_seconds()
        try:

            def both(event: events.Event) -> None:
                progress(event)
                if listener is not None:
                    listener(event)

            result = await run_batch(
                config, jobs, state, on_event=both, handle_signals=False, images=images
            )
        finally:
            progress.close()
    return result, time.perf_counter() - began, cpu_seconds() - cpu


def verdict(ok: bool, text: str) -> int:
    print(f"{'PASS' if ok else 'FAIL'}: {text}")
    return 0 if ok else 1
