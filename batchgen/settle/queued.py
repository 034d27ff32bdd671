"""The first settlement step on resume, before the history: v2 requests whose ids the
ledgers recorded, polled at the queue (free), what completed downloaded (no key).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final

from batchgen import queue_client
from batchgen.history import History, Row
from batchgen.ledger.fold import Key
from batchgen.pacing import Clock
from batchgen.settle.ledger_io import LedgerIO
from batchgen.settle.lines import failed_line, queued_line
from batchgen.settle.recover import recover
from batchgen.settle.report import SettleReport, charge
from batchgen.settle.targets import Targets, targets_from_manifests
from batchgen.settle.view import read_view

QUEUE_WAIT_S: Final = 30.0  # on resume, how long to keep polling requests still queued


async def collect_queued(
    history: History,
    io: LedgerIO,
    settle: Sequence[Path],
    read: Sequence[Path],
    targets: Targets | None,
    base: str,
    *,
    wait: float = QUEUE_WAIT_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Clock = time.monotonic,
) -> SettleReport:
    """The first step on resume, before the history: every ambiguous attempt with a
    recorded v2 request id (a `submitted` line and no outcome: a crash; or lost while
    polling) is polled at `base`. COMPLETED: its image is downloaded (no key) and put
    in place with a `succeeded` line (`recovered`, `polled`, its request id and
    `metrics.cost`); FAILED: a `failed` line, for good, not billed. Requests still
    queued are polled again every 1-2 s (`sleep`) for up to `wait` seconds (by `clock`,
    the one `sleep` moves: a fake sleep comes with its fake clock); what is still open
    then, gone (404: past the hour records live) or unreachable is left to the
    request history. Nothing is sent."""
    everything = await io.ledgers(read, settle)
    view = read_view(everything)
    mine = {str(p) for p in settle}
    attempts = [a for a in view.unsettled()
                if str(a.ledger) in mine and a.ambiguous and a.request_id]  # fmt: skip
    if not attempts:
        return SettleReport()
    results: dict[Key, queue_client.Poll] = {}
    pending, began, polls = attempts, clock(), 0
    session = history.session
    while pending:
        answers = await asyncio.gather(
            *(queue_client.poll(session, base, history.key, a.request_id or "")
              for a in pending)
        )  # fmt: skip
        polls += len(pending)
        still = []
        for attempt, answer in zip(pending, answers, strict=True):
            if answer.state in ("COMPLETED", "FAILED"):
                results[attempt.key] = answer
            elif answer.state not in ("GONE", "ERROR"):
                still.append(attempt)  # queued or processing: it will end soon
        pending = still
        if not pending or clock() - began >= wait:
            break
        await sleep(random.uniform(queue_client.POLL_MIN_S, queue_client.POLL_MAX_S))
    if not results:
        return SettleReport(polls=polls)
    state = io.state(everything)
    targets = targets or targets_from_manifests(view.manifests)
    counts = {"recovered": 0, "billed": 0, "failed": 0}
    saved = charged = 0.0
    recovered: set[str] = set()
    failed: set[str] = set()  # failed for good (not the FAILED extra attempts of done jobs)
    by_job: dict[str, float] = {}  # decided ambiguous attempts: their jobs, their cost
    for path in sorted({a.ledger for a in attempts if a.key in results}):
        async with io.writer(path) as writer:
            for attempt in (a for a in attempts if a.ledger == path and a.key in results):
                answer = results[attempt.key]
                cost = answer.cost if answer.cost is not None else attempt.price
                done = state.is_done(attempt.job_id) or attempt.job_id in recovered
                if answer.state == "COMPLETED" and not done and answer.output is not None:
                    row = Row(attempt.request_id or "", "COMPLETED", cost, None,
                              answer.output, None)  # fmt: skip
                    if await recover(history, writer, attempt, row, targets, {"polled": True}):
                        counts["recovered"] += 1
                        saved += attempt.price or cost
                        charged += cost if attempt.ambiguous else 0.0  # as its line says
                        recovered.add(attempt.job_id)
                        if attempt.ambiguous:
                            charge(by_job, attempt.job_id, cost)
                    continue  # not fetched: the history step tries its generation_url
                charge(by_job, attempt.job_id, cost if answer.state == "COMPLETED" else 0.0)
                if answer.state == "COMPLETED":
                    counts["billed"] += 1
                    charged += cost
                    await writer.write(queued_line(attempt, "billed", cost))
                elif done:
                    counts["failed"] += 1
                    await writer.write(queued_line(attempt, "no", 0.0))
                else:
                    counts["failed"] += 1
                    failed.add(attempt.job_id)
                    await writer.write(failed_line(attempt, answer.error or "FAILED"))
    return SettleReport(
        recovered=counts["recovered"], saved=round(saved, 6), billed=counts["billed"],
        charged=round(charged, 6), failed=counts["failed"], polled=counts["recovered"],
        recovered_jobs=frozenset(recovered), polls=polls, charged_jobs=by_job,
        failed_jobs=frozenset(failed),
    )  # fmt: skip
