"""One run, wired together: ledger writer, HTTP session, pacing, runner, signals.

The CLI and the demo both come through here, so the demo is a real run.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

from batchgen import durable, events, retry
from batchgen.api import TYPICAL_LATENCY_S
from batchgen.client import Client, make_session
from batchgen.errors import LedgerError
from batchgen.grid import Job
from batchgen.images import EncodedImages
from batchgen.ledger import LedgerState, LedgerWriter, schema
from batchgen.ledger_sink import LedgerSink
from batchgen.manifest import Manifest
from batchgen.pacing import Clock, Pacer, Sleep
from batchgen.queue_client import QueueClient
from batchgen.runner import Runner, RunOptions, RunTotals
from batchgen.stops import Stop, StopReason


@dataclass(frozen=True)
class BatchConfig:
    manifest: Manifest
    out: Path
    ledger_path: Path
    api_base: str
    api_key: str
    options: RunOptions
    rpm: float | None = None
    timeout: float = retry.REQUEST_TIMEOUT_S
    shard: str | None = None
    api: str = "v1"  # "v2": the queue (submit, poll, download; batchgen/queue_client.py)
    typical_latency: float = TYPICAL_LATENCY_S  # v2: when a request is first polled
    writer: Callable[[], AbstractAsyncContextManager[LedgerSink]] | None = None  # a store's


@dataclass
class BatchResult:
    totals: RunTotals
    seconds: float
    run_id: str


async def run_batch(
    config: BatchConfig,
    jobs: Iterable[Job],
    state: LedgerState,
    *,
    on_event: events.Listener = events.ignore,
    handle_signals: bool = True,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
    images: EncodedImages | None = None,
    to_run: int | None = None,
) -> BatchResult:
    """Run the jobs; the first SIGINT/SIGTERM stops dispatching and drains, a second
    one aborts the requests in flight. Either way the ledger is flushed. `to_run`, the
    plan's count of jobs to run, lets an aborted run say how many it left without
    reading the rest of the jobs."""
    run_id = uuid.uuid4().hex
    began = time.monotonic()
    async with (
        config.writer() if config.writer else LedgerWriter(config.ledger_path) as ledger,
        make_session(config.options.concurrency, timeout=config.timeout) as session,
    ):
        if config.ledger_path in state.cut and not config.writer:  # killed: temp files stay
            await asyncio.to_thread(durable.remove_stale_parts, str(config.out), ledger.tag)
        await ledger.write(_run_line(config, run_id))
        client = (
            QueueClient(session, api_base=config.api_base, api_key=config.api_key,
                        typical_latency=config.typical_latency, sleep=sleep, clock=clock)
            if config.api == "v2"
            else Client(session, api_base=config.api_base, api_key=config.api_key)
        )  # fmt: skip
        runner = Runner(
            model=config.manifest.model,
            price=config.manifest.price,
            client=client,
            ledger=ledger,
            state=state,
            out=config.out,
            options=config.options,
            pacer=Pacer(
                config.rpm,
                sleep=sleep,
                clock=clock,
                max_in_flight=config.options.concurrency,
                first_window=config.options.first_window,
            ),
            on_event=on_event,
            sleep=sleep,
            images=images,
            to_run=to_run,
        )
        with _signals(runner, enabled=handle_signals):
            try:
                await runner.run(jobs)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.uncancel() > 0:
                    raise
                runner.totals.stopped = Stop(
                    StopReason.ABORTED, "aborted by a second signal; requests in flight were cut"
                )
                await runner.drain()  # what was answered is still written and counted
                runner.settle()
            finally:
                await client.aclose()
        totals = runner.totals
        stopped = totals.stopped.message if totals.stopped else None
        try:
            await ledger.write(
                schema.run_end(run_id, stopped=stopped, succeeded=totals.succeeded,
                               failed=totals.failed, spent=round(totals.spent, 6))
            )  # fmt: skip
        except LedgerError as err:  # the summary still tells what was paid
            totals.stopped = totals.stopped or Stop(StopReason.WRITE_FAILURE, str(err))
    return BatchResult(totals, time.monotonic() - began, run_id)


def _run_line(config: BatchConfig, run_id: str) -> dict[str, object]:
    options = config.options
    return schema.run(
        run_id,
        manifest=config.manifest.display,
        manifest_sha256=config.manifest.digest,
        model=config.manifest.model,
        price=config.manifest.price,
        options={
            "api_base": config.api_base,  # never the key
            "api": config.api,
            "concurrency": options.concurrency,
            "rpm": config.rpm,
            "max_cost": options.max_cost,
            "max_attempts": options.max_attempts,
            "retry_failed": options.retry_failed,
            "outage_limit": options.outage_limit,
            "timeout": config.timeout,
            "shard": config.shard,
        },
    )


class _signals:
    """Install the two-step SIGINT/SIGTERM handling for the duration of a run."""

    def __init__(self, runner: Runner, *, enabled: bool) -> None:
        self.runner, self.enabled, self.count = runner, enabled, 0
        self.task = asyncio.current_task()

    def __enter__(self) -> None:
        if self.enabled:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self.count += 1
        if self.count == 1:
            self.runner.request_stop(StopReason.SIGNAL, f"interrupted by {sig.name}")
        elif self.task is not None:
            self.task.cancel()
