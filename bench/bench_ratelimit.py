"""Targets 3 and 4: rate-limit fidelity, and finding a limit nobody states.

3. The emulator allows 10 requests/s (token bucket, burst 2); batchgen runs with
   --rpm 600: achieved >= 95% of the limit, < 1% of requests answered 429; with
   and without Retry-After on the 429s.
4. No --rpm: hidden limits of 5/s and 20/s (no Retry-After) must be found:
   >= 85% of the limit with < 10% answered 429, over a 60 s run. And an in-flight
   cap of 10 (Ideogram's) with 32 workers: the pool settles near it instead of
   hammering (< 10% answered 429; >= 70% of the cap, as the rate control keeps the
   jittery in-flight count under the cap).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from bench.common import emulator, machine, run_batchgen, scratch, verdict, write_manifest


def measure(
    limit: float,
    seconds: float,
    *,
    rpm: float | None,
    options: tuple[str, ...],
    concurrency: int = 8,
) -> tuple[float, float, int]:
    """(achieved/limit, share of requests answered 429, requests) for one run."""
    jobs = round(limit * seconds)
    with (
        tempfile.TemporaryDirectory(dir=scratch()) as tmp,
        emulator(*options, "--image-scale", "0.01") as emu,
    ):
        m = write_manifest(Path(tmp), images=5, prompts=10, seeds=max(1, jobs // 50))
        result, wall, _ = asyncio.run(
            run_batchgen(m, Path(tmp) / "out", emu.url, concurrency=concurrency, rpm=rpm)
        )
        stats = emu.stats()
    requests = stats["requests_total"]
    share = stats["by_status"].get("429", 0) / max(requests, 1)
    return result.totals.succeeded / wall / limit, share, requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each run")
    args = parser.parse_args(argv)
    print(f"bench_ratelimit: runs of about {args.seconds:.0f}s; {machine()}")
    failures = 0
    latency = ("--latency", "0.2")
    for retry_after in (False, True):
        extra = ("--retry-after",) if retry_after else ()
        options = (*latency, "--rpm", "600", "--burst", "2", *extra)
        achieved, share, n = measure(10, args.seconds / 2, rpm=600, options=options)
        label = "with" if retry_after else "without"
        failures += verdict(achieved >= 0.95 and share < 0.01,
                            f"--rpm 600 vs a 10/s limit {label} Retry-After: {achieved:.1%} of "
                            f"the limit, {share:.2%} of {n} requests answered 429")  # fmt: skip
    for limit in (5, 20):
        options = (*latency, "--rpm", str(limit * 60), "--burst", "2")
        achieved, share, n = measure(limit, args.seconds, rpm=None, options=options)
        failures += verdict(achieved >= 0.85 and share < 0.10,
                            f"no --rpm, hidden limit {limit}/s: {achieved:.1%} of the limit, "
                            f"{share:.2%} of {n} requests answered 429")  # fmt: skip
    options = ("--latency", "1.0", "--max-in-flight", "10")
    achieved, share, n = measure(10, args.seconds, rpm=None, options=options, concurrency=32)
    text = f"{achieved:.1%} of 10/s, {share:.2%} of {n} requests answered 429"
    text = f"no --rpm, 32 workers vs an in-flight cap of 10 at 1 s each: {text}"
    failures += verdict(achieved >= 0.70 and share < 0.10, text)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
