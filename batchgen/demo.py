"""`batchgen demo`: a real run of the demo manifest against the bundled emulator.

The emulator is served in-process on a free loopback port with a local demo key:
no key of yours, no network, no bill. Everything else is the real `run` path.
"""

from __future__ import annotations

import argparse
import asyncio

from batchgen import commands, runlock
from batchgen.batch import BatchConfig, BatchResult
from batchgen.emulator import EmulatorConfig, running_emulator


def run(args: argparse.Namespace) -> int:
    args.ledger = None
    args.retry_failed = False
    with runlock.hold(commands.written_ledger(None, args.out, None)):  # as `run` does
        return _run_locked(args)


def _run_locked(args: argparse.Namespace) -> int:
    prepared = commands.prepare(args)
    loaded, plan = prepared.manifest, prepared.plan
    commands.check_room(args.out, plan.to_run)
    config = EmulatorConfig(latency=args.latency, latency_jitter=0.3, credits=100.0)
    print(f"batchgen demo: {plan.jobs} jobs from {loaded.display}, ${plan.estimated_cost:.2f} "
          "at list price, against the bundled emulator (no key, no network, no bill)")  # fmt: skip

    async def go() -> tuple[BatchResult, BatchConfig, dict[str, object]]:
        async with running_emulator(config) as served:
            print(f"batchgen demo: emulator serving at {served.url}")
            batch = commands.batch_config(args, prepared, served.url, served.api_key)
            result = await commands.run_with_progress(batch, prepared, bar=not args.no_progress)
            return result, batch, served.stats.as_json()

    result, batch, stats = asyncio.run(go())
    code = commands.finish(args, batch, result, plan.jobs)
    print(f"  emulator    {stats['requests_total']} requests, billed {stats['billed_total']} "
          f"(${stats['spent']:.3f} pretend), credits left {stats['credits_left']}")  # fmt: skip
    print(f"  next        batchgen report {batch.out}   # the same summary, from the ledger alone")
    return code
