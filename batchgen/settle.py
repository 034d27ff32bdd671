"""Settlement: what the v1 API leaves ambiguous, settled from the service's request history.

A request whose answer was lost (a 502/504, a timeout after sending, a crash with it in
flight) may or may not have been billed: the ledger says `billed: "maybe"`, or has a
`started` line with no outcome. A paid image that could not be written is `unwritten`,
with the service's request id. The request history (`batchgen.history`) knows: each row
carries the request body as sent, the money charged, and a public URL of the image.

Matching. batchgen rebuilds an attempt's body from the job's parameters, as the ledger
recorded them (`started` lines carry them, a local image by its sha256): a row matches when
the canonical JSON of its `request_body`, with a base64 image replaced by the sha256 of
its bytes, equals the parameters' (compared first without the image, which is cheap), or
by the row's `request_id` when a line recorded one (`unwritten` lines; a success's
`x-request-id`). Only rows created at or after the earliest unsettled attempt's start,
less `CLOCK_SLACK_S`, count; rows whose ids a line already claims do not.

The verdict (`decide`, pure): per job, the COMPLETED rows left after the job's attempts
known to be billed without an id are the billed ones among its unsettled attempts, oldest
first. Past those, an attempt is NOT_BILLED once no PENDING row is left and its lag
(`history_lag`, default 30 s, from its outcome line, else from its `started` line) has
passed; until then it is UNKNOWN and the next scan decides. A billed attempt of a job not
done is recovered: its `generation_url` is downloaded (no key), checked as an answer is,
written atomically to the job's output path, and a `succeeded` line follows it with
`recovered: true`, the row's `request_id` and `credits_deduction` as `cost`. Nothing is
sent again.

Ledger lines (format `v: 1`; new fields and one new status only). Every settling line names
the attempt it settles, `"settles": {"started": TS, "attempt": N}` (the `ts` and `attempt` of
its `started` line, in the same ledger):

- `succeeded` with `recovered: true`, `request_id`, `settles`: the image was fetched;
- `settled` with `billed: "billed"`, `cost`, `request_id`: billed, no image needed (the job
  was done already, or another attempt's image was fetched, or the output has expired);
- `settled` with `billed: "no"`, `cost: 0`: not billed; the job runs again as it would have.

`summaries` counts an attempt as possibly billed until a line settles it; then as spent for
what the service charged, or not at all. So a report's money equals the service's.

The seam for settling inside a run (after a 502/504/timeout, before a retry pays again):
`Settler.settle(job_id, params, started_at, request_id=None)` returns a `Decision` for that
one attempt (BILLED with its row, NOT_BILLED or UNKNOWN); the runner waits out the lag,
asks, and on BILLED downloads `decision.row.generation_url` (`Settler.history.download`)
instead of retrying. `settle_ledgers` is the same engine over whole ledgers: `run` calls it
on resume, before anything is sent, and `batchgen reconcile` on its own.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any, Final

from batchgen import api, ledger, metadata, outputs, queue_client, runlock, uploads
from batchgen.errors import LedgerError, LockedError
from batchgen.history import DownloadError, History, HistoryUnavailable, Row
from batchgen.ledger import scan as ledger_scan
from batchgen.ledger import schema
from batchgen.ledger.fold import Attempt
from batchgen.ledger.schema import Billed
from batchgen.ledger_sink import LedgerSink

log = logging.getLogger("batchgen")

SETTLED: Final = schema.SETTLED
SUBMITTED: Final = schema.SUBMITTED  # a v2 request queued: its `request_id`, before a poll
QUEUE_WAIT_S: Final = 30.0  # on resume, how long to keep polling requests still queued
HISTORY_LAG_S: Final = 30.0  # a row shows up to this long after its request (pinned)
CLOCK_SLACK_S: Final = 120.0  # our clock and the service's may disagree by this much
RECOVERED_FOLDER: Final = "recovered"  # where an image goes when its job's path is unknown


class Verdict(Enum):
    BILLED = "billed"
    NOT_BILLED = "not billed"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Decision:
    attempt: Attempt
    verdict: Verdict
    row: Row | None = None
    recover: bool = False  # download the row's image for the job


# -- the pure decision -----------------------------------------------------------------


def decide(
    attempts: Sequence[Attempt],
    rows: Iterable[Row],
    *,
    now: float,
    lag: float = HISTORY_LAG_S,
    slack: float = CLOCK_SLACK_S,
    done: bool = False,
    settled: frozenset[tuple[str, str, int]] | set[tuple[str, str, int]] = frozenset(),
    by_id: Mapping[str, Row] | None = None,
) -> list[Decision]:
    """The verdict on each unsettled attempt of one job.

    `attempts`: every attempt the ledgers hold for the job; `rows`: the history's rows
    whose body is the job's and whose ids no line claims; `settled`: keys already settled;
    `done`: the job's image is in place; `by_id`: rows by id, for attempts with a known id
    (an `unwritten` one is billed, and only needs its image)."""
    pending_attempts = sorted(
        (a for a in attempts if a.ambiguous and a.key not in settled), key=lambda a: a.started_at
    )
    unwritten = [a for a in attempts if a.status == "unwritten" and a.key not in settled]
    if not pending_attempts and (done or not unwritten):
        return []
    begins = min(a.started_at for a in [*pending_attempts, *unwritten]) - slack
    known = sum(
        1 for a in attempts
        if a.billed == "billed" and a.request_id is None and a.started_at >= begins + slack
    )  # fmt: skip
    window = [r for r in rows if r.created_at is None or r.created_at >= begins]
    completed = sorted(
        (r for r in window if r.status == "COMPLETED"), key=lambda r: r.created_at or 0.0
    )[known:]
    pending = any(r.status == "PENDING" for r in window)
    # Every attempt of the window (the rows' own: from the first unsettled one less the
    # clock slack) has its finished row: the ones left without a COMPLETED row FAILED,
    # and need not wait out the lag. An attempt that never reached the service leaves
    # no row, so then the lag decides, as before.
    tried = sum(1 for a in attempts if a.started_at >= begins)
    finished = sum(1 for r in window if r.status in ("COMPLETED", "FAILED"))
    all_rows_in = not pending and finished >= tried
    decisions: list[Decision] = []
    for attempt in pending_attempts:
        if attempt.request_id is not None:  # a v2 request: its own row, by its id
            decisions.append(_by_own_id(attempt, (by_id or {}).get(attempt.request_id), now, lag))
        elif completed:
            decisions.append(Decision(attempt, Verdict.BILLED, completed.pop(0)))
        elif not all_rows_in and (pending or now < attempt.deadline(lag)):
            decisions.append(Decision(attempt, Verdict.UNKNOWN))
        else:
            decisions.append(Decision(attempt, Verdict.NOT_BILLED))
    if done:
        return decisions
    for index, decision in enumerate(decisions):
        if decision.verdict is Verdict.BILLED and decision.row and decision.row.generation_url:
            decisions[index] = Decision(decision.attempt, Verdict.BILLED, decision.row, True)
            return decisions
    for attempt in unwritten:  # paid and lost on our side: fetch it by its id
        row = (by_id or {}).get(attempt.request_id or "")
        if row is not None and row.status == "COMPLETED" and row.generation_url:
            return [*decisions, Decision(attempt, Verdict.BILLED, row, True)]
    return decisions


def _by_own_id(attempt: Attempt, row: Row | None, now: float, lag: float) -> Decision:
    """An attempt whose request id is known (v2 `submitted`): its row says, or, once
    the lag has passed with no row, it was not billed."""
    if row is not None and row.status == "COMPLETED":
        return Decision(attempt, Verdict.BILLED, row)
    if row is not None and row.status == "FAILED":
        return Decision(attempt, Verdict.NOT_BILLED, row)
    if row is not None or now < attempt.deadline(lag):
        return Decision(attempt, Verdict.UNKNOWN)
    return Decision(attempt, Verdict.NOT_BILLED)


# -- matching a row to a job -------------------------------------------------------------


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def params_keys(params: Mapping[str, Any]) -> tuple[str, str]:
    """(the parameters without the image, the image) in the form rows are compared in:
    a local image by the sha256 of its bytes, a URL as is."""
    rest = _canonical({k: v for k, v in params.items() if k != "image_file"})
    image = params.get("image_file")
    if isinstance(image, Mapping) and isinstance(image.get("sha256"), str):
        return rest, "sha256:" + image["sha256"]
    return rest, _canonical(image)


def body_keys(body: Mapping[str, Any], cache: dict[str, str] | None = None) -> tuple[str, str]:
    """The same keys of a request body as sent (a base64 or data: image decoded and
    hashed; `cache` keeps the digest of each image string already seen, and may be
    seeded with the asset URLs of uploaded images, `url -> "sha256:..."`)."""
    rest = _canonical({k: v for k, v in body.items() if k != "image_file"})
    image = body.get("image_file")
    if isinstance(image, str) and cache is not None and image in cache:
        return rest, cache[image]  # an asset URL batchgen uploaded is seeded in it
    if not isinstance(image, str) or api.is_url(image):
        return rest, _canonical(image)
    payload = image.partition(",")[2] if image.startswith("data:") else image
    try:
        digest = "sha256:" + hashlib.sha256(base64.b64decode(payload, validate=True)).hexdigest()
    except (binascii.Error, ValueError):
        digest = _canonical(image)
    if cache is not None:
        cache[image] = digest
    return rest, digest


# -- reading the ledgers ------------------------------------------------------------------


@dataclass
class LedgerView:
    """What settlement needs of the ledgers: every attempt of every job with something
    to settle, the keys already settled and the request ids lines claim."""

    attempts: dict[str, list[Attempt]] = field(default_factory=dict)
    settled: set[tuple[str, str, int]] = field(default_factory=set)
    claimed: set[str] = field(default_factory=set)
    manifests: dict[Path, list[tuple[str, str]]] = field(default_factory=dict)  # (name, sha)

    def unsettled(self) -> Iterator[Attempt]:
        for attempts in self.attempts.values():
            for attempt in attempts:
                if attempt.key not in self.settled and (
                    attempt.ambiguous or attempt.status == "unwritten"
                ):
                    yield attempt


def read_view(paths: Iterable[Path]) -> LedgerView:
    """Every attempt, in `paths`, of every job with something to settle in any of them
    (its lines in the other ledgers count too: a success there claims its request id).
    The candidates come from a scan that parses few lines; their attempts from the one
    fold every reader uses (`ledger.fold`)."""
    paths = list(paths)
    candidates: set[str] = set()
    for path in paths:
        candidates |= ledger_scan.candidates(path)
    if not candidates:
        return LedgerView()
    folded = ledger.fold(ledger.ledgers(paths), attempts_for=candidates)
    return LedgerView(folded.attempts, folded.settled, folded.claimed, folded.manifests)


# -- where a recovered image goes --------------------------------------------------------


class Targets:
    """Where a job's image goes: its output template under its out folder when the job
    is known (from the manifest), else `recovered/{job_id}.{ext}` beside the ledger."""

    def __init__(self, jobs: Mapping[str, tuple[Path, str]] | None = None) -> None:
        self._jobs = dict(jobs or {})

    def add(self, job_id: str, out: Path, template: str) -> None:
        self._jobs[job_id] = (out, template)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def place(self, job_id: str, ledger_path: Path, ext: str) -> tuple[str, str]:
        """(the output as the ledger records it: relative to its folder, the absolute path)."""
        folder = ledger_path.parent
        known = self._jobs.get(job_id)
        if known is None:
            relative = f"{RECOVERED_FOLDER}/{job_id}.{ext}"
            return relative, outputs.confine(str(folder.resolve()), relative)
        out, template = known
        relative = outputs.final_path(template, ext)
        where = PurePosixPath(os.path.relpath(out, folder)).as_posix()
        recorded = relative if where == "." else f"{where}/{relative}"
        return recorded, outputs.confine(str(out.resolve()), relative)


# -- the engine --------------------------------------------------------------------------


@dataclass(frozen=True)
class SettleReport:
    """What one settlement pass did."""

    recovered: int = 0  # images downloaded instead of paid again
    saved: float = 0.0  # what those would have cost again
    billed: int = 0  # other attempts found billed (no image needed, or none to be had)
    not_billed: int = 0
    unknown: int = 0  # left for the next scan (pending, or within the lag)
    lost: int = 0  # billed, but the image could not be fetched or written: runs again
    unavailable: str | None = None  # why the history could not be read
    skipped_ledgers: tuple[str, ...] = ()  # locked by a run: left alone
    recovered_jobs: frozenset[str] = frozenset()
    unknown_jobs: frozenset[str] = frozenset()
    retry_at: float | None = None  # when a new scan could decide an unknown one
    history_calls: int = 0
    polled: int = 0  # of `recovered`: v2 requests downloaded by polling their recorded id
    failed: int = 0  # v2 requests that ended FAILED (not billed): their jobs failed for good
    polls: int = 0  # v2 result GETs made (free)

    @property
    def settled(self) -> int:
        return self.recovered + self.billed + self.not_billed + self.failed

    def then(self, later: SettleReport) -> SettleReport:
        """Two steps of one pass as one: counts added, the rest from `later`."""
        return replace(
            later, recovered=self.recovered + later.recovered,
            saved=round(self.saved + later.saved, 6), billed=self.billed + later.billed,
            not_billed=self.not_billed + later.not_billed, lost=self.lost + later.lost,
            unknown=self.unknown + later.unknown, polled=self.polled + later.polled,
            failed=self.failed + later.failed, polls=self.polls + later.polls,
            recovered_jobs=self.recovered_jobs | later.recovered_jobs,
            unknown_jobs=self.unknown_jobs | later.unknown_jobs,
            history_calls=self.history_calls + later.history_calls,
        )  # fmt: skip

    def line(self) -> str:
        """`settled 7 requests: 5 completed (downloaded, $0.32 not paid twice), 2 not billed`"""
        if self.unavailable is not None:
            return f"cannot settle from the request history: {self.unavailable}"
        parts = []
        if self.recovered:
            by_id = f"; {self.polled} by their v2 request id" if self.polled else ""
            parts.append(f"{self.recovered} completed (downloaded, ${self.saved:,.2f} not paid "
                         f"twice{by_id})")  # fmt: skip
        if self.failed:
            parts.append(f"{self.failed} FAILED (not billed; failed for good)")
        if self.billed:
            parts.append(f"{self.billed} billed (no image needed)")
        if self.not_billed:
            parts.append(f"{self.not_billed} not billed")
        words = f"settled {self.settled} request{'s' if self.settled != 1 else ''}"
        text = f"{words}: {', '.join(parts)}" if parts else words
        if self.unknown:
            text += f"; {self.unknown} still unknown (the history has no final word yet)"
        if self.lost:
            text += f"; {self.lost} billed images could not be fetched (their jobs run again)"
        return text


Clock = Callable[[], float]


class LedgerIO:
    """Where settlement reads and writes: this class, the local files; an object store's
    objects (`remote.StoreIO`) override it.

    - `ledgers(read, settle)`: the ledgers to read, as of now (a local file is read
      where it lies; a store's are read again, as `objstore.StoredLedger`s, once lines
      were written since);
    - `state(paths)`: what is done, by the ledgers `paths` and the images they name;
    - `writer(path)`: the one writer of the ledger `path` (a `ledger_sink.LedgerSink`)
      for settlement lines, a recovered image put in place by it before its
      `succeeded` line (`submit(record, output=...)`: a file, or one PUT);
    - `assets(paths)`: url -> sha256 of the images uploaded from their out folders."""

    async def ledgers(self, read: Sequence[Path], settle: Sequence[Path]) -> list[Path]:
        return sorted({*read, *settle})

    def state(self, paths: Sequence[Path]) -> ledger.LedgerState:
        return ledger.load_state(paths)

    def writer(self, path: Path) -> AbstractAsyncContextManager[LedgerSink]:
        return ledger.LedgerWriter(path)

    def assets(self, paths: Sequence[Path]) -> Mapping[str, str]:
        return uploads.digests_by_url(p.parent for p in paths)


class Settler:
    """Settles attempts against one history. `settle` is the seam for one attempt (the
    runner's, later); `settle_ledgers` does every unsettled attempt of some ledgers,
    reading and writing them through `io` (the local files unless told otherwise)."""

    def __init__(
        self,
        history: History,
        *,
        lag: float = HISTORY_LAG_S,
        slack: float = CLOCK_SLACK_S,
        clock: Clock = time.time,
        io: LedgerIO | None = None,
    ) -> None:
        self.history, self.lag, self.slack, self.clock = history, lag, slack, clock
        self.io = io or LedgerIO()

    async def settle(
        self,
        job_id: str,
        params: Mapping[str, Any],
        started_at: float,
        *,
        request_id: str | None = None,
        ended_at: float | None = None,
        model: str | None = None,
    ) -> Decision:
        """The verdict on one ambiguous attempt (its row by id when known, else by its
        body). Raises HistoryUnavailable."""
        attempt = Attempt(Path(), job_id, "", 0, started_at, params, model=model,
                          billed="maybe", ended_at=ended_at)  # fmt: skip
        if request_id is not None:
            row = await self.history.row(request_id)
            rows = [row] if row is not None else []
        else:
            rows = await self.history.scan(
                since=started_at - self.slack, until=self.clock(), model=model
            )
            wanted = params_keys(params)
            rows = [r for r in rows if r.body is not None and body_keys(r.body) == wanted]
        (decision,) = decide([attempt], rows, now=self.clock(), lag=self.lag, slack=self.slack,
                             done=True)  # fmt: skip
        return decision

    async def settle_ledgers(
        self,
        settle: Sequence[Path],
        read: Sequence[Path],
        targets: Targets | None = None,
        assets: Mapping[str, str] | None = None,
    ) -> SettleReport:
        """Settle every unsettled attempt in the ledgers `settle` (whose run locks the
        caller holds), with `read` (every ledger of the out folder) for what is done and
        which ids are claimed. `assets` (url -> sha256), with the asset cache beside each
        ledger, names the images requests carried as uploaded URLs (`--upload-images`).
        Appends lines; rewrites nothing. Never raises for the history: an unreadable one
        is `SettleReport.unavailable`."""
        everything = await self.io.ledgers(read, settle)
        view = read_view(everything)
        mine = {str(p) for p in settle}
        attempts = [a for a in view.unsettled() if str(a.ledger) in mine]
        if not attempts:
            return SettleReport()
        state = self.io.state(everything)
        claimed = view.claimed
        targets = targets or targets_from_manifests(view.manifests)
        now = self.clock()
        since = min(a.started_at for a in attempts) - self.slack
        models = {a.model for a in attempts}
        try:
            rows = await self.history.scan(
                since=since, until=now, model=models.pop() if len(models) == 1 else None
            )
            by_id = {row.request_id: row for row in rows}
            for attempt in attempts:  # an id the scan missed (older, another model)
                rid = attempt.request_id
                if (
                    (attempt.status == "unwritten" or attempt.ambiguous)
                    and rid
                    and rid not in by_id
                ):
                    found = await self.history.row(rid)
                    if found is not None:
                        by_id[rid] = found
        except HistoryUnavailable as err:
            return SettleReport(unavailable=str(err), history_calls=self.history.calls)
        known = {**self.io.assets(everything), **(assets or {})}
        by_job = _rows_by_job(view, {a.job_id for a in attempts}, rows, claimed, known)
        decisions: list[Decision] = []
        for job_id in sorted({a.job_id for a in attempts}):
            job_attempts = [a for a in view.attempts[job_id] if str(a.ledger) in mine]
            decisions += decide(
                job_attempts, by_job.get(job_id, []), now=now, lag=self.lag, slack=self.slack,
                done=state.is_done(job_id), settled=view.settled, by_id=by_id,
            )  # fmt: skip
        return await self._apply(decisions, targets, now)

    async def _apply(self, decisions: list[Decision], targets: Targets, now: float) -> SettleReport:
        counts = {"recovered": 0, "billed": 0, "not_billed": 0, "unknown": 0, "lost": 0}
        saved = 0.0
        recovered: set[str] = set()
        unknown: set[str] = set()
        retry_at: float | None = None
        by_ledger: dict[Path, list[Decision]] = {}
        for decision in decisions:
            by_ledger.setdefault(decision.attempt.ledger, []).append(decision)
        for path, mine in by_ledger.items():
            async with self.io.writer(path) as writer:
                for decision in mine:
                    attempt, row = decision.attempt, decision.row
                    if decision.verdict is Verdict.UNKNOWN:
                        counts["unknown"] += 1
                        unknown.add(attempt.job_id)
                        moment = max(attempt.deadline(self.lag), now + 1.0)
                        retry_at = moment if retry_at is None else min(retry_at, moment)
                        continue
                    if decision.recover and row is not None:
                        if await self._recover(writer, attempt, row, targets):
                            counts["recovered"] += 1
                            saved += attempt.price or row.cost
                            recovered.add(attempt.job_id)
                            continue
                        counts["lost"] += 1
                        if not attempt.ambiguous:
                            continue  # an unwritten one: its money is counted already
                    elif decision.verdict is Verdict.BILLED:
                        counts["billed"] += 1
                    else:
                        counts["not_billed"] += 1
                    await writer.write(settled_line(decision))
        return SettleReport(
            recovered=counts["recovered"], saved=round(saved, 6), billed=counts["billed"],
            not_billed=counts["not_billed"], unknown=counts["unknown"], lost=counts["lost"],
            recovered_jobs=frozenset(recovered), unknown_jobs=frozenset(unknown),
            retry_at=retry_at, history_calls=self.history.calls,
        )  # fmt: skip

    async def _recover(
        self,
        writer: LedgerSink,
        attempt: Attempt,
        row: Row,
        targets: Targets,
        extra: Mapping[str, Any] | None = None,
    ) -> bool:
        """Download the row's image and put it in place, its `succeeded` line after it."""
        assert row.generation_url is not None
        try:
            image = await self.history.download(row.generation_url)
        except DownloadError as err:
            log.warning("batchgen: cannot fetch the image of request %s (job %s): %s",
                        row.request_id, attempt.job_id[:12], err)  # fmt: skip
            return False
        kind = api.sniff_image(image)
        assert kind is not None  # download checked it
        recorded, target = targets.place(attempt.job_id, attempt.ledger, api.EXTENSIONS[kind])
        params = dict(attempt.params)
        image_ref = params.get("image_file")
        source = image_ref.get("path") if isinstance(image_ref, dict) else image_ref
        provenance = {**params, "model": attempt.model, "job_id": attempt.job_id,
                      "source": source}  # fmt: skip
        body = metadata.embed(image, kind, provenance)
        record = {**recovered_line(attempt, row, recorded, body), **(extra or {})}
        failure = await writer.submit(record, output=(target, body))
        if failure is not None:
            log.warning("batchgen: recovered the image of job %s but cannot write it: %s",
                        attempt.job_id[:12], failure)  # fmt: skip
            return False
        return True

    async def collect_queued(
        self,
        settle: Sequence[Path],
        read: Sequence[Path],
        targets: Targets | None,
        base: str,
        *,
        wait: float = QUEUE_WAIT_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> SettleReport:
        """The first step on resume, before the history: every ambiguous attempt with a
        recorded v2 request id (a `submitted` line and no outcome: a crash; or lost while
        polling) is polled at `base`. COMPLETED: its image is downloaded (no key) and put
        in place with a `succeeded` line (`recovered`, `polled`, its request id and
        `metrics.cost`); FAILED: a `failed` line, for good, not billed. Requests still
        queued are polled again every 1-2 s for up to `wait` seconds; what is still open
        then, gone (404: past the hour records live) or unreachable is left to the
        request history. Nothing is sent."""
        everything = await self.io.ledgers(read, settle)
        view = read_view(everything)
        mine = {str(p) for p in settle}
        attempts = [a for a in view.unsettled()
                    if str(a.ledger) in mine and a.ambiguous and a.request_id]  # fmt: skip
        if not attempts:
            return SettleReport()
        results: dict[tuple[str, str, int], queue_client.Poll] = {}
        pending, began, polls = attempts, time.monotonic(), 0
        session = self.history.session
        while pending:
            answers = await asyncio.gather(
                *(queue_client.poll(session, base, self.history.key, a.request_id or "")
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
            if not pending or time.monotonic() - began >= wait:
                break
            await sleep(random.uniform(queue_client.POLL_MIN_S, queue_client.POLL_MAX_S))
        if not results:
            return SettleReport(polls=polls)
        state = self.io.state(everything)
        targets = targets or targets_from_manifests(view.manifests)
        counts = {"recovered": 0, "billed": 0, "failed": 0}
        saved = 0.0
        recovered: set[str] = set()
        for path in sorted({a.ledger for a in attempts if a.key in results}):
            async with self.io.writer(path) as writer:
                for attempt in (a for a in attempts if a.ledger == path and a.key in results):
                    answer = results[attempt.key]
                    cost = answer.cost if answer.cost is not None else attempt.price
                    done = state.is_done(attempt.job_id) or attempt.job_id in recovered
                    if answer.state == "COMPLETED" and not done and answer.output is not None:
                        row = Row(attempt.request_id or "", "COMPLETED", cost, None,
                                  answer.output, None)  # fmt: skip
                        if await self._recover(writer, attempt, row, targets, {"polled": True}):
                            counts["recovered"] += 1
                            saved += attempt.price or cost
                            recovered.add(attempt.job_id)
                        continue  # not fetched: the history step tries its generation_url
                    if answer.state == "COMPLETED":
                        counts["billed"] += 1
                        await writer.write(_queued_line(attempt, "billed", cost))
                    elif done:
                        counts["failed"] += 1
                        await writer.write(_queued_line(attempt, "no", 0.0))
                    else:
                        counts["failed"] += 1
                        await writer.write(failed_line(attempt, answer.error or "FAILED"))
        return SettleReport(
            recovered=counts["recovered"], saved=round(saved, 6), billed=counts["billed"],
            failed=counts["failed"], polled=counts["recovered"],
            recovered_jobs=frozenset(recovered), polls=polls,
        )  # fmt: skip


def _settles(attempt: Attempt) -> schema.Settles:
    return {"started": attempt.started, "attempt": attempt.attempt}


def _queued_line(attempt: Attempt, billed: Billed, cost: float) -> dict[str, Any]:
    """A `settled` line for a v2 request whose end its poll told."""
    return schema.settled(attempt.job_id, billed=billed, cost=cost,
                          request_id=attempt.request_id, history_status=None,
                          settles=_settles(attempt), polled=True)  # fmt: skip


def failed_line(attempt: Attempt, error: str) -> dict[str, Any]:
    """The `failed` line of a v2 request that ended FAILED: for good, not billed."""
    return schema.failed(attempt.job_id, error=error, http_status=422, retryable=False,
                         attempts=attempt.attempt, billed="no", cost=0.0,
                         params=dict(attempt.params), request_id=attempt.request_id,
                         settles=_settles(attempt))  # fmt: skip


def recovered_line(attempt: Attempt, row: Row, output: str, body: bytes) -> dict[str, Any]:
    """The `succeeded` line of an image fetched from the history."""
    return schema.recovered(
        attempt.job_id, output=output,
        cost=row.cost if attempt.ambiguous else 0.0,  # an unwritten one was counted
        size=len(body), sha256=hashlib.sha256(body).hexdigest(), attempts=attempt.attempt,
        request_id=row.request_id, params=dict(attempt.params), settles=_settles(attempt),
    )  # fmt: skip


def settled_line(decision: Decision) -> dict[str, Any]:
    attempt, row = decision.attempt, decision.row
    billed = decision.verdict is not Verdict.NOT_BILLED
    return schema.settled(
        attempt.job_id, billed="billed" if billed else "no",
        cost=row.cost if billed and row is not None else 0.0,
        request_id=row.request_id if row is not None else None,
        history_status=row.status if row is not None else None, settles=_settles(attempt),
    )  # fmt: skip


def _rows_by_job(
    view: LedgerView,
    jobs: set[str],
    rows: Sequence[Row],
    claimed: set[str],
    assets: Mapping[str, str] | None = None,
) -> dict[str, list[Row]]:
    """The unclaimed rows whose bodies are each job's: the parameters compared first,
    so only a candidate's image is decoded and hashed; an uploaded image's URL
    (`assets`, url -> sha256) stands for its digest."""
    wanted: dict[str, dict[str, list[str]]] = {}  # rest -> image -> jobs
    for job_id in jobs:
        params = next((a.params for a in view.attempts[job_id] if a.params), None)
        if params is None:
            continue
        rest, image = params_keys(params)
        wanted.setdefault(rest, {}).setdefault(image, []).append(job_id)
    found: dict[str, list[Row]] = {}
    cache = {url: "sha256:" + digest for url, digest in (assets or {}).items()}
    for row in rows:
        if row.body is None or row.request_id in claimed:
            continue
        rest = _canonical({k: v for k, v in row.body.items() if k != "image_file"})
        if rest not in wanted:
            continue
        _, image = body_keys(row.body, cache)
        for job_id in wanted[rest].get(image, []):
            found.setdefault(job_id, []).append(row)
    return found


def targets_from_manifests(manifests: Mapping[Path, list[tuple[str, str]]]) -> Targets:
    """Job output paths from the manifests the ledgers' `run` lines name, when they are
    still there with the same digest (tried as given, and from the ledger's folder)."""
    from batchgen import grid, manifest

    targets = Targets()
    for ledger_path, named in manifests.items():
        for name, digest in dict.fromkeys(named):
            for candidate in (Path(name), ledger_path.parent.parent / name):
                try:
                    if hashlib.sha256(candidate.read_bytes()).hexdigest() != digest:
                        continue
                    loaded = manifest.load(candidate, exclude=(ledger_path.parent,))
                    for job in grid.expand(loaded, check_paths=False):
                        if job.job_id not in targets:
                            targets.add(job.job_id, ledger_path.parent, job.output)
                except Exception:  # a guess that failed (gone, changed, invalid): the fallback
                    continue
                break
    return targets


@contextlib.contextmanager
def lockable(paths: Iterable[Path], held: Iterable[Path] = ()) -> Iterator[list[Path]]:
    """The ledgers among `paths` this process may append to: those in `held` (locked by
    the caller), and each other one whose run lock is free, held for the block. A ledger
    another run holds is left out (its attempts may be in flight right now)."""
    mine = {Path(p) for p in held}
    with contextlib.ExitStack() as stack:
        usable: list[Path] = []
        for path in paths:
            if path in mine:
                usable.append(path)
                continue
            try:
                stack.enter_context(runlock.hold(path))
            except (LockedError, LedgerError) as err:
                log.info("batchgen: %s", err)
                continue
            usable.append(path)
        yield usable


async def settle_out(
    paths: Sequence[Path],
    *,
    api_key: str,
    history_base: str | None = None,
    lag: float = HISTORY_LAG_S,
    held: Iterable[Path] = (),
    targets: Targets | None = None,
    clock: Clock = time.time,
    queue_base: str | None = None,
    queue_wait: float = QUEUE_WAIT_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    assets: Mapping[str, str] | None = None,
    io: LedgerIO | None = None,
    only: Sequence[Path] | None = None,
) -> SettleReport:
    """One settlement pass over the ledgers `paths` of an out folder: those this process
    holds or can lock are settled, the rest only read. With `queue_base` (the v2 base),
    recorded v2 request ids are polled first (`Settler.collect_queued`). `assets`: see
    `settle_ledgers`. `io` and `only`: ledgers on an object store (`remote.StoreIO`),
    of which only those in `only` are settled (their leases the caller holds: a store
    has no run locks to take), the rest read."""

    async def settle(usable: Sequence[Path]) -> SettleReport:
        async with History(api_key=api_key, base=history_base) as history:
            settler = Settler(history, lag=lag, clock=clock, io=io)
            first = SettleReport()
            if queue_base is not None:
                first = await settler.collect_queued(
                    usable, paths, targets, queue_base, wait=queue_wait, sleep=sleep
                )
            try:
                report = await settler.settle_ledgers(usable, paths, targets, assets)
            except HistoryUnavailable as err:  # never into a run
                report = SettleReport(unavailable=str(err))
            return first.then(report)

    if only is not None:
        return await settle(only)
    with lockable(paths, held) as usable:
        skipped = tuple(str(p) for p in paths if p not in usable)
        report = await settle(usable)
    if skipped:
        report = replace(report, skipped_ledgers=skipped)
    return report
