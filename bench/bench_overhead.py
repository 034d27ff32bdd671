"""Target 2, overhead: batchgen's jobs/s against a bare aiohttp + Semaphore loop.

5,000 jobs, zero latency, tiny images, the same emulator process and concurrency
for both. The bare loop only POSTs and writes the bytes; batchgen keeps its
ledger (fsync'd), atomic writes, retries, pacing and a progress bar (drawn to
/dev/null). Five rounds, alternating which side goes first; the verdict is the
median ratio. Target: ratio >= 0.8.

A third side, the bare loop that also makes each image durable before its worker
sends again (temp file, fsync, rename, folder fsync), prices what the promise itself
costs at zero latency, apart from batchgen's own machinery: batchgen/durable is
printed beside the verdict (for information; no target).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
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
    manifest_path: Path, out: Path, url: str, concurrency: int, *, durable: bool = False
) -> tuple[int, float, float]:
    """The baseline: POST every job's body, write the answer; nothing else. `durable`:
    each answer also made durable before the worker's next request (temp file, fsync,
    rename, folder fsync, in a thread), the least a loop can do to keep the promise
    batchgen keeps (at most `concurrency` paid and not durable), without a ledger."""
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
            if durable:
                await asyncio.to_thread(_write_durably, out / f"{job_id}.jpg", data)
            else:
                (out / f"{job_id}.jpg").write_bytes(data)
            return response.status

        statuses = await asyncio.gather(*(one(j, b) for j, b in bodies))
    return statuses.count(200), time.perf_counter() - began, cpu_seconds() - cpu


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.part")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    images, prompts = 10, 10
    seeds = max(1, args.jobs // (images * prompts))
    print(f"bench_overhead: {images * prompts * seeds} jobs, zero latency, concurrency "
          f"{args.concurrency}, {args.rounds} rounds, sides alternating who goes first; "
          f"{machine()}")  # fmt: skip
    ratios: list[float] = []
    durable_ratios: list[float] = []
    complete = True
    with (
        tempfile.TemporaryDirectory(dir=scratch()) as tmp,
        emulator("--image-scale", "0.01") as emu,
    ):
        m = write_manifest(Path(tmp), images=images, prompts=prompts, seeds=seeds)
        for n in range(args.rounds):
            folder = Path(tmp) / f"round-{n}"
            rates: dict[str, float] = {}
            order = ("bare", "durable", "batchgen")
            for side in order if n % 2 == 0 else order[::-1]:
                # Each starts with nothing dirty in the page cache: batchgen's syncs would
                # otherwise also flush the files the bare loop leaves unsynced.
                os.sync()
                if side in ("bare", "durable"):
                    ok, wall, cpu = asyncio.run(
                        bare_loop(m, folder / side, emu.url, args.concurrency,
                                  durable=side == "durable")
                    )  # fmt: skip
                else:
                    result, wall, cpu = asyncio.run(
                        run_batchgen(m, folder / "bg", emu.url, concurrency=args.concurrency)
                    )
                    ok = result.totals.succeeded
                complete &= ok == images * prompts * seeds
                rates[side] = ok / wall
                print(f"  round {n + 1} {side:<9}: {ok} ok in {wall:.2f}s = "
                      f"{ok / wall:,.0f} jobs/s, {1000 * cpu / max(ok, 1):.2f} CPU ms/job")  # fmt: skip
            ratios.append(rates["batchgen"] / rates["bare"])
            durable_ratios.append(rates["batchgen"] / rates["durable"])
    ratio = statistics.median(ratios)
    spread = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"  batchgen/durable loop = {statistics.median(durable_ratios):.2f}x, median of rounds "
          f"({', '.join(f'{r:.2f}' for r in durable_ratios)}): the cost of the ledger, "
          "retries, pacing and the bar over the durability both pay")  # fmt: skip
    return verdict(
        ratio >= 0.8 and complete,
        f"batchgen/bare = {ratio:.2f}x, median of rounds ({spread}); target >= 0.8",
    )


if __name__ == "__main__":
    raise SystemExit(main())
