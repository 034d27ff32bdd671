"""`--out s3://`: 1,000 zero-latency jobs into an S3 bucket (moto's server, loopback) against
the same jobs into a local folder; and what a run asks of the store per image.

moto runs in a process of its own (`python -m moto.server`), so does the emulator, and so
does a counting proxy (`python -m tests.s3server proxy`) for the run whose requests are
counted; the timed store run talks to moto directly. Targets: every image lands, and
ledger segment PUTs stay under 0.2 per image at concurrency 8 (one PUT per image is the
floor: images are PUT one each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import batchgen
from bench.common import KEY, emulator, machine, run_batchgen, scratch, verdict, write_manifest
from tests.s3server import CREDENTIALS, make_bucket, objects, restored_environ

TARGET_SEGMENTS_PER_IMAGE = 0.2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def moto_process() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def proxy_process(upstream: str) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.s3server", "proxy", upstream],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)


def counts(proxy_url: str) -> dict[str, int]:
    with urllib.request.urlopen(proxy_url + "/_proxy/counts", timeout=10) as answer:
        data: dict[str, int] = json.loads(answer.read())
        return data


async def store_run(manifest: Path, url: str, api: str, concurrency: int) -> tuple[float, int]:
    began = time.perf_counter()
    result = await batchgen.run_async(
        manifest, out=url, api_base=api, api_key=KEY, concurrency=concurrency
    )
    return time.perf_counter() - began, result.succeeded


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000, help="a multiple of 100")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    jobs, concurrency = args.jobs, args.concurrency
    print(machine())
    print(f"bench_object_store: {jobs} jobs, zero latency, concurrency {concurrency}")
    code = 0
    with restored_environ(*CREDENTIALS, "AWS_ENDPOINT_URL", "AWS_MAX_ATTEMPTS"):
        os.environ.update(CREDENTIALS)
        os.environ["AWS_MAX_ATTEMPTS"] = "3"
        with (
            tempfile.TemporaryDirectory(dir=scratch()) as tmp,
            emulator("--image-scale", "0.01") as emu,
            moto_process() as moto,
        ):
            folder = Path(tmp)
            manifest = write_manifest(folder, images=10, prompts=10, seeds=jobs // 100)
            local, wall_local, _ = asyncio.run(
                run_batchgen(manifest, folder / "out", emu.url, concurrency=concurrency)
            )
            os.environ["AWS_ENDPOINT_URL"] = moto
            bucket = make_bucket(moto, "bench")
            wall_s3, landed = asyncio.run(store_run(manifest, "s3://bench/timed", emu.url,
                                                    concurrency))  # fmt: skip
            seen_at: dict[int, dict[str, int]] = {}
            for width in (concurrency, 2 * concurrency):
                with proxy_process(moto) as front:
                    os.environ["AWS_ENDPOINT_URL"] = front
                    _, counted = asyncio.run(store_run(manifest, f"s3://bench/counted-{width}",
                                                       emu.url, width))  # fmt: skip
                    seen_at[width] = counts(front)
            seen = seen_at[concurrency]
            stored = objects(moto, bucket, "timed/")
        images = sum(1 for key in stored if key.endswith(".png") or key.endswith(".jpg"))
        local_rate, s3_rate = local.totals.succeeded / wall_local, landed / wall_s3
        print(f"local folder: {local.totals.succeeded} images in {wall_local:.2f}s = "
              f"{local_rate:.0f} jobs/s")  # fmt: skip
        print(f"s3 (moto):    {landed} images in {wall_s3:.2f}s = {s3_rate:.0f} jobs/s "
              f"({s3_rate / local_rate:.2f}x the local folder)")  # fmt: skip
        segs = seen.get("PUT segment", 0)
        image_puts = seen.get("PUT", 0)
        total = sum(seen.values())
        print(f"requests for {counted} images: {json.dumps(seen, sort_keys=True)}")
        print(f"  per image: {image_puts / counted:.2f} image PUTs, {segs / counted:.3f} segment "
              f"PUTs, {total / counted:.3f} requests in all")  # fmt: skip
        wide = seen_at[2 * concurrency]
        print(f"  at concurrency {2 * concurrency}: {wide.get('PUT segment', 0) / jobs:.3f} segment "
              f"PUTs per image (each worker needs one segment a job, its succeeded line and "
              f"its next started one: the floor is 1/concurrency)")  # fmt: skip
        code |= verdict(images == jobs and landed == jobs and counted == jobs,
                        f"every image landed ({images} objects)")  # fmt: skip
        code |= verdict(
            segs / counted < TARGET_SEGMENTS_PER_IMAGE,
            f"{segs / counted:.3f} segment PUTs per image (target < {TARGET_SEGMENTS_PER_IMAGE})",
        )
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
