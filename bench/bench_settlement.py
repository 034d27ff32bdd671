"""Settlement: a night with 20% of answers lost after billing, with and without it.

The same manifest, the same seeded emulator faults (a 504 after the work was done and
billed, on 15% of requests; a 200 cut off halfway, on 5% of the rest), run twice side by side: once with settlement from the
request history (the default), once with `reconcile=False` (what every batch client
does: send again). Printed: images paid twice, history calls per ambiguous request
(target <= 1, amortised), and whether the report's money equals the emulator's.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections import Counter
from pathlib import Path

import batchgen
from bench.common import KEY, emulator, machine, scratch, verdict, write_manifest
from tests.runs import job_fingerprints


async def night(m: Path, out: Path, url: str, *, reconcile: bool) -> batchgen.RunResult:
    return await batchgen.run_async(
        m, out=out, api_base=url, api_key=KEY, concurrency=8, reconcile=reconcile
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args(argv)
    images, prompts = 10, 4
    seeds = max(1, args.jobs // (images * prompts))
    print(f"bench_settlement: {images * prompts * seeds} jobs, 15% billed 504s, 5% of 200s cut "
          f"off, latency 0.2 s; {machine()}")  # fmt: skip
    rows = {}
    with tempfile.TemporaryDirectory(dir=scratch()) as tmp:
        m = write_manifest(Path(tmp), images=images, prompts=prompts, seeds=seeds)
        fingerprints = job_fingerprints(m)
        for reconcile in (True, False):
            faults = ("--fail-504", "0.15", "--billed-504-share", "1", "--fail-cut", "0.05",
                      "--seed", "7")  # fmt: skip
            with emulator("--latency", "0.2", "--image-scale", "0.05", *faults) as emu:
                out = Path(tmp) / f"out-{reconcile}"
                result = asyncio.run(night(m, out, emu.url, reconcile=reconcile))
                stats = emu.stats()
            charges = Counter(stats["charges"].get(fp, 0) for fp in fingerprints.values())
            lost = stats["by_status"].get("504", 0) + stats["cut"]
            report = batchgen.report(out)
            rows[reconcile] = {
                "lost": lost,
                "paid_twice": sum(n - 1 for n in stats["charges"].values() if n > 1),
                "history_calls": stats.get("history_calls", 0),
                "money_equal": round(report.spent, 6) == round(stats["spent"], 6),
                "spent": report.spent,
                "charged": stats["spent"],
                "succeeded": result.succeeded,
                "uncharged": charges.get(0, 0),
            }
    for reconcile, row in rows.items():
        side = "settlement on " if reconcile else "settlement off"
        print(f"  {side}: {row['lost']} answers lost after billing, {row['paid_twice']} images "
              f"paid twice, {row['history_calls']} history calls, report ${row['spent']:.3f} vs "
              f"charged ${row['charged']:.3f}, {row['succeeded']} images")  # fmt: skip
    on = rows[True]
    per_job = on["history_calls"] / max(on["lost"], 1)
    print(
        f"  history calls per ambiguous request: {per_job:.2f}; images paid twice "
        f"{rows[True]['paid_twice']} with settlement vs {rows[False]['paid_twice']} without"
    )
    return verdict(
        on["paid_twice"] == 0 and on["money_equal"] and per_job <= 1.0 and on["uncharged"] == 0,
        f"paid twice 0 (was {rows[False]['paid_twice']}), money equal, {per_job:.2f} history "
        "calls per ambiguous request; target <= 1",
    )


if __name__ == "__main__":
    raise SystemExit(main())
