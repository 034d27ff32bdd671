"""The scheduler: a fixed pool of workers fed from the lazy job stream.

One producer walks the jobs (skipping what the ledger says is done) into a
bounded queue, so memory stays flat however many jobs there are; N workers
take jobs off it, wait their turn with the shared `Breaker` (an outage pauses
the whole pool) and `Pacer` (the rate limit), and record every step in the ledger.
A run-stopping answer (bad key, unknown model, no credits), the budget, the retry
budget, an outage past --outage-limit, a failed write or a signal sets one flag:
nothing new is sent, every wait ends at once, in-flight requests finish and are
recorded. A second signal cuts them: each is recorded `interrupted`, possibly billed.

Money invariant: a worker sends its next request only once its previous answer is
durable (the image in place and its line fsync'd), so at any instant at most
`concurrency` requests may have been billed without a durable record of their
outcome; a kill -9 can cost at most that many images paid twice.

A worker hands each job to `JobAttempts` (attempts.py), which records every step
through the `Recorder` (recording.py); both share this pool's totals and stop flag.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from batchgen import events, retry
from batchgen.breaker import Breaker
from batchgen.client import Client
from batchgen.grid import Job
from batchgen.images import EncodedImages
from batchgen.ledger import LedgerState
from batchgen.ledger_sink import LedgerSink
from batchgen.pacing import Pacer, RetryBudget, Sleep
from batchgen.runner.attempts import JobAttempts
from batchgen.runner.options import RunOptions
from batchgen.runner.recording import Recorder
from batchgen.runner.totals import RunTotals
from batchgen.stops import Stop, StopReason


class Runner:
    def __init__(
        self,
        *,
        model: str,
        price: float,
        client: Client,
        ledger: LedgerSink,
        state: LedgerState,
        out: Path,
        options: RunOptions,
        pacer: Pacer,
        budget: RetryBudget | None = None,
        images: EncodedImages | None = None,
        on_event: events.Listener = events.ignore,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        to_run: int | None = None,
    ) -> None:
        self.model, self.price, self.client, self.ledger = model, price, client, ledger
        self.state, self.out, self.options, self.pacer = state, out, options, pacer
        self.budget = budget or RetryBudget()
        self.images = images or EncodedImages()
        self.emit, self.sleep, self.rng = on_event, sleep, rng or random.Random()
        self.totals = RunTotals()
        self._stop = asyncio.Event()
        self.breaker = Breaker(
            threshold=min(options.concurrency, retry.BREAKER_FAILURES),
            outage_limit=options.outage_limit,
            clock=pacer.now,
            sleep=sleep,
            rng=self.rng,
        )
        self.recorder = Recorder(
            model=model, price=price, ledger=ledger, out=out, totals=self.totals,
            emit=on_event, request_stop=self.request_stop,
        )  # fmt: skip
        self.attempts = JobAttempts(
            model=model, price=price, client=client, options=options, pacer=pacer,
            breaker=self.breaker, budget=self.budget, images=self.images,
            recorder=self.recorder, totals=self.totals, stop=self._stop,
            request_stop=self.request_stop, emit=on_event, sleep=sleep, rng=self.rng,
        )  # fmt: skip
        self._to_run = to_run  # as the plan counted them, when known
        self._jobs: Any = iter(())
        self._taken = 0  # jobs the producer found to run (queued, or not run: stopping)
        self._exhausted = False  # the producer saw every job

    def request_stop(self, reason: StopReason, message: str) -> None:
        """Stop dispatching; what is in flight finishes and is recorded. The first
        reason given is the run's."""
        if not self._stop.is_set():
            self.totals.stopped = Stop(reason, message)
            self._stop.set()
            self.emit(events.RunStopping(message, reason))

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self, jobs: Any) -> RunTotals:
        """Run the jobs. Cancelled (a second signal), it cuts the requests in flight;
        then `drain` and `settle` still count what was done."""
        self._jobs = iter(jobs)
        queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=2 * self.options.concurrency)
        async with asyncio.TaskGroup() as group:
            for n in range(self.options.concurrency):
                group.create_task(self._worker(queue), name=f"worker-{n}")
            await self._produce(queue)
        await self.drain()
        self.settle()
        return self.totals

    async def _produce(self, queue: asyncio.Queue[Job | None]) -> None:
        for job in self._jobs:
            if self.state.is_done(job.job_id):
                self.totals.skipped_done += 1
            elif not self.options.retry_failed and self.state.failed_for_good(job.job_id):
                self.totals.skipped_failed += 1
            else:
                self._taken += 1
                if not self.stopping:
                    await queue.put(job)  # cancelled here, the task group cuts the workers
        self._exhausted = True
        for _ in range(self.options.concurrency):
            await queue.put(None)

    async def _worker(self, queue: asyncio.Queue[Job | None]) -> None:
        while (job := await queue.get()) is not None:
            if not self.stopping:
                await self.attempts.run(job)

    def settle(self) -> None:
        """Count the jobs this run did not finish: every one found to run, less those
        that succeeded, failed or were paid and not written; after an abort, also the
        jobs the producer never reached (the plan's count, else by reading on)."""
        taken = self._taken
        if not self._exhausted:
            if self._to_run is not None:
                taken = max(taken, self._to_run)
            else:
                for job in self._jobs:
                    if not self.state.is_done(job.job_id) and (
                        self.options.retry_failed or not self.state.failed_for_good(job.job_id)
                    ):
                        taken += 1
                self._taken, self._exhausted = taken, True
        totals = self.totals
        totals.not_run = max(0, taken - totals.succeeded - totals.failed - totals.unwritten)

    async def drain(self) -> None:
        """Wait for every image handed to the ledger to be on disk and counted."""
        await self.recorder.drain()
