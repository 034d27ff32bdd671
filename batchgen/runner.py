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
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from batchgen import api, events, images, metadata, outputs, refusals, retry, stops
from batchgen.breaker import Breaker
from batchgen.client import Answer, Client
from batchgen.errors import ApiError, ApiStatusError, LedgerError, TransportError
from batchgen.grid import Job, describe
from batchgen.images import EncodedImages, LocalImage
from batchgen.ledger import LedgerState, WriteFailure, schema
from batchgen.ledger.schema import Billed
from batchgen.ledger_sink import LedgerSink
from batchgen.pacing import Pacer, RetryBudget, Sleep, until
from batchgen.planning import format_duration
from batchgen.queue_client import QueueClient
from batchgen.stops import Stop, StopReason


@dataclass(frozen=True)
class RunOptions:
    concurrency: int = 64  # the most in flight; the window follows the rate below it
    max_cost: float | None = None
    max_attempts: int = retry.MAX_ATTEMPTS
    retry_failed: bool = False
    outage_limit: float = retry.OUTAGE_LIMIT_S
    defer_ambiguous: bool = False  # maybe-billed attempts wait for settlement, not a retry
    first_window: int | None = None  # --concurrency given: start with that many in flight


@dataclass
class RunTotals:
    succeeded: int = 0
    failed: int = 0
    skipped_done: int = 0
    skipped_failed: int = 0
    not_run: int = 0  # left for the next run when this one stopped early (set at the end)
    unwritten: int = 0  # paid for, but the image could not be written
    deferred: int = 0  # maybe billed: left to settle from the request history, not retried
    spent: float = 0.0
    possibly_billed: float = 0.0
    requests: int = 0
    throttled: int = 0
    failures: Counter[tuple[int | None, str]] = field(default_factory=Counter)  # (status, text)
    remaining_credits: str | None = None
    stopped: Stop | None = None  # why the run stopped early, if it did


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
        self._reserved = 0.0  # price of requests in flight, for the cost cap
        self._root = str(out.resolve())
        where = PurePosixPath(os.path.relpath(out, ledger.path.parent)).as_posix()
        self._out_from_ledger = "" if where == "." else where + "/"  # outputs, as the ledger says
        self._stop = asyncio.Event()
        self.breaker = Breaker(
            threshold=min(options.concurrency, retry.BREAKER_FAILURES),
            outage_limit=options.outage_limit,
            clock=pacer.now,
            sleep=sleep,
            rng=self.rng,
        )
        self._to_run = to_run  # as the plan counted them, when known
        self._jobs: Any = iter(())
        self._taken = 0  # jobs the producer found to run (queued, or not run: stopping)
        self._exhausted = False  # the producer saw every job

    # -- control ----------------------------------------------------------------

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

    def _stopped_while_noting(self) -> bool:
        """While a store's `started` line was being written, the run stopped for a reason
        that sends nothing more (a failed write, a signal, the key): not sent. A budget
        stop is not one: this request's price was reserved within the cap before."""
        stopped = self.totals.stopped
        return stopped is not None and stopped.reason is not StopReason.BUDGET

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
                await self._run_job(job)

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

    # -- one job ----------------------------------------------------------------

    async def _run_job(self, job: Job) -> None:
        params = describe(job.params)
        try:
            body = self._body(job)  # once per job, however many attempts it takes
        except (OSError, ValueError) as err:
            error = ApiError(f"cannot read the input image: {err}")
            await self._fail(job, params, error, 0, "no", retryable=True)
            return
        attempt = throttled = resent = 0
        resend = counted = False  # this send is a free resend; the job's first is counted
        while True:
            probe = await self.breaker.admit(self._stop)  # an outage: one probe at a time
            if probe is None:
                return  # the run is stopping: not run
            if not await self.pacer.wait_turn(self._stop):
                self.breaker.release(probe=probe)
                return
            if not self._within_budget():  # no await between this check and the reservation
                self.request_stop(
                    StopReason.BUDGET,
                    f"the --max-cost budget of ${self.options.max_cost:.2f} is reached",
                )
            if self.stopping:
                self.pacer.release_turn()
                self.breaker.release(probe=probe)
                return
            attempt += 1
            self._reserved += self.price  # now: a store's started line is awaited
            noted = await self._note(schema.started(job.job_id, attempt=attempt,
                                                    price=self.price, params=params,
                                                    resend=resend, probe=bool(probe)))  # fmt: skip
            if not noted or self._stopped_while_noting():
                self._reserved -= self.price
                self.pacer.release_turn()  # no evidence of the request, so no request
                self.breaker.release(probe=probe)
                if noted:
                    await self._note(
                        schema.interrupted(job.job_id, error="not sent: the run stopped")
                    )
                return
            if not counted:  # once per job: resends, 429s and outages are not first attempts
                counted = True
                self.budget.first_attempt()
            outcome = await self._attempt(job, params, body, attempt, fresh=resend)
            resend = False
            if outcome is None:
                self.breaker.answered(probe=probe)
                return
            error, billed, sent_at = outcome
            verdict, retry_after = retry.verdict(error), error.retry_after
            if retry.is_outage(error):
                if self.breaker.failed(retry.outage_reason(error), probe=probe):
                    # the service is unreachable: the outage's failure, not the job's
                    if billed == "maybe" and self.options.defer_ambiguous:
                        await self._interrupted(job, params, error, billed)  # a 504 may
                        self.totals.deferred += 1  # have been billed: settle, not resend
                        return
                    await self._retrying(job, error, billed, attempt, None, outage=True)
                    attempt -= 1
                    if self.breaker.given_up:
                        await self._interrupted(job, params, error, billed)
                        self.request_stop(StopReason.OUTAGE, self._outage_reason())
                        return
                    continue
            elif verdict is retry.Verdict.RESEND:
                self.breaker.release(probe=probe)
            else:
                self.breaker.answered(probe=probe)  # any answer: the service is reachable
            if verdict is retry.Verdict.RESEND and resent < retry.MAX_STALE_RESENDS:
                # it went out on a connection the server had already closed: it never
                # reached the service, so send it again now, at no attempt's cost
                resent += 1
                await self._retrying(job, error, billed, attempt, 0.0)
                attempt -= 1
                resend = True
                continue
            if verdict is retry.Verdict.THROTTLED:
                attempt -= 1  # a 429 is not the job's fault: it does not use up attempts
                throttled += 1
                self.pacer.throttled(retry_after, sent_at, note=error.wait_note)
                self.totals.throttled += 1
                await self._retrying(job, error, billed, attempt, retry_after)
                self.emit(events.JobThrottled(job.job_id, retry_after))
                if throttled < retry.MAX_THROTTLED:
                    continue
                await self._fail(job, params, error, attempt, billed, retryable=True)
                return
            if verdict is retry.Verdict.STOP_RUN:
                self.request_stop(*_stop_reason(error))  # before the write: nothing more goes
                await self._interrupted(job, params, error, billed)
                return
            if verdict is retry.Verdict.FAIL_JOB:
                await self._fail(job, params, error, attempt, billed, retryable=False)
                return
            if verdict is retry.Verdict.FAIL_FOR_NOW:
                await self._fail(job, params, error, attempt, billed, retryable=True)
                return
            # RETRY, or RESEND past its allowance: an ordinary connection failure now
            if billed == "maybe" and self.options.defer_ambiguous:
                # Sending again might pay twice: the request history says, once its row
                # shows. The job waits for that verdict after this pass (library.run_async
                # settles, then runs what was not billed), and the worker goes on.
                await self._interrupted(job, params, error, billed)
                self.totals.deferred += 1
                return
            if attempt >= self.options.max_attempts:
                await self._fail(job, params, error, attempt, billed, retryable=True)
                return
            if not self.budget.try_retry():
                # Stop first, then write: while the line waits for its fsync the other
                # workers would go on sending first attempts, each one adding to the budget.
                self.request_stop(
                    StopReason.RETRY_BUDGET,
                    f"retry budget exhausted: the service keeps failing ({error})",
                )
                await self._interrupted(job, params, error, billed)
                return
            self.pacer.note(error.wait_note)
            delay = retry.retry_delay(attempt, retry_after, rng=self.rng)
            await self._retrying(job, error, billed, attempt, delay)
            await until(self.sleep(delay), self._stop)  # a stop ends the wait at once

    def _outage_reason(self) -> str:
        gone = format_duration(self.breaker.unreachable_for())
        return f"the service was unreachable for {gone} ({self.breaker.reason}); stopping"

    def _within_budget(self) -> bool:
        cap = self.options.max_cost
        if cap is None:
            return True
        committed = self.totals.spent + self.totals.possibly_billed + self._reserved
        return committed + self.price <= cap + 1e-9

    async def _attempt(
        self, job: Job, params: dict[str, Any], body: bytes, attempt: int, *, fresh: bool
    ) -> tuple[ApiError, Billed, float] | None:
        """One request, its price already reserved. None when the job is finished; else
        the error, whether it was billed ('no', 'maybe' for a 502/504 or a timeout
        after sending, or 'billed') and when it was sent. `fresh`: on a new connection
        (a resend after a kept-alive one turned out dead)."""
        try:
            self.emit(events.JobStarted(job.job_id, attempt))
            self.totals.requests += 1
            sent_at = self.pacer.now()
            if isinstance(self.client, QueueClient):  # v2: the request id durable, then polled
                queued = functools.partial(self._submitted, job.job_id, attempt)
                answer = await self.client.generate(self.model, body, fresh=fresh,
                                                    on_submitted=queued)  # fmt: skip
            else:
                answer = await self.client.generate(self.model, body, fresh=fresh)
        except ApiError as error:
            if not (isinstance(error, ApiStatusError) and error.status == 429):
                self.pacer.answered()
            billed = _billed(error)
            if billed == "maybe":
                self.totals.possibly_billed += self.price
            elif billed == "billed":
                self.totals.spent += self.price
            return error, billed, sent_at
        except asyncio.CancelledError:  # a second signal cut it: it may have been billed
            self.totals.possibly_billed += self.price
            await self._note(  # the local writer's note never suspends: it is written now
                schema.interrupted(job.job_id, http_status=None, billed="maybe",
                                   error="cut short: the run was aborted by a second signal",
                                   cost=self.price, params=params)
            )  # fmt: skip
            raise
        finally:
            self._reserved -= self.price
        self.pacer.answered(sent_at)
        self.totals.spent += self.price if answer.cost is None else answer.cost
        await self._succeed(job, params, answer, attempt)
        return None

    async def _submitted(self, job_id: str, attempt: int, request_id: str) -> None:
        """A v2 request is queued (it will bill): its id on disk before the first poll,
        so a crash loses nothing that completes (the resume polls it)."""
        await self._record(schema.submitted(job_id, attempt=attempt, request_id=request_id))

    def _body(self, job: Job) -> bytes:
        image = job.params["image_file"]
        if isinstance(image, LocalImage):
            image_json = self.images.as_json(image)  # its asset URL once uploaded
        else:
            image_json = json.dumps(image).encode()
        return api.encode_request(job.params, image_json)

    async def _succeed(
        self, job: Job, params: dict[str, Any], answer: Answer, attempt: int
    ) -> None:
        relative = outputs.final_path(job.output, api.EXTENSIONS[answer.format])
        body = metadata.embed(answer.body, answer.format, self._provenance(job, params, answer))
        if "x-remaining-credits" in answer.headers:
            self.totals.remaining_credits = answer.headers["x-remaining-credits"]
        output = self._out_from_ledger + relative
        record = schema.succeeded(
            job.job_id, output=output, cost=self.price if answer.cost is None else answer.cost,
            size=len(body), sha256=_sha256(body), attempts=attempt, headers=answer.headers,
            params=params, request_id=answer.request_id,
        )  # fmt: skip
        try:
            target = outputs.confine(self._root, relative)
        except ValueError as err:  # checked before sending; never lose the paid image's record
            failure = WriteFailure(relative, OSError(0, str(err)))
            await self._record(schema.unwritten(record, str(failure)))
            self._unwritten(job.job_id, failure)
            return
        # The file is put in place first, then the line, by the ledger's next group
        # commit (shared with other workers). This worker sends nothing more until
        # both are durable: the money invariant.
        committed = self.ledger.submit(record, output=(target, body))
        committed.add_done_callback(functools.partial(self._committed, job.job_id, output))
        await self.ledger.settle(committed)  # not cancelled with the worker: still counted

    def _provenance(self, job: Job, params: dict[str, Any], answer: Answer) -> dict[str, Any]:
        """What the image file itself will remember (never the key)."""
        source = images.source(params.get("image_file"))
        seed = params.get("seed", answer.headers.get("x-seed-value"))
        return {**params, "seed": seed, "model": self.model, "job_id": job.job_id,
                "source": source}  # fmt: skip

    def _committed(
        self, job_id: str, output: str, done: asyncio.Future[WriteFailure | None]
    ) -> None:
        error = done.exception()
        if error is not None:  # the ledger itself cannot be written: the image is unrecorded
            self.totals.unwritten += 1
            self.request_stop(StopReason.WRITE_FAILURE, str(error))
            return
        failure = done.result()
        if failure is not None:
            self._unwritten(job_id, failure)
            return
        self.totals.succeeded += 1
        self.emit(events.JobFinished(job_id, True, self.price, output=output))

    def _unwritten(self, job_id: str, failure: WriteFailure) -> None:
        """A paid image that could not be written: the first one stops the run."""
        self.totals.unwritten += 1
        self.request_stop(StopReason.WRITE_FAILURE, f"cannot write {failure}")
        self.emit(events.JobFinished(job_id, False, self.price, error=str(failure)))

    async def drain(self) -> None:
        """Wait for every image handed to the ledger to be on disk and counted."""
        await self.ledger.drain()

    async def _retrying(
        self,
        job: Job,
        error: ApiError,
        billed: Billed,
        attempt: int,
        delay: float | None,
        *,
        outage: bool = False,
    ) -> None:
        """Close the attempt in the ledger: what went wrong and whether it may have cost.
        `outage`: the breaker is open, so the attempt was not the job's (delay: the
        breaker's)."""
        status, message = _describe_error(error)
        await self._note(schema.retry(job.job_id, attempt=attempt, http_status=status,
                                      error=message, billed=billed, cost=self._cost(billed),
                                      delay=delay, outage=outage))  # fmt: skip
        if delay is not None and status != 429:
            self.emit(events.JobRetrying(job.job_id, attempt, delay, message))

    async def _note(self, record: dict[str, Any]) -> bool:
        """A line that need not wait for the disk (`started`, `retry`); False, and the run
        stops, when the ledger cannot take it."""
        try:
            await self.ledger.note(record)
        except LedgerError as err:
            self.request_stop(StopReason.WRITE_FAILURE, str(err))
            return False
        return True

    async def _record(self, record: dict[str, Any]) -> None:
        """A line that must be on disk before going on; a ledger that fails stops the run."""
        try:
            await self.ledger.write(record)
        except LedgerError as err:
            self.request_stop(StopReason.WRITE_FAILURE, str(err))

    def _cost(self, billed: Billed) -> float:
        return self.price if billed in ("maybe", "billed") else 0.0

    async def _fail(
        self,
        job: Job,
        params: dict[str, Any],
        error: ApiError,
        attempts: int,
        billed: Billed,
        *,
        retryable: bool,
    ) -> None:
        status, message = _describe_error(error)
        self.totals.failed += 1  # before the write: an abort while it waits still counts it
        self.totals.failures[(status, message)] += 1
        await self._record(
            schema.failed(job.job_id, error=message, http_status=status, retryable=retryable,
                          attempts=attempts, billed=billed, cost=self._cost(billed),
                          params=params)
        )  # fmt: skip
        self.emit(events.JobFinished(job.job_id, False, 0.0, error=message))

    async def _interrupted(
        self, job: Job, params: dict[str, Any], error: ApiError, billed: Billed
    ) -> None:
        """Not the job's failure: the run stopped around it; the next run does it."""
        status, message = _describe_error(error)
        await self._record(
            schema.interrupted(job.job_id, http_status=status, error=message, billed=billed,
                               cost=self._cost(billed), params=params)
        )  # fmt: skip


def _describe_error(error: ApiError) -> tuple[int | None, str]:
    if isinstance(error, ApiStatusError):
        return error.status, error.message
    return None, str(error)


def _billed(error: ApiError) -> Billed:
    if isinstance(error, TransportError):
        return "maybe" if error.sent else "no"
    if isinstance(error, ApiStatusError):
        if error.status == 200:
            return "billed"  # a 200 that is not a whole image was billed all the same
        if error.status in retry.POSSIBLY_BILLED:
            return "maybe"
    return "no"


def _stop_reason(error: ApiError) -> tuple[StopReason, str]:
    if not isinstance(error, ApiStatusError):
        return StopReason.SERVICE, str(error)
    kind = stops.for_status(error.status)
    if kind is StopReason.REDIRECT:
        return kind, error.message  # names the status and where it pointed, never the key
    meaning = refusals.meaning(error.status, forbidden="use this model",
                               missing="the model or endpoint was not found")  # fmt: skip
    reason = f"{meaning} (HTTP {error.status})" if meaning else f"HTTP {error.status}"
    return kind, f"{reason}: {error.message}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
