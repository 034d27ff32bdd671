"""Target 2, overhead: batchgen's jobs/s against a bare aiohttp + Semaphore loop.

5,000 jobs, zero latency, tiny images, the same emulator process and concurrency
for both. The bare loop only POSTs and writes the bytes; batchgen keeps its
ledger (fsync'd), atomic writes, retries, pacing and a progress bar (drawn to
/dev/null). Five rounds, alternating which side goes first; the verdict is the
median ratio. Target: ratio >= 0.8.

A third side, the bare loop that also keeps batchgen's promise (a worker sends again
only once its answer is durable) with the least machinery that can: group commits of
temp files, syncs, renames and a one-line-a-job ledger. durable/bare prices what the
promise itself costs at zero latency; batchgen/durable what batchgen's own work per
job costs on top (its ledger lines, metadata, retries, pacing, events, the bar). Both
are printed beside the verdict (for information; no target), and each side's CPU per
job: at zero latency on two cores shared with the emulator, CPU is what separates them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from batchgen import api, durable, grid, manifest
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
    """The baseline: POST every job's body, write the answer; nothing else.

    `durable`: the least a loop can do to keep the promise batchgen keeps (at most
    `concurrency` paid and not durable): each answer is written under a temp name and
    joins the next group commit (one task: sync the files, rename them, append one
    line each to a ledger, sync again, in a thread), and its worker sends again only
    once its group is done. No retries, pacing, metadata or progress."""
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
    commits = _GroupCommit(out / "ledger.jsonl")
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session,
        commits if durable else contextlib.nullcontext(commits),
    ):

        async def one(job_id: str, body: bytes) -> int:
            async with semaphore:
                async with session.post(
                    f"{url}/{loaded.model}", data=body, headers=headers
                ) as response:
                    data = await response.read()
                path = out / f"{job_id}.jpg"
                if durable:
                    await commits.put(str(path), data, b'{"job_id":"%s"}\n' % job_id.encode())
                else:
                    path.write_bytes(data)
            return response.status

        statuses = await asyncio.gather(*(one(j, b) for j, b in bodies))
    return statuses.count(200), time.perf_counter() - began, cpu_seconds() - cpu


class _GroupCommit:
    """The durable loop's writer: files staged by the workers, made durable in groups."""

    def __init__(self, ledger: Path) -> None:
        self._ledger = ledger
        self._fd = -1
        self._pending: list[tuple[durable.Staged, bytes, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _GroupCommit:
        self._fd = os.open(self._ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        os.close(self._fd)

    async def put(self, path: str, data: bytes, line: bytes) -> None:
        done = asyncio.get_running_loop().create_future()
        self._pending.append((durable.stage(path, data, "bench"), line, done))
        self._wake.set()
        await done

    async def _loop(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            group, self._pending = self._pending, []
            await asyncio.to_thread(self._commit, group)
            for _, _, done in group:
                done.set_result(None)

    def _commit(self, group: list[tuple[durable.Staged, bytes, asyncio.Future[None]]]) -> None:
        staged = [item for item, _, _ in group]
        durable.make_durable(staged)
        durable.close_staged(staged)
        durable.publish(staged)
        os.write(self._fd, b"".join(line for _, line, _ in group))
        folders = {os.path.dirname(item.path) for item in staged}
        durable.make_durable_with(folders, self._fd, same_disk=True)


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
    promise_ratios: list[float] = []
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
            promise_ratios.append(rates["durable"] / rates["bare"])
    ratio = statistics.median(ratios)
    spread = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"  durable loop/bare = {_median_of(promise_ratios)}: what the promise itself costs")
    print(f"  batchgen/durable loop = {_median_of(durable_ratios)}: what batchgen's own work per "
          "job costs on top of it")  # fmt: skip
    return verdict(
        ratio >= 0.8 and complete,
        f"batchgen/bare = {ratio:.2f}x, median of rounds ({spread}); target >= 0.8",
    )


def _median_of(ratios: list[float]) -> str:
    rounds = ", ".join(f"{r:.2f}" for r in ratios)
    return f"{statistics.median(ratios):.2f}x, median of rounds ({rounds})"


if __name__ == "__main__":
    raise SystemExit(main())
