"""Running real batches against the bundled emulator, in-process, for tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import batchgen
from batchgen import api, grid, ledger, manifest
from batchgen.batch import BatchConfig, BatchResult, run_batch
from batchgen.emulator import EmulatorConfig, RunningEmulator, fingerprint, running_emulator
from batchgen.grid import Job
from batchgen.images import EncodedImages, LocalImage
from batchgen.runner import RunOptions
from tests.helpers import make_image, write


@dataclass
class FakeSleep:
    """Records every pause and moves a virtual clock instead of waiting: backoff tests
    never really sleep."""

    pauses: list[float] = field(default_factory=list)
    now: float = 0.0

    async def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    def clock(self) -> float:
        return self.now


def make_project(root: Path, *, images: int = 3, prompts: int = 2, seeds: int = 2) -> Path:
    for i in range(images):
        make_image(root / "photos" / f"p{i}.jpg", colour=i * 40)
    prompt_list = ", ".join(f'"prompt {i}"' for i in range(prompts))
    seed_list = ", ".join(str(101 + i) for i in range(seeds))
    return write(
        root / "m.yaml",
        f"""
        params: {{resolution: RESOLUTION_1024_1024}}
        grid:
          image_file: [photos/]
          prompt: [{prompt_list}]
          seed: [{seed_list}]
        """,
    )


@asynccontextmanager
async def emulated(**overrides: Any) -> AsyncIterator[RunningEmulator]:
    config = EmulatorConfig(**{"image_scale": 1 / 32, **overrides})
    async with running_emulator(config) as served:
        yield served


async def run(
    manifest_path: Path,
    served: RunningEmulator,
    out: Path,
    *,
    key: str | None = None,
    sleep: FakeSleep | None = None,
    **options: Any,
) -> batchgen.RunResult:
    """A whole run through the library, as a user's code would make it."""
    seams: dict[str, Any] = {"sleep": sleep, "clock": sleep.clock} if sleep is not None else {}
    return await batchgen.run_async(
        manifest_path, out=out, api_base=served.url, api_key=key or served.api_key,
        **options, **seams,
    )  # fmt: skip


async def run_jobs(
    manifest_path: Path, served: RunningEmulator, out: Path, jobs: list[Job]
) -> BatchResult:
    """The engine alone on jobs made by hand (what no manifest can make: a path that
    escapes --out, to test the writer's own last line of defence)."""
    config = BatchConfig(
        manifest=manifest.load(manifest_path),
        out=out,
        ledger_path=out / ledger.DEFAULT_NAME,
        api_base=served.url,
        api_key=served.api_key,
        options=RunOptions(),
    )
    return await run_batch(config, jobs, ledger.LedgerState(), handle_signals=False)


def lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / ledger.DEFAULT_NAME).read_text().splitlines()]


def job_fingerprints(manifest_path: Path) -> dict[str, str]:
    """job_id -> the fingerprint under which the emulator charges that job's request."""
    loaded = manifest.load(manifest_path)
    cache = EncodedImages()
    result = {}
    for job in grid.expand(loaded):
        image = job.params["image_file"]
        image_json = (
            b'"' + cache.get(image) + b'"'
            if isinstance(image, LocalImage)
            else json.dumps(image).encode()
        )
        body = json.loads(api.encode_request(job.params, image_json))
        result[job.job_id] = fingerprint(body)
    return result
