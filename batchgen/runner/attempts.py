"""One job's attempts: wait for the breaker and the pacer, keep within the budget, send,
and decide from the answer what comes next (retry, resend, wait out a 429 or an outage,
defer to settlement, fail the job, or stop the run).

Each attempt's price is reserved from the moment its `started` line is noted until its
answer is counted, so the --max-cost cap holds with requests in flight.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
from typing import Any

from batchgen import api, events, retry
from batchgen.breaker import Breaker
from batchgen.client import Client
from batchgen.errors import ApiError, ApiStatusError, BadAnswerError
from batchgen.grid import Job, describe
from batchgen.images import EncodedImages, LocalImage
from batchgen.ledger import schema
from batchgen.ledger.schema import Billed
from batchgen.pacing import Pacer, RetryBudget, Sleep, until
from batchgen.planning import format_duration
from batchgen.queue_client import QueueClient
from batchgen.runner.answer_errors import stop_reason, was_billed
from batchgen.runner.options import RunOptions
from batchgen.runner.recording import Recorder, RequestStop
from batchgen.runner.totals import RunTotals
from batchgen.stops import StopReason


class JobAttempts:
    """Runs one job at a time for a worker; one instance is shared by the pool's workers."""

    def __init__(
        self,
        *,
        model: str,
        price: float,
        client: Client,
        options: RunOptions,
        pacer: Pacer,
        breaker: Breaker,
        budget: RetryBudget,
        images: EncodedImages,
        recorder: Recorder,
        totals: RunTotals,
        stop: asyncio.Event,
        request_stop: RequestStop,
        emit: events.Listener,
        sleep: Sleep,
        rng: random.Random,
    ) -> None:
        self.model, self.price, self.client, self.options = model, price, client, options
        self.pacer, self.breaker, self.budget, self.images = pacer, breaker, budget, images
        self.recorder, self.totals, self.stop, self.request_stop = (
            recorder,
            totals,
            stop,
            request_stop,
        )
        self.emit, self.sleep, self.rng = emit, sleep, rng
        self._in_flight = 0  # requests sent or about to be, for the cost cap ...
        self._unit = price  # ... each held at the most a request was charged, or the price

    @property
    def stopping(self) -> bool:
        return self.stop.is_set()

    async def run(self, job: Job) -> None:
        recorder = self.recorder
        params = describe(job.params)
        try:
            body = self._body(job)  # once per job, however many attempts it takes
        except (OSError, ValueError) as err:
            error = ApiError(f"cannot read the input image: {err}")
            await recorder.fail(job, params, error, 0, "no", retryable=True)
            return
        attempt = self.options.prior_attempts.get(job.job_id, 0)
        throttled = resent = 0
        resend = counted = False  # this send is a free resend; the job's first is counted
        if attempt >= self.options.max_attempts:  # used up by this run's earlier passes
            error = ApiError(f"its {attempt} attempts (--max-attempts) were used in this "
                             "run's earlier passes")  # fmt: skip
            await recorder.fail(job, params, error, attempt, "no", retryable=True)
            return
        while True:
            probe = await self._take_turn(job, params, attempt + 1, resend=resend)
            if probe is None:
                return  # the run is stopping: not run
            attempt += 1
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
                        if self.breaker.given_up:  # the outage outlasted its limit: stop
                            self.request_stop(StopReason.OUTAGE, self._outage_reason())
                        await self._defer(job, params, error, attempt)  # a 504 may have been
                        return  # billed: settle, not resend
                    if (
                        billed != "no"
                        and attempt >= self.options.max_attempts
                        and not self.breaker.given_up
                    ):  # it may have cost the job's money: an attempt, its last one
                        await recorder.fail(job, params, error, attempt, billed, retryable=True)
                        return
                    await recorder.retrying(job, error, billed, attempt, None, outage=True)
                    if billed == "no":  # it never reached the service: not the job's attempt
                        attempt -= 1
                    if self.breaker.given_up:
                        await recorder.interrupted(job, params, error, billed)
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
                await recorder.retrying(job, error, billed, attempt, 0.0)
                attempt -= 1
                resend = True
                continue
            if verdict is retry.Verdict.THROTTLED:
                attempt -= 1  # a 429 is not the job's fault: it does not use up attempts
                throttled += 1
                self.pacer.throttled(retry_after, sent_at, note=error.wait_note)
                self.totals.throttled += 1
                await recorder.retrying(job, error, billed, attempt, retry_after)
                self.emit(events.JobThrottled(job.job_id, retry_after))
                if throttled < retry.MAX_THROTTLED:
                    continue
                await recorder.fail(job, params, error, attempt, billed, retryable=True)
                return
            if verdict is retry.Verdict.STOP_RUN:
                self.request_stop(*stop_reason(error))  # before the write: nothing more goes
                await recorder.interrupted(job, params, error, billed)
                return
            if verdict is retry.Verdict.FAIL_JOB:
                await recorder.fail(job, params, error, attempt, billed, retryable=False)
                return
            if verdict is retry.Verdict.FAIL_FOR_NOW:
                await recorder.fail(job, params, error, attempt, billed, retryable=True)
                return
            # RETRY, or RESEND past its allowance: an ordinary connection failure now
            if (
                isinstance(error, BadAnswerError)
                and error.request_id is not None
                and self.options.defer_ambiguous
            ):
                # A 200 cut off on the way: paid, and the history has the image by its
                # id. Downloaded after this pass, not paid for again.
                await recorder.cut_short(job, params, error, attempt, error.request_id)
                self.totals.deferred_jobs[job.job_id] = attempt
                return
            if billed == "maybe" and self.options.defer_ambiguous:
                # Sending again might pay twice: the request history says, once its row
                # shows. The job waits for that verdict after this pass (library.run_async
                # settles, then runs what was not billed), and the worker goes on.
                await self._defer(job, params, error, attempt)
                return
            if attempt >= self.options.max_attempts:
                await recorder.fail(job, params, error, attempt, billed, retryable=True)
                return
            if not self.budget.try_retry():
                # Stop first, then write: while the line waits for its fsync the other
                # workers would go on sending first attempts, each one adding to the budget.
                self.request_stop(
                    StopReason.RETRY_BUDGET,
                    f"retry budget exhausted: the service keeps failing ({error})",
                )
                await recorder.interrupted(job, params, error, billed)
                return
            self.pacer.note(error.wait_note)
            delay = retry.retry_delay(attempt, retry_after, rng=self.rng)
            await recorder.retrying(job, error, billed, attempt, delay)
            await until(self.sleep(delay), self.stop)  # a stop ends the wait at once

    async def _take_turn(
        self, job: Job, params: dict[str, Any], attempt: int, *, resend: bool
    ) -> bool | None:
        """The attempt's way out: the breaker (an outage lets one probe through at a time),
        the pacer, the budget, then its `started` line with its price reserved. Whether it
        is the breaker's probe, or None when it is not sent: the run is stopping."""
        probe = await self.breaker.admit(self.stop)
        if probe is None:
            return None
        if not await self.pacer.wait_turn(self.stop):
            self.breaker.release(probe=probe)
            return None
        if not self._within_budget():  # no await between this check and the reservation
            self.request_stop(
                StopReason.BUDGET,
                f"the --max-cost budget of ${self.options.max_cost:.2f} is reached",
            )
        if self.stopping:
            self.pacer.release_turn()
            self.breaker.release(probe=probe)
            return None
        self._in_flight += 1  # now: a store's started line is awaited
        started = schema.started(job.job_id, attempt=attempt, price=self.price,
                                 params=params, resend=resend, probe=bool(probe))  # fmt: skip
        noted = await self.recorder.note(started)
        if not noted or self._stopped_while_noting():
            self._in_flight -= 1
            self.pacer.release_turn()  # no evidence of the request, so no request
            self.breaker.release(probe=probe)
            if noted:
                await self.recorder.note(
                    schema.interrupted(job.job_id, error="not sent: the run stopped")
                )
            return None
        return probe

    async def _defer(self, job: Job, params: dict[str, Any], error: ApiError, attempt: int) -> None:
        """A maybe-billed attempt, left for the request history to settle after this pass."""
        await self.recorder.interrupted(job, params, error, "maybe")
        self.totals.deferred_jobs[job.job_id] = attempt

    def _stopped_while_noting(self) -> bool:
        """While a store's `started` line was being written, the run stopped for a reason
        that sends nothing more (a failed write, a signal, the key): not sent. A budget
        stop is not one: this request's price was reserved within the cap before."""
        stopped = self.totals.stopped
        return stopped is not None and stopped.reason is not StopReason.BUDGET

    def _outage_reason(self) -> str:
        gone = format_duration(self.breaker.unreachable_for())
        return f"the service was unreachable for {gone} ({self.breaker.reason}); stopping"

    def _within_budget(self) -> bool:
        cap = self.options.max_cost
        if cap is None:
            return True
        committed = (self.options.prior_money + self.totals.spent + self.totals.possibly_billed
                     + self._in_flight * self._unit)  # fmt: skip
        return committed + self._unit <= cap + 1e-9

    async def _attempt(
        self, job: Job, params: dict[str, Any], body: bytes, attempt: int, *, fresh: bool
    ) -> tuple[ApiError, Billed, float] | None:
        """One request, counted in flight for the cost cap. None when the job is finished; else
        the error, whether it was billed ('no', 'maybe' for a 502/504 or a timeout
        after sending, or 'billed') and when it was sent. `fresh`: on a new connection
        (a resend after a kept-alive one turned out dead)."""
        try:
            self.emit(events.JobStarted(job.job_id, attempt))
            self.totals.requests += 1
            sent_at = self.pacer.now()
            if isinstance(self.client, QueueClient):  # v2: the request id durable, then polled
                queued = functools.partial(self.recorder.submitted, job.job_id, attempt)
                answer = await self.client.generate(self.model, body, fresh=fresh,
                                                    on_submitted=queued)  # fmt: skip
            else:
                answer = await self.client.generate(self.model, body, fresh=fresh)
        except ApiError as error:
            if not (isinstance(error, ApiStatusError) and error.status == 429):
                self.pacer.answered()
            billed = was_billed(error)
            if billed == "maybe":
                self.totals.possibly_billed += self.price
            elif billed == "billed":
                self._charged(self.recorder.cost(billed, error))
            return error, billed, sent_at
        except asyncio.CancelledError:  # a second signal cut it: it may have been billed
            self.totals.possibly_billed += self.price
            await self.recorder.note(  # the local writer's note never suspends: written now
                schema.interrupted(job.job_id, http_status=None, billed="maybe",
                                   error="cut short: the run was aborted by a second signal",
                                   cost=self.price, params=params)
            )  # fmt: skip
            raise
        finally:
            self._in_flight -= 1
        self.pacer.answered(sent_at)
        self._charged(self.price if answer.cost is None else answer.cost)
        await self.recorder.succeed(job, params, answer, attempt)
        return None

    def _charged(self, cost: float) -> None:
        """A request's charge, as the service said: spent, and from now on what each
        request in flight is held at for --max-cost, when more than the price (the
        manifest's price only stands in until an answer says)."""
        self.totals.spent += cost
        self._unit = max(self._unit, cost)

    def _body(self, job: Job) -> bytes:
        image = job.params["image_file"]
        if isinstance(image, LocalImage):
            image_json = self.images.as_json(image)  # its asset URL once uploaded
        else:
            image_json = json.dumps(image).encode()
        return api.encode_request(job.params, image_json)
