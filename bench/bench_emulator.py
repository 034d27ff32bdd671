"""The emulator's own cost per request, so it is never the bottleneck of the others.

Served in its own process on loopback, zero latency, tiny images; a bare aiohttp
client sends N requests at a fixed concurrency. Prints requests/s and the
emulator's CPU milliseconds per request (from /proc); target: < 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import time

import aiohttp
from PIL import Image

from batchgen import api
from bench.common import KEY, emulator, machine, verdict


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(url: str, requests: int, concurrency: int) -> tuple[int, float]:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 120, 200)).save(buffer, "JPEG")
    image = base64.b64encode(buffer.getvalue()).decode()
    semaphore = asyncio.Semaphore(concurrency)
    headers = {"x-api-key": KEY}
    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def one(i: int) -> int:
            body = {"image_file": image, "prompt": f"prompt {i}", "seed": 100 + i}
            async with (
                semaphore,
                session.post(f"{url}/{api.MODEL}", json=body, headers=headers) as r,
            ):
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one(i) for i in range(requests)))
    return statuses.count(200), time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    print(f"bench_emulator: {args.requests} requests at {args.concurrency} concurrent, zero "
          f"latency, image scale 1/32; {machine()}")  # fmt: skip
    with emulator("--image-scale", "0.03125") as emu:
        before = cpu_seconds(emu.process.pid)
        ok, wall = asyncio.run(load(emu.url, args.requests, args.concurrency))
        used = cpu_seconds(emu.process.pid) - before
    per_request = 1000 * used / max(ok, 1)
    print(
        f"  {ok} ok in {wall:.2f}s = {ok / wall:,.0f} requests/s; emulator CPU {per_request:.2f} ms/request"
    )
    return verdict(ok == args.requests and per_request < 5.0,
                   f"emulator overhead {per_request:.2f} ms/request (< 5)")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
