"""Shared pieces of the benchmarks: a standalone emulator, manifests, batchgen runs.

The emulator always runs in its own process, so batchgen and the baseline it is
compared with each get a core of their own and meet the same server.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from batchgen import grid, ledger, manifest
from batchgen.batch import BatchConfig, BatchResult, run_batch
from batchgen.emulator_serve import EmulatorProcess, emulator_process
from batchgen.images import EncodedImages
from batchgen.runner import RunOptions

KEY = "bench-key"


def scratch() -> Path:
    """Where benchmarks write: a folder in the project, not /tmp, whose file creation
    was measured at ~0.7 ms a file on this machine against ~0.06 ms here."""
    folder = Path(__file__).resolve().parent.parent / ".bench-scratch"
    folder.mkdir(exist_ok=True)
    return folder


def machine() -> str:
    return f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}"


@contextmanager
def emulator(*options: str) -> Iterator[EmulatorProcess]:
    with emulator_process(*options, key=KEY) as served:
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
    concurrency: int,
    rpm: float | None = None,
    images: EncodedImages | None = None,
) -> tuple[BatchResult, float, float]:
    """(result, wall seconds, CPU seconds of this process) for one batchgen run."""
    loaded = manifest.load(manifest_path)
    state = ledger.load_state(ledger.ledgers_in(out))
    config = BatchConfig(
        manifest=loaded,
        out=out,
        ledger_path=out / ledger.DEFAULT_NAME,
        api_base=url,
        api_key=KEY,
        options=RunOptions(concurrency=concurrency),
        rpm=rpm,
    )
    began, cpu = time.perf_counter(), cpu_seconds()
    result = await run_batch(
        config, grid.expand(loaded), state, handle_signals=False, images=images
    )
    return result, time.perf_counter() - began, cpu_seconds() - cpu


def verdict(ok: bool, text: str) -> int:
    print(f"{'PASS' if ok else 'FAIL'}: {text}")
    return 0 if ok else 1
