"""`make bench`: every benchmark in one run; non-zero if any target is missed.

Each script prints its machine, its figures and its ratios, and can be run alone:
`python -m bench.bench_latency --help`.
"""

from __future__ import annotations

import importlib
import sys
import time

SCRIPTS = (
    "bench.bench_emulator",  # the emulator must not be the bottleneck of the others
    "bench.bench_latency",  # target 1
    "bench.bench_overhead",  # target 2
    "bench.bench_ratelimit",  # targets 3 and 4
    "bench.bench_operating_point",  # the key's limit at the real operating point, untuned
    "bench.bench_scale",  # target 5
    "bench.bench_images",  # target 6
    "bench.bench_settlement",  # settlement: nothing paid twice on a night of billed 504s
    "bench.bench_v2",  # --api v2: polls per image
    "bench.bench_upload",  # target 7
    "bench.bench_object_store",  # --out s3://: throughput and requests per image
)


def main() -> int:
    failed = []
    for name in SCRIPTS:
        began = time.perf_counter()
        print(f"== {name}", flush=True)
        code = importlib.import_module(name).main([])
        print(
            f"== {name}: {'ok' if code == 0 else 'MISSED'} ({time.perf_counter() - began:.0f}s)\n"
        )
        if code:
            failed.append(name)
    print("all targets met" if not failed else f"targets missed in: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
