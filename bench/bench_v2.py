"""`--api v2`: polls per submitted image, at a scaled latency.

The model takes about 11 s an image; here everything is scaled by 0.1: the emulator takes
1.1 s (jitter 20%), and batchgen's first poll waits the scaled typical latency (1.1 s),
then every 1-2 s with jitter (the poll interval is not scaled, which only makes a poll
that misses cost more wall time, not more polls). Target: polls / images <= 3, every
image landed and charged once. Polls are the emulator's count of v2 status and result GETs.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from batchgen import api, grid, ledger, manifest
from batchgen.batch import BatchConfig, run_batch
from batchgen.runner import RunOptions
from bench.common import KEY, emulator, machine, scratch, verdict, write_manifest

SCALE = 0.1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--latency", type=float, default=api.TYPICAL_LATENCY_S * SCALE)
    args = parser.parse_args(argv)
    typical = api.TYPICAL_LATENCY_S * SCALE
    print(f"bench_v2: {args.jobs} jobs through the v2 queue, latency {args.latency:g}s "
          f"(jitter 20%), first poll at {typical:g}s, concurrency {args.concurrency}; "
          f"{machine()}")  # fmt: skip
    options = ("--latency", str(args.latency), "--latency-jitter", "0.2", "--image-scale", "0.01")
    with tempfile.TemporaryDirectory(dir=scratch()) as tmp, emulator(*options) as emu:
        m = write_manifest(Path(tmp), images=4, prompts=10, seeds=max(1, args.jobs // 40))
        loaded = manifest.load(m)
        out = Path(tmp) / "out"
        config = BatchConfig(
            manifest=loaded, out=out, ledger_path=out / ledger.DEFAULT_NAME, api_base=emu.url,
            api_key=KEY, options=RunOptions(concurrency=args.concurrency), api="v2",
            typical_latency=typical,
        )  # fmt: skip
        began = time.perf_counter()
        result = asyncio.run(
            run_batch(config, grid.expand(loaded), ledger.LedgerState(), handle_signals=False)
        )
        wall = time.perf_counter() - began
        stats = emu.stats()
    images = result.totals.succeeded
    polls = stats["polls"]
    ratio = polls / max(1, images)
    twice = sum(1 for count in stats["charges"].values() if count > 1)
    print(f"  images    : {images} in {wall:.1f}s, {stats['v2_submits']} submissions, "
          f"{stats['billed_total']} billed, {twice} charged twice")  # fmt: skip
    print(f"  polls     : {polls} = {ratio:.2f} per image (the result URL, polled directly)")
    return verdict(
        images == stats["v2_submits"] == stats["billed_total"] and twice == 0 and ratio <= 3,
        f"polls per image {ratio:.2f} <= 3, every image charged once",
    )


if __name__ == "__main__":
    raise SystemExit(main())
