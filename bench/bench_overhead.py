"""Target 2, overhead: batchgen's jobs/s against a bare aiohttp + Semaphore loop.

5,000 jobs, zero latency, tiny images, the same emulator process and concurrency
for both. The bare loop only POSTs and writes the bytes; batchgen keeps its
ledger (fsync'd), atomic writes, retries and pacing. Target: ratio >= 0.8.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import aiohttp

from batchgen import api, grid, manifest
from batchgen.images import EncodedImages, LocalImage
from bench.common import (
    KEY,
    cpu_seconds,
    emulator,
    machine,
    run_batchgen,
    scratch,
    verdict,
    write_manifest,
)


async def bare_loop(
    manifest_path: Path, out: Path, url: str, concurrency: int
) -> tuple[int, float, float]:
    """The baseline: POST every job's body, write the answer; nothing else."""
    loaded = manifest.load(manifest_path)
    images = EncodedImages()
    bodies = []
    for job in grid.expand(loaded):
        image = job.params["image_file"]
        assert isinstance(image, LocalImage)
        bodies.append((job.job_id, api.encode_request(job.params, b'"' + images.get(image) + b'"')))
    semaphore = asyncio.Semaphore(concurrency)
    out.mkdir(parents=True, exist_ok=True)
    headers = {"x-api-key": KEY, "Content-Type": "application/json"}
    began, cpu = time.perf_counter(), cpu_seconds()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def one(job_id: str, body: bytes) -> int:
            async with (
                semaphore,
                session.post(f"{url}/{loaded.model}", data=body, headers=headers) as response,
            ):
                data = await response.read()
            (out / f"{job_id}.jpg").write_bytes(data)
            return response.status

        statuses = await asyncio.gather(*(one(j, b) for j, b in bodies))
    return statuses.count(200), time.perf_counter() - began, cpu_seconds() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    images, prompts = 10, 10
    seeds = max(1, args.jobs // (images * prompts))
    print(f"bench_overhead: {images * prompts * seeds} jobs, zero latency, concurrency "
          f"{args.concurrency}; {machine()}")  # fmt: skip
    with (
        tempfile.TemporaryDirectory(dir=scratch()) as tmp,
        emulator("--image-scale", "0.01") as emu,
    ):
        m = write_manifest(Path(tmp), images=images, prompts=prompts, seeds=seeds)
        # Each starts with nothing dirty in the page cache: batchgen's syncs would
        # otherwise also flush the 5,000 files the bare loop leaves unsynced.
        os.sync()
        ok_bare, wall_bare, cpu_bare = asyncio.run(
            bare_loop(m, Path(tmp) / "bare", emu.url, args.concurrency)
        )
        os.sync()
        result, wall_bg, cpu_bg = asyncio.run(
            run_batchgen(m, Path(tmp) / "bg", emu.url, concurrency=args.concurrency)
        )
    jobs = result.totals.succeeded
    bare_rate, bg_rate = ok_bare / wall_bare, jobs / wall_bg
    print(f"  bare loop : {ok_bare} ok in {wall_bare:.2f}s = {bare_rate:,.0f} jobs/s, "
          f"{1000 * cpu_bare / ok_bare:.2f} CPU ms/job")  # fmt: skip
    print(f"  batchgen  : {jobs} ok in {wall_bg:.2f}s = {bg_rate:,.0f} jobs/s, "
          f"{1000 * cpu_bg / max(jobs, 1):.2f} CPU ms/job")  # fmt: skip
    ratio = bg_rate / bare_rate
    return verdict(
        ratio >= 0.8 and jobs == ok_bare, f"batchgen/bare = {ratio:.2f}x (target >= 0.8)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
