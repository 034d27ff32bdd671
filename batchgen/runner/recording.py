"""Recording what happened to a job: its ledger line, its output path, its count, its event.

`note` is for lines that need not wait for the disk (`started`, `retry`); `record` for
those that must be on disk before the worker goes on (`submitted`, `failed`,
`interrupted`). A success hands the image and its line to the ledger together: the file
is put in place first, then the line, by the ledger's next group commit; it is counted
once both are durable. A ledger that cannot be written stops the run.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from batchgen import api, events, images, metadata, outputs
from batchgen.client import Answer
from batchgen.errors import ApiError, BadAnswerError, LedgerError
from batchgen.grid import Job
from batchgen.ledger import WriteFailure, schema
from batchgen.ledger.schema import Billed
from batchgen.ledger_sink import LedgerSink
from batchgen.runner.answer_errors import describe_error
from batchgen.runner.totals import RunTotals
from batchgen.stops import StopReason

RequestStop = Callable[[StopReason, str], None]


class Recorder:
    def __init__(
        self,
        *,
        model: str,
        price: float,
        ledger: LedgerSink,
        out: Path,
        totals: RunTotals,
        emit: events.Listener,
        request_stop: RequestStop,
    ) -> None:
        self.model, self.price, self.ledger, self.totals = model, price, ledger, totals
        self.emit, self.request_stop = emit, request_stop
        self._root = str(out.resolve())
        where = PurePosixPath(os.path.relpath(out, ledger.path.parent)).as_posix()
        self._out_from_ledger = "" if where == "." else where + "/"  # outputs, as the ledger says

    async def note(self, record: dict[str, Any]) -> bool:
        """A line that need not wait for the disk (`started`, `retry`); False, and the run
        stops, when the ledger cannot take it."""
        try:
            await self.ledger.note(record)
        except LedgerError as err:
            self.request_stop(StopReason.WRITE_FAILURE, str(err))
            return False
        return True

    async def record(self, record: dict[str, Any]) -> None:
        """A line that must be on disk before going on; a ledger that fails stops the run."""
        try:
            await self.ledger.write(record)
        except LedgerError as err:
            self.request_stop(StopReason.WRITE_FAILURE, str(err))

    async def drain(self) -> None:
        """Wait for every image handed to the ledger to be on disk and counted."""
        await self.ledger.drain()

    def cost(self, billed: Billed, error: ApiError | None = None) -> float:
        """What an attempt cost: a billed 200 what its `x-cost` said, else the price."""
        if billed == "billed" and isinstance(error, BadAnswerError) and error.cost is not None:
            return error.cost
        return self.price if billed in ("maybe", "billed") else 0.0

    async def submitted(self, job_id: str, attempt: int, request_id: str) -> None:
        """A v2 request is queued (it will bill): its id on disk before the first poll,
        so a crash loses nothing that completes (the resume polls it)."""
        await self.record(schema.submitted(job_id, attempt=attempt, request_id=request_id))

    async def succeed(self, job: Job, params: dict[str, Any], answer: Answer, attempt: int) -> None:
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
            await self.record(schema.unwritten(record, str(failure)))
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

    async def retrying(
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
        status, message = describe_error(error)
        await self.note(schema.retry(job.job_id, attempt=attempt, http_status=status,
                                     error=message, billed=billed, cost=self.cost(billed, error),
                                     delay=delay, outage=outage))  # fmt: skip
        if delay is not None and status != 429:
            self.emit(events.JobRetrying(job.job_id, attempt, delay, message))

    async def fail(
        self,
        job: Job,
        params: dict[str, Any],
        error: ApiError,
        attempts: int,
        billed: Billed,
        *,
        retryable: bool,
    ) -> None:
        status, message = describe_error(error)
        self.totals.failed += 1  # before the write: an abort while it waits still counts it
        self.totals.failures[(status, message)] += 1
        await self.record(
            schema.failed(job.job_id, error=message, http_status=status, retryable=retryable,
                          attempts=attempts, billed=billed, cost=self.cost(billed, error),
                          params=params)
        )  # fmt: skip
        self.emit(events.JobFinished(job.job_id, False, 0.0, error=message))

    async def cut_short(
        self, job: Job, params: dict[str, Any], error: ApiError, attempt: int, request_id: str
    ) -> None:
        """A 200 whose image was cut off on the way: paid, left for settlement to
        download by its request id (not counted unwritten: nothing failed on our side)."""
        _, message = describe_error(error)
        await self.record(
            schema.cut_short(job.job_id, error=message, attempts=attempt,
                             cost=self.cost("billed", error),
                             params=params, request_id=request_id)
        )  # fmt: skip

    async def interrupted(
        self, job: Job, params: dict[str, Any], error: ApiError, billed: Billed
    ) -> None:
        """Not the job's failure: the run stopped around it; the next run does it."""
        status, message = describe_error(error)
        await self.record(
            schema.interrupted(job.job_id, http_status=status, error=message, billed=billed,
                               cost=self.cost(billed, error), params=params)
        )  # fmt: skip


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
