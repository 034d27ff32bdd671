"""The library's front door: `plan`, `run`, `run_async`, `report` (and `jobs`, `credits`).

Every rule that keeps a user from paying twice lives behind these calls, not behind
argparse: the run lock, resume state from every ledger under `out`, output paths that
another job's paid image owns, room on disk before the first request, the budget,
shards. The CLI is a thin client of them; so is the demo.

    import batchgen

    plan = batchgen.plan("jobs/grid.yaml", out="results")      # no network
    result = batchgen.run("jobs/grid.yaml", out="results")      # $SEGMIND_API_KEY
    summary = batchgen.report("results")                        # from ledgers alone
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

import yarl

from batchgen import (
    account,
    api,
    events,
    grid,
    ledger,
    manifest,
    objstore,
    outputs,
    queue_client,
    retry,
    runlock,
    settle,
    shard,
    summaries,
    uploads,
)
from batchgen import history as history_client
from batchgen.api import TYPICAL_LATENCY_S
from batchgen.batch import BatchConfig, BatchResult, run_batch
from batchgen.errors import InputError, Problem
from batchgen.grid import Job
from batchgen.images import EncodedImages
from batchgen.manifest import Manifest
from batchgen.pacing import Clock, Sleep
from batchgen.planning import ImageTally, Plan, make_plan
from batchgen.runner import RunOptions
from batchgen.stops import Stop, StopReason

log = logging.getLogger("batchgen")

DEFAULT_CONCURRENCY = 64  # a maximum: the window in flight follows the rate (adaptive.py)
MAX_OWNER_PROBLEMS = 10  # a whole folder of them says the same thing

ManifestSource = str | os.PathLike[str] | Manifest


@dataclass(frozen=True)
class RunResult:
    """What one run did. Counts are this run's own work: a rerun of a finished batch
    has `succeeded == 0` and `skipped_done == plan.jobs`, and sent nothing."""

    plan: Plan
    out: Path | str  # a str for an object store's URL (`s3://bucket/prefix`)
    ledger: Path | str
    succeeded: int = 0
    failed: int = 0
    skipped_done: int = 0  # done by an earlier run, its image still on disk
    skipped_failed: int = 0  # failed for good earlier; `retry_failed=True` runs them
    not_run: int = 0  # left for the next run because this one stopped early
    unwritten: int = 0  # paid for, but the image could not be written
    spent: float = 0.0  # USD the service charged for this run's requests
    possibly_billed: float = 0.0  # USD of 502/504s and timeouts that may have been charged
    requests: int = 0
    throttled: int = 0  # answers that were 429
    failures: dict[tuple[int | None, str], int] = field(default_factory=dict)  # (status, text)
    remaining_credits: str | None = None  # as the service last said
    stopped: Stop | None = None  # why the run stopped early; None when it ran to the end
    seconds: float = 0.0
    run_id: str | None = None  # None when nothing ran (not confirmed)
    settlement: settle.SettleReport | None = None  # what the request history settled first
    held_back: int = 0  # jobs not sent: an earlier request of theirs may still be billed
    uploaded: int = 0  # local images uploaded by this run (upload_images=True)

    @classmethod
    def of(
        cls, batch: BatchResult, plan: Plan, out: Path | str, ledger_path: Path | str
    ) -> RunResult:
        t = batch.totals
        return cls(
            plan, out, ledger_path, t.succeeded, t.failed, t.skipped_done, t.skipped_failed,
            t.not_run, t.unwritten, round(t.spent, 6), round(t.possibly_billed, 6), t.requests,
            t.throttled, dict(t.failures), t.remaining_credits, t.stopped, batch.seconds,
            batch.run_id,
        )  # fmt: skip


@dataclass(frozen=True)
class _Prepared:
    """Everything checked before a single request: manifest, ledgers, collisions, shard."""

    manifest: Manifest
    shard: shard.Shard | None
    ledger_path: Path
    state: ledger.LedgerState
    plan: Plan
    tally: ImageTally | None = None  # with upload_images: the images of the jobs to run

    def jobs(self) -> Iterator[Job]:
        return _shard_jobs(self.manifest, self.shard, check_paths=False)


# -- the dry run ---------------------------------------------------------------------


def plan(
    manifest: ManifestSource,
    *,
    out: str | os.PathLike[str] | None = None,
    ledger: str | os.PathLike[str] | None = None,
    retry_failed: bool = False,
    concurrency: int | None = None,
    rpm: float | None = None,
    rpm_total: float | None = None,
    shard: str | None = None,
    shard_count: int | None = None,
    upload_images: bool = False,
    api_base: str | None = None,
    storage_base: str | None = None,
) -> Plan:
    """What a batch holds, what is already done (from every ledger in `out`, or the one
    `ledger`), what the rest will cost and about how long it takes. No network.

    `shard` ("I/N" or "auto") plans one shard; `shard_count` alone plans the split.
    `upload_images`: also what a run with it would upload and save (`Plan.uploads`;
    images uploaded before to the storage `storage_base`/`api_base` name, as the cache
    under `out` says, are not counted again).
    Raises InputError (every problem of the manifest at once) or LedgerError."""
    owned = _shard(shard, shard_count)
    if objstore.is_url(out):  # an object store: batchgen.remote
        from batchgen import remote

        _no_ledger_option(ledger)
        return remote.plan(
            str(out), manifest, owned=owned, retry_failed=retry_failed, concurrency=concurrency,
            rpm=_rate(rpm, rpm_total, owned), split_into=shard_count if owned is None else None,
        )  # fmt: skip
    out_path = _path(out)
    tally = None
    if upload_images:
        storage = _storage_base(storage_base, _base(api_base))
        tally = ImageTally(uploads.known(out_path, storage))
    return _prepare(
        manifest, out=out_path, ledger_file=_path(ledger), owned=owned,
        retry_failed=retry_failed, concurrency=concurrency,
        rpm=_rate(rpm, rpm_total, owned), split_into=shard_count if owned is None else None,
        tally=tally,
    ).plan  # fmt: skip


def jobs(
    manifest: ManifestSource,
    *,
    out: str | os.PathLike[str] | None = None,
    shard: str | None = None,
    shard_count: int | None = None,
) -> Iterator[Job]:
    """Every job of the manifest (or of one shard), lazily, with its id and output path;
    output paths are checked as they come (InputError at the first bad one)."""
    loaded = _load(manifest, _path(out))
    return _shard_jobs(loaded, _shard(shard, shard_count), check_paths=True)


# -- the run ---------------------------------------------------------------------------


async def run_async(
    manifest: ManifestSource,
    *,
    out: str | os.PathLike[str],
    api_key: str | None = None,
    api_base: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    rpm: float | None = None,
    rpm_total: float | None = None,
    max_cost: float | None = None,
    max_attempts: int = retry.MAX_ATTEMPTS,
    timeout: float = retry.REQUEST_TIMEOUT_S,  # noqa: ASYNC109 (per request, not this call)
    outage_limit: float = retry.OUTAGE_LIMIT_S,
    retry_failed: bool = False,
    ledger: str | os.PathLike[str] | None = None,
    shard: str | None = None,
    shard_count: int | None = None,
    wait_lock: float = 0.0,
    reconcile: bool = True,
    history_base: str | None = None,
    history_lag: float = settle.HISTORY_LAG_S,
    api: str = "v1",
    typical_latency: float = TYPICAL_LATENCY_S,
    upload_images: bool = False,
    storage_base: str | None = None,
    on_event: events.Listener | None = None,
    confirm: Callable[[Plan], bool] | None = None,
    handle_signals: bool = False,
    sleep: Sleep | None = None,
    clock: Clock | None = None,
) -> RunResult:
    """Run every job of `manifest` that is not done yet into `out`; rerunning resumes.

    The key is `api_key`, else $SEGMIND_API_KEY; the API `api_base`, else
    $SEGMIND_API_BASE, else Segmind's. Options mean what the CLI's flags of the same
    names mean (`batchgen run --help`). `on_event` receives the runner's events (frozen
    dataclasses in `batchgen.events`; `RunPlanned` first). `confirm` is asked with the
    plan before anything is sent; False ends the run there (`StopReason.NOT_CONFIRMED`).
    `handle_signals` installs SIGINT/SIGTERM handlers (the first drains, a second
    aborts): only in the main thread, which is why it is off unless asked. `sleep` and
    `clock` are seams for tests and simulations.

    Before anything is sent, every attempt the ledgers leave ambiguous (a 502/504 or a
    timeout that may have been billed, a crash with requests in flight, a paid image not
    written) is settled from the service's request history (`reconcile=False` skips it):
    billed images are downloaded instead of paid again. The history is at `history_base`,
    else $SEGMIND_HISTORY_BASE, else Segmind's (or, for a custom `api_base`, its root);
    `history_lag` is how long a row may take to show. An unreachable history is one
    warning, and the run goes on as without it.

    `api="v2"` sends through Segmind's queue (the API base with its `/v1` made `/v2`):
    each request's id is made durable (a `submitted` line) before it is polled, the first
    poll about `typical_latency` seconds after the submission, and the image is then
    downloaded; a resume polls the ids a killed run left and downloads what completed,
    before anything is sent (part of the settlement; `reconcile=False` skips it too).

    `upload_images`: every local image the jobs to run use is uploaded once to the
    asset storage (`storage_base`, else $SEGMIND_STORAGE_BASE, else Segmind's, or for a
    custom `api_base` its root), after `confirm` and before any request, and requests
    carry its URL instead of its base64. Asset URLs are public. URLs are cached in
    `out/.batchgen-assets.json`, so a resume uploads nothing again. Job ids, plans and
    ledgers are the same with it or without. A failed upload stops the run before
    anything is sent (`StopReason.UPLOAD`).

    Raises InputError for bad input (nothing sent), LockedError when another run holds
    the ledger (nothing sent), LedgerError for a ledger that cannot be trusted."""
    emit = on_event or events.ignore
    key = _key(api_key)
    base = _base(api_base)
    queue_base = _queue_base(api, base)
    storage = _storage_base(storage_base, base) if upload_images else None
    owned = _shard(shard, shard_count)
    if objstore.is_url(out):  # an object store: the same rules, in batchgen.remote
        from batchgen import remote

        _no_ledger_option(ledger)
        hooks: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
        if clock is not None:
            hooks["clock"] = clock
        return await remote.run(
            str(out), manifest, api_key=key, api_base=base, owned=owned,
            options=RunOptions(concurrency, max_cost, max_attempts, retry_failed, outage_limit),
            rpm=_rate(rpm, rpm_total, owned), timeout=timeout, wait_lock=wait_lock, emit=emit,
            confirm=confirm, handle_signals=handle_signals, seams=hooks,
        )  # fmt: skip
    out_path = Path(out)
    ledger_path = _written_ledger(owned, out_path, _path(ledger))
    async with _locked(ledger_path, wait_lock, emit):  # before any state is read
        settled: settle.SettleReport | None = None
        if reconcile:
            manifest = _load(manifest, out_path)
            settled = await _settle_first(
                manifest, owned, out_path, ledger_path, _path(ledger), key,
                _history_base(history_base, base), history_lag, emit, sleep, queue_base,
            )  # fmt: skip
        prepared = _prepare(
            manifest, out=out_path, ledger_file=_path(ledger), owned=owned,
            retry_failed=retry_failed, concurrency=concurrency, rpm=_rate(rpm, rpm_total, owned),
            tally=ImageTally(uploads.known(out_path, storage)) if storage else None,
        )  # fmt: skip
        the_plan = prepared.plan
        _check_room(out_path, the_plan.to_run)
        emit(events.RunPlanned(the_plan, _cut_in_flight(prepared)))
        if confirm is not None and not confirm(the_plan):
            stop = Stop(StopReason.NOT_CONFIRMED, "not confirmed; nothing sent")
            return RunResult(the_plan, out_path, ledger_path, stopped=stop, settlement=settled)
        encoded = EncodedImages()
        uploaded = 0
        if storage is not None and prepared.tally is not None and prepared.tally.needed:
            try:
                done = await uploads.upload_images(
                    prepared.tally.needed.values(), api_key=key, base=storage, out=out_path,
                    encoded=encoded, sleep=sleep or asyncio.sleep,
                )  # fmt: skip
            except uploads.UploadError as err:
                stop = Stop(StopReason.UPLOAD, f"cannot upload the input images: {err}; "
                            "nothing sent")  # fmt: skip
                return RunResult(the_plan, out_path, ledger_path, not_run=the_plan.to_run,
                                 stopped=stop, settlement=settled)  # fmt: skip
            encoded.urls.update(done.urls)
            encoded.clear()  # the base64 is sent no more: the URLs stand for it
            uploaded = done.uploaded
            emit(events.ImagesUploaded(done.uploaded, done.uploaded_bytes, done.cached))
        seams: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
        if clock is not None:
            seams["clock"] = clock
        rate = _rate(rpm, rpm_total, owned)
        defer = reconcile and (settled is None or settled.unavailable is None)
        batches: list[BatchResult] = []
        in_run: list[settle.SettleReport] = []
        while True:
            last_round = len(batches) + 1 >= SETTLE_ROUNDS
            config = BatchConfig(
                manifest=prepared.manifest,
                out=out_path,
                ledger_path=ledger_path,
                api_base=base,
                api_key=key,
                options=RunOptions(concurrency, max_cost, max_attempts, retry_failed,
                                   outage_limit, defer_ambiguous=defer and not last_round),
                rpm=rate,
                timeout=timeout,
                shard=str(owned) if owned else None,
                api=api,
                typical_latency=typical_latency,
            )  # fmt: skip
            held = settled.unknown_jobs if settled is not None else frozenset()
            jobs = (job for job in prepared.jobs() if job.job_id not in held)
            batch = await run_batch(
                config, jobs, prepared.state, on_event=emit, handle_signals=handle_signals,
                to_run=prepared.plan.to_run, images=encoded, **seams,
            )  # fmt: skip
            batches.append(batch)
            if not batch.totals.deferred or batch.totals.stopped is not None:
                break
            # Requests whose answers were lost: the history says whether they were billed
            # (their images are downloaded) before anything is sent for them again.
            report = await _settle_first(
                prepared.manifest, owned, out_path, ledger_path, _path(ledger), key,
                _history_base(history_base, base), history_lag, emit, sleep, queue_base,
            )  # fmt: skip
            in_run.append(report)
            settled = report if settled is None else _merged(settled, report)
            defer = report.unavailable is None
            prepared = _prepare(
                prepared.manifest, out=out_path, ledger_file=_path(ledger), owned=owned,
                retry_failed=retry_failed, concurrency=concurrency, rpm=rate,
            )  # fmt: skip
    result = _combined(batches, in_run, the_plan, out_path, ledger_path, the_plan.price)
    return replace(result, settlement=settled, held_back=len(held), uploaded=uploaded)


SETTLE_ROUNDS = 3  # a pass, then up to two more for what settlement found not billed


def _combined(
    batches: list[BatchResult],
    settled: list[settle.SettleReport],
    plan: Plan,
    out: Path,
    ledger_path: Path,
    price: float,
) -> RunResult:
    """One result for the passes of a run: what the first found done or failed before,
    what all of them did, what the last left; the money of attempts settled in the run
    moved from possibly billed to spent, or to nothing."""
    first, last = batches[0].totals, batches[-1].totals
    failures: Counter[tuple[int | None, str]] = Counter()
    for batch in batches:
        failures.update(batch.totals.failures)
    recovered = sum(r.recovered for r in settled)
    billed = recovered + sum(r.billed for r in settled)
    decided = billed + sum(r.not_billed + r.failed for r in settled)
    return RunResult(
        plan, out, ledger_path,
        succeeded=sum(b.totals.succeeded for b in batches) + recovered,
        failed=sum(b.totals.failed for b in batches),
        skipped_done=first.skipped_done,
        skipped_failed=first.skipped_failed,
        not_run=last.not_run,
        unwritten=sum(b.totals.unwritten for b in batches),
        spent=round(sum(b.totals.spent for b in batches) + billed * price, 6),
        possibly_billed=round(
            max(0.0, sum(b.totals.possibly_billed for b in batches) - decided * price), 6
        ),
        requests=sum(b.totals.requests for b in batches),
        throttled=sum(b.totals.throttled for b in batches),
        failures=dict(failures),
        remaining_credits=next(
            (b.totals.remaining_credits for b in reversed(batches) if b.totals.remaining_credits),
            None,
        ),
        stopped=last.stopped,
        seconds=sum(b.seconds for b in batches),
        run_id=batches[0].run_id,
    )  # fmt: skip


P = ParamSpec("P")
R = TypeVar("R")


def _blocking(func: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, R]:
    """`func`, run to its end on an event loop of its own: in this thread when none runs
    here, else (a notebook, an async framework) in a thread of its own."""

    @functools.wraps(func)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(func(*args, **kwargs))
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batchgen") as pool:
            return pool.submit(asyncio.run, func(*args, **kwargs)).result()

    return call


run = _blocking(run_async)
run.__doc__ = """The same as `run_async`, for code that is not async: it runs its own event
loop (in a thread of its own when one already runs here, as in a notebook), so it
works from any thread. Returns the RunResult."""
run.__name__ = run.__qualname__ = "run"


# -- the credit balance ------------------------------------------------------------------


async def credits_async(api_key: str | None = None, api_base: str | None = None) -> float:
    """The account's credit balance in USD (`GET {api_base}/get-user-credits`): the key is
    `api_key`, else $SEGMIND_API_KEY; the API `api_base`, else $SEGMIND_API_BASE, else
    Segmind's. Free credits are not counted. Raises InputError (no key, a bad base) or
    ServiceError (the key refused, the service unreachable or not making sense)."""
    return await account.fetch_credits(api_key=_key(api_key), api_base=_base(api_base))


credits = _blocking(credits_async)
credits.__doc__ = """`credits_async`, for code that is not async: the balance in USD, a float."""
credits.__name__ = credits.__qualname__ = "credits"


# -- settlement ---------------------------------------------------------------------------

SETTLE_POLL_S = 5.0  # between scans while some request is still pending or within the lag
SETTLE_MAX_SCANS = 20
SETTLE_MAX_WAIT_S = 60.0  # then what is still unknown is held back, for the next run


async def reconcile_async(
    out: str | os.PathLike[str],
    *,
    api_key: str | None = None,
    api_base: str | None = None,
    history_base: str | None = None,
    history_lag: float = settle.HISTORY_LAG_S,
    manifest: ManifestSource | None = None,
) -> settle.SettleReport:
    """Settle every ambiguous attempt in the ledgers of `out` from the request history,
    appending settlement lines (and downloading billed images) and rewriting nothing.
    Each ledger it appends to is locked for the while; one another run holds is left
    alone (`skipped_ledgers`). Output paths come from `manifest`, else from the
    manifest each ledger's `run` line names (if still there, unchanged), else
    `recovered/{job_id}.{ext}`. Recorded v2 request ids are polled first (at the API
    base with `/v1` made `/v2`). Never raises for the history: see `unavailable`."""
    out_path = Path(out)
    paths = ledger.ledgers_in(out_path)
    if not paths:
        raise InputError(f"{out_path}: no ledger there (looked for ledger*.jsonl)")
    targets = None
    if manifest is not None:
        loaded = _load(manifest, out_path)
        targets = settle.Targets()
        for job in grid.expand(loaded, check_paths=False):
            targets.add(job.job_id, out_path, job.output)
    base = _base(api_base)
    report = await settle.settle_out(
        paths, api_key=_key(api_key), history_base=_history_base(history_base, base),
        lag=history_lag, targets=targets, queue_base=queue_client.v2_base(base),
        assets=uploads.digests_by_url([out_path]),
    )  # fmt: skip
    if report.unavailable is not None:
        log.warning("batchgen: %s; nothing settled", report.unavailable)
    return report


reconcile = _blocking(reconcile_async)
reconcile.__doc__ = """`reconcile_async`, for code that is not async. Returns the SettleReport."""
reconcile.__name__ = reconcile.__qualname__ = "reconcile"


def _storage_base(given: str | None, api_base: str) -> str:
    """`given`, else $SEGMIND_STORAGE_BASE, else Segmind's asset storage; but for a custom
    API base (an emulator, a proxy) without either, that base's root, as for the history."""
    if given is None:
        given = os.environ.get("SEGMIND_STORAGE_BASE") or None
        where = "SEGMIND_STORAGE_BASE"
    else:
        where = "--storage-base"
    if given is not None:
        return _http_url(given, where, uploads.STORAGE_BASE).rstrip("/")
    if api_base.rstrip("/") == api.API_BASE:
        return uploads.STORAGE_BASE
    return api_base.rstrip("/").removesuffix("/v1")


def _history_base(given: str | None, api_base: str) -> str:
    """`given`, else $SEGMIND_HISTORY_BASE, else Segmind's; but for a custom API base
    (an emulator, a proxy) without either, that base's root: the key goes nowhere new."""
    if given or os.environ.get("SEGMIND_HISTORY_BASE"):
        return history_client.history_base(given)
    if api_base.rstrip("/") == api.API_BASE:
        return history_client.HISTORY_BASE
    return api_base.rstrip("/").removesuffix("/v1")


async def _settle_first(
    loaded: Manifest,
    owned: shard.Shard | None,
    out: Path,
    ledger_path: Path,
    ledger_file: Path | None,
    key: str,
    base: str,
    lag: float,
    emit: events.Listener,
    sleep: Sleep | None,
    queue_base: str | None = None,
) -> settle.SettleReport:
    """Settle what earlier runs left ambiguous, before the plan pass reads any state.
    First the v2 requests whose ids were recorded are polled at `queue_base` (what
    completed is downloaded); then the history. While some attempt is still pending or
    within the lag, scan again (every few seconds, for about the lag); what is still
    unknown then is held back from sending."""
    paths = sorted({*ledger.ledgers_in(out), ledger_path}) if ledger_file is None else [ledger_path]
    wanted = _LazyTargets(loaded, owned, out)
    pause = sleep or asyncio.sleep
    began = time.time()
    total: settle.SettleReport | None = None
    for _ in range(SETTLE_MAX_SCANS):
        report = await settle.settle_out(
            paths, api_key=key, history_base=base, lag=lag, held=[ledger_path], targets=wanted,
            queue_base=queue_base, sleep=pause, assets=uploads.digests_by_url([out]),
        )  # fmt: skip
        total = report if total is None else _merged(total, report)
        if report.unavailable is not None:
            log.warning("batchgen: %s; going on without it (requests whose answers were "
                        "lost may be paid again)", report.unavailable)  # fmt: skip
            break
        if not report.unknown or report.retry_at is None:
            break
        if report.retry_at - began > min(lag + 2 * SETTLE_POLL_S, SETTLE_MAX_WAIT_S):
            break  # not decidable soon: held back from this run, settled by the next
        await pause(max(0.2, min(SETTLE_POLL_S, report.retry_at - time.time())))
    assert total is not None
    if total.settled or total.unknown or total.unavailable is not None:  # news, not noise
        emit(events.Settled(total))
    return total


def _merged(a: settle.SettleReport, b: settle.SettleReport) -> settle.SettleReport:
    """Two scans as one: counts added, what is still unknown from the last."""
    return replace(
        b, recovered=a.recovered + b.recovered, saved=round(a.saved + b.saved, 6),
        billed=a.billed + b.billed, not_billed=a.not_billed + b.not_billed, lost=a.lost + b.lost,
        polled=a.polled + b.polled, failed=a.failed + b.failed, polls=a.polls + b.polls,
        recovered_jobs=a.recovered_jobs | b.recovered_jobs,
        history_calls=a.history_calls + b.history_calls,
    )  # fmt: skip


class _LazyTargets(settle.Targets):
    """Output paths from the manifest, expanded only once an image is to be placed."""

    def __init__(self, loaded: Manifest, owned: shard.Shard | None, out: Path) -> None:
        super().__init__()
        self._source: tuple[Manifest, shard.Shard | None, Path] | None = (loaded, owned, out)

    def place(self, job_id: str, ledger_path: Path, ext: str) -> tuple[str, str]:
        if self._source is not None:
            loaded, owned, out = self._source
            self._source = None
            for job in _shard_jobs(loaded, owned, check_paths=False):
                self.add(job.job_id, out, job.output)
        return super().place(job_id, ledger_path, ext)


# -- the report -------------------------------------------------------------------------


def report(*ledgers: str | os.PathLike[str]) -> summaries.Summary:
    """What happened, from ledgers alone: ledger files, or folders standing for every
    `ledger*.jsonl` in them (the current folder when none is given), or object store
    URLs (`s3://bucket/prefix`: every ledger's segments there)."""
    return summaries.summarize(
        ledger_files([str(item) if objstore.is_url(item) else Path(item) for item in ledgers])
    )


def ledger_files(given: list[Path | str]) -> list[Path]:
    """Ledger files, or folders standing for every ledger*.jsonl in them; a store URL
    stands for the ledgers under it (read whole, for the readers of ledger files)."""
    paths: list[Path] = []
    for item in given or [Path(".")]:
        if isinstance(item, str) and objstore.is_url(item):
            from batchgen import remote

            paths += cast(list[Path], remote.ledgers_at(item))
            continue
        item = Path(item)
        found = ledger.ledgers_in(item) if item.is_dir() else [item] if item.exists() else []
        if not found:
            raise InputError(f"{item}: no ledger there (looked for ledger*.jsonl)")
        paths += found
    return paths


# -- the rules, in the order a run meets them -------------------------------------------


def _key(given: str | None) -> str:
    key = (given if given is not None else os.environ.get("SEGMIND_API_KEY", "")).strip()
    if not key:
        raise InputError(
            "SEGMIND_API_KEY is not set: export it, or pass --api-key-file FILE "
            "(try `batchgen demo` to run against the bundled emulator without a key)"
        )
    return key


def _base(given: str | None) -> str:
    """`given`, else $SEGMIND_API_BASE, else Segmind's: an http(s) URL with a host."""
    where = "--api-base"
    if given is None:
        given, where = os.environ.get("SEGMIND_API_BASE"), "SEGMIND_API_BASE"
    if given is None:
        return api.API_BASE
    return _http_url(given, where, f"{api.API_BASE} or http://127.0.0.1:8000/v1")


def _http_url(given: str, where: str, example: str) -> str:
    try:
        url = yarl.URL(given.strip())
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise InputError(f"{where} {given!r} is not an http(s) URL with a host (e.g. {example})")
    return given.strip()


def _queue_base(which: str, base: str) -> str | None:
    """The v2 base (`/v1` made `/v2`) where recorded v2 request ids are polled; for
    `api="v2"` a base without `/v1` is bad input. None when there is none to derive."""
    if which not in ("v1", "v2"):
        raise InputError(f"--api {which!r} is not one of v1, v2")
    derived = queue_client.v2_base(base)
    if which == "v2" and derived is None:
        raise InputError(
            f"--api v2 needs an API base ending in /v1 (the v2 base replaces it with /v2); "
            f"got {base!r}"
        )
    return derived


def _shard(spec: str | None, count: int | None) -> shard.Shard | None:
    return None if spec is None else shard.parse(spec, shard_count=count, environ=os.environ)


def _rate(rpm: float | None, rpm_total: float | None, owned: shard.Shard | None) -> float | None:
    """`rpm` is this process's own limit; `rpm_total` is the key's, shared by N shards."""
    if rpm_total is not None:
        return float(rpm_total) / (owned.count if owned else 1)
    return rpm


def _written_ledger(owned: shard.Shard | None, out: Path | None, given: Path | None) -> Path:
    """The one ledger a run appends to (and locks): `ledger`, else its shard's under out."""
    name = owned.ledger_name if owned else ledger.DEFAULT_NAME
    return given or (out / name if out else Path(name))


@contextlib.asynccontextmanager
async def _locked(ledger_path: Path, wait: float, emit: events.Listener) -> AsyncIterator[None]:
    """The ledger's run lock for the block; waiting for it (`wait` > 0) happens in a
    thread, so the event loop stays free."""

    def waiting(line: str) -> None:
        log.info("%s", line)
        emit(events.LockWaiting(line))

    lock = runlock.hold(ledger_path, wait=wait, on_wait=waiting)
    await asyncio.to_thread(lock.__enter__)
    try:
        yield
    except BaseException as err:
        if not lock.__exit__(type(err), err, err.__traceback__):
            raise
    else:
        lock.__exit__(None, None, None)


def _no_ledger_option(given: object) -> None:
    if given is not None:
        raise InputError("--ledger cannot be given with an object store --out: its ledgers "
                         "live under the prefix")  # fmt: skip


def _path(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else Path(value)


def _load(source: ManifestSource, out: Path | None) -> Manifest:
    if isinstance(source, Manifest):
        return source
    return manifest.load(Path(source), exclude=(out,))  # outputs are never inputs


def _shard_jobs(loaded: Manifest, owned: shard.Shard | None, *, check_paths: bool) -> Iterator[Job]:
    for job in grid.expand(loaded, check_paths=check_paths):
        if owned is None or owned.owns(job.job_id):
            yield job


def _prepare(
    source: ManifestSource,
    *,
    out: Path | None,
    ledger_file: Path | None,
    owned: shard.Shard | None,
    retry_failed: bool,
    concurrency: int | None,
    rpm: float | None,
    split_into: int | None = None,
    tally: ImageTally | None = None,
) -> _Prepared:
    loaded = _load(source, out)
    ledger_path = _written_ledger(owned, out, ledger_file)
    paths = {ledger_path} if ledger_file else set()
    if out is not None:
        paths |= {*ledger.ledgers_in(out), ledger_path}  # resume sees every shard's work
    state = ledger.load_state(sorted(paths))
    jobs = _shard_jobs(loaded, owned, check_paths=True)  # drained once, before sending
    if out is not None and (owners := state.owners(out)):
        jobs = _not_owned_by_others(jobs, owners, out, loaded.display)
    the_plan = make_plan(
        manifest=loaded.display,
        model=loaded.model,
        price=loaded.price,
        axes=grid.axis_sizes(loaded),
        jobs=jobs,
        standing=state.standing,
        retry_failed=retry_failed,
        concurrency=concurrency,
        rpm=rpm,
        shard=str(owned) if owned else None,
        split_into=split_into,
        skipped=loaded.skipped,
        tally=tally,
    )
    return _Prepared(loaded, owned, ledger_path, state, the_plan, tally)


def _not_owned_by_others(
    jobs: Iterator[Job],
    owners: dict[str, tuple[str, ledger.JobRecord]],
    out: Path,
    display: str,
    exists: Callable[[Path], bool] = Path.exists,
) -> Iterator[Job]:
    """The jobs, checked against the images the ledgers in `out` already own: another
    manifest (or an edited one) writing over a paid image would pay for it again each
    night. Raises InputError at the end, naming both jobs and both manifests."""
    extensions = sorted(set(api.EXTENSIONS.values()))
    problems: list[str] = []
    for job in jobs:
        for ext in extensions:
            path = outputs.final_path(job.output, ext)
            owner = owners.get(path)
            if owner is None or owner[0] == job.job_id:
                continue
            other, record = owner
            if record.output_path is None or not exists(record.output_path):
                continue
            problems.append(
                f"{display}: job {job.job_id[:12]} would overwrite {out / path}, the image of "
                f"job {other[:12]} from {record.manifest or 'an earlier run'}; use another "
                "--out, or put {job_id} in the output template"
            )
        yield job
    if problems:
        more = len(problems) - MAX_OWNER_PROBLEMS
        shown = problems[:MAX_OWNER_PROBLEMS] + ([f"... and {more} more"] if more > 0 else [])
        raise InputError([Problem("", "output", text) for text in shown])


def _check_room(out: Path, images: int) -> None:
    """Before the first request: `out` can be written and has room to start."""
    if images and (problem := outputs.room_problem(out, images)) is not None:
        raise InputError(f"{problem}; nothing sent")


def _cut_in_flight(prepared: _Prepared) -> int | None:
    """When this ledger's last run never ended (killed, or the machine died): how many
    of its requests had no recorded outcome. None when the last run ended."""
    if prepared.ledger_path not in prepared.state.cut:
        return None
    return prepared.state.open_attempts(prepared.shard.owns if prepared.shard else None)
