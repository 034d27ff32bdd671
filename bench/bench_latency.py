"""Target 1, latency-bound throughput: 400 jobs at 1.0 s each, concurrency 32.

The ideal is ceil(400 / 32) x 1.0 s = 13 s; batchgen must come within 10%. The
baseline is the vendor page's own sample, a sequential `requests` loop, on the
same emulator (timed over the first --sequential jobs: at 1 s each the whole 400
would take seven minutes); the ratio of jobs per second is printed (expect ~30x).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import tempfile
import time
from pathlib import Path

import requests

from batchgen import grid, manifest
from batchgen.images import EncodedImages, LocalImage
from bench.common import KEY, emulator, machine, run_batchgen, scratch, verdict, write_manifest


def vendor_loop(manifest_path: Path, url: str, count: int) -> tuple[int, float]:
    """The sample from Segmind's model page, one request after another."""
    loaded = manifest.load(manifest_path)
    images = EncodedImages()
    headers = {"x-api-key": KEY, "Content-Type": "application/json"}
    ok = 0
    began = time.perf_counter()
    for job in list(grid.expand(loaded))[:count]:
        image = job.params["image_file"]
        assert isinstance(image, LocalImage)
        data = {**job.params, "image_file": images.get(image).decode()}
        response = requests.post(f"{url}/{loaded.model}", headers=headers, json=data, timeout=60)
        ok += response.status_code == 200
    return ok, time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--sequential", type=int, default=20)
    args = parser.parse_args(argv)
    ideal = math.ceil(args.jobs / args.concurrency) * args.latency
    print(f"bench_latency: {args.jobs} jobs, latency {args.latency}s, concurrency "
          f"{args.concurrency}, no rate limit; {machine()}")  # fmt: skip
    options = ("--latency", str(args.latency), "--latency-jitter", "0", "--image-scale", "0.01")
    with tempfile.TemporaryDirectory(dir=scratch()) as tmp, emulator(*options) as emu:
        m = write_manifest(Path(tmp), images=4, prompts=10, seeds=args.jobs // 40)
        result, wall, _ = asyncio.run(
            run_batchgen(m, Path(tmp) / "out", emu.url, concurrency=args.concurrency)
        )
        seq_ok, seq_wall = vendor_loop(m, emu.url, args.sequential)
        stats = emu.stats()
    done = result.totals.succeeded
    speedup = (done / wall) / (seq_ok / seq_wall)
    print(f"  batchgen  : {done} images in {wall:.2f}s (ideal {ideal:.1f}s): "
          f"{wall / ideal:.3f}x the ideal, {done / wall:.1f} images/s")  # fmt: skip
    print(f"  sequential: {seq_ok} images in {seq_wall:.2f}s, {seq_ok / seq_wall:.2f} images/s "
          f"(the vendor sample's loop)")  # fmt: skip
    print(f"  speed-up  : {speedup:.1f}x; emulator saw {json.dumps(stats['by_status'])}")
    return verdict(done == args.jobs and wall <= ideal * 1.10,
                   f"wall {wall:.2f}s <= 1.10 x ideal {ideal:.1f}s")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
