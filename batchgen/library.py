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
import functools
import logging
import os
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

from batchgen import (
    account,
    events,
    grid,
    ledger,
    preflight,
    queue_client,
    retry,
    settle,
    store,
    summaries,
    uploads,
)
from batchgen.api import TYPICAL_LATENCY_S
from batchgen.batch import BatchConfig, BatchResult, run_batch
from batchgen.errors import InputError
from batchgen.grid import Job
from batchgen.images import EncodedImages
from batchgen.pacing import Clock, Sleep
from batchgen.planning import ImageTally, Plan
from batchgen.results import RunResult
from batchgen.runner import RunOptions
from batchgen.settle import passes
from batchgen.stops import Stop, StopReason

log = logging.getLogger("batchgen")

DEFAULT_CONCURRENCY = 64  # a maximum: the window in flight follows the rate (adaptive.py)


# -- the dry run ---------------------------------------------------------------------


def plan(
    manifest: preflight.ManifestSource,
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
    owned = preflight.parse_shard(shard, shard_count)
    if store.is_url(out):  # an object store: batchgen.store
        from batchgen.store import planning

        preflight.no_ledger_option(ledger)
        return planning.plan(
            str(out), manifest, owned=owned, retry_failed=retry_failed, concurrency=concurrency,
            rpm=preflight.rate(rpm, rpm_total, owned),
            split_into=shard_count if owned is None else None,
        )  # fmt: skip
    out_path = preflight.as_path(out)
    tally = None
    if upload_images:
        storage = preflight.storage_base(storage_base, preflight.api_base(api_base))
        tally = ImageTally(uploads.known(out_path, storage))
    return preflight.prepare(
        manifest, out=out_path, ledger_file=preflight.as_path(ledger), owned=owned,
        retry_failed=retry_failed, concurrency=concurrency,
        rpm=preflight.rate(rpm, rpm_total, owned),
        split_into=shard_count if owned is None else None,
        tally=tally,
    ).plan  # fmt: skip


def jobs(
    manifest: preflight.ManifestSource,
    *,
    out: str | os.PathLike[str] | None = None,
    shard: str | None = None,
    shard_count: int | None = None,
) -> Iterator[Job]:
    """Every job of the manifest (or of one shard), lazily, with its id and output path;
    output paths are checked as they come (InputError at the first bad one)."""
    loaded = preflight.load(manifest, preflight.as_path(out))
    return preflight.shard_jobs(loaded, preflight.parse_shard(shard, shard_count), check_paths=True)


# -- the run ---------------------------------------------------------------------------


async def run_async(
    manifest: preflight.ManifestSource,
    *,
    out: str | os.PathLike[str],
    api_key: str | None = None,
    api_base: str | None = None,
    concurrency: int | None = None,
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
    names mean (`batchgen run --help`); `concurrency` is the most requests billed and
    not yet durable (64 when None), and given, the run starts with that many in flight
    instead of probing up from 2. `on_event` receives the runner's events (frozen
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
    limit = concurrency or DEFAULT_CONCURRENCY
    key = preflight.api_key(api_key)
    base = preflight.api_base(api_base)
    queue_base = preflight.queue_base(api, base)
    storage = preflight.storage_base(storage_base, base) if upload_images else None
    owned = preflight.parse_shard(shard, shard_count)
    if store.is_url(out):  # an object store: the same rules, in batchgen.store
        from batchgen.settle.store import Settlement
        from batchgen.store import running

        preflight.no_ledger_option(ledger)
        if upload_images:
            raise InputError("--upload-images keeps its cache of asset URLs in a local --out; "
                             "it cannot be used with an object store --out yet")  # fmt: skip
        hooks: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
        if clock is not None:
            hooks["clock"] = clock
        how = (
            Settlement(preflight.history_base(history_base, base), history_lag, queue_base,
                       sleep, clock)
            if reconcile else None
        )  # fmt: skip
        return await running.run(
            str(out), manifest, api_key=key, api_base=base, owned=owned,
            options=RunOptions(limit, max_cost, max_attempts, retry_failed, outage_limit,
                               first_window=concurrency),
            rpm=preflight.rate(rpm, rpm_total, owned), timeout=timeout, wait_lock=wait_lock,
            emit=emit, confirm=confirm, handle_signals=handle_signals, seams=hooks,
            settlement=how, api=api, typical_latency=typical_latency,
        )  # fmt: skip
    out_path = Path(out)
    ledger_path = preflight.written_ledger(owned, out_path, preflight.as_path(ledger))
    async with preflight.locked(ledger_path, wait_lock, emit):  # before any state is read
        settled: settle.SettleReport | None = None
        if reconcile:
            manifest = preflight.load(manifest, out_path)
            settled = await passes.settle_first(
                manifest, owned, out_path, ledger_path, preflight.as_path(ledger), key,
                preflight.history_base(history_base, base), history_lag, emit, sleep, queue_base,
                clock,
            )  # fmt: skip
        prepared = preflight.prepare(
            manifest, out=out_path, ledger_file=preflight.as_path(ledger), owned=owned,
            retry_failed=retry_failed, concurrency=concurrency,
            rpm=preflight.rate(rpm, rpm_total, owned),
            tally=ImageTally(uploads.known(out_path, storage)) if storage else None,
        )  # fmt: skip
        the_plan = prepared.plan
        preflight.check_room(out_path, the_plan.to_run)
        emit(events.RunPlanned(the_plan, preflight.cut_in_flight(prepared)))
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
        rate = preflight.rate(rpm, rpm_total, owned)
        options = RunOptions(limit, max_cost, max_attempts, retry_failed, outage_limit,
                             first_window=concurrency)  # fmt: skip

        async def run_pass(defer: bool, held: frozenset[str], used: passes.Used) -> BatchResult:
            config = BatchConfig(
                manifest=prepared.manifest, out=out_path, ledger_path=ledger_path,
                api_base=base, api_key=key, options=used.options(options, defer=defer),
                rpm=rate, timeout=timeout, shard=str(owned) if owned else None, api=api,
                typical_latency=typical_latency,
            )  # fmt: skip
            jobs = (
                job for job in prepared.jobs() if job.job_id not in held and used.runs(job.job_id)
            )
            return await run_batch(
                config, jobs, prepared.state, on_event=emit, handle_signals=handle_signals,
                to_run=used.to_run(prepared.plan.to_run, held), images=encoded, **seams,
            )  # fmt: skip

        async def settle_pass() -> settle.SettleReport:
            # Requests whose answers were lost: the history says whether they were billed
            # (their images are downloaded) before anything is sent for them again.
            return await passes.settle_first(
                prepared.manifest, owned, out_path, ledger_path, preflight.as_path(ledger), key,
                preflight.history_base(history_base, base), history_lag, emit, sleep, queue_base,
                clock, then=passes.LEFT_FOR_NEXT_RUN,
            )  # fmt: skip

        async def replan() -> None:
            nonlocal prepared
            prepared = preflight.prepare(
                prepared.manifest, out=out_path, ledger_file=preflight.as_path(ledger), owned=owned,
                retry_failed=retry_failed, concurrency=concurrency, rpm=rate,
            )  # fmt: skip

        ran = await passes.run_passes(
            run_pass, settle_pass, replan, settled=settled,
            defer=reconcile and (settled is None or settled.unavailable is None),
            price=the_plan.price,
        )  # fmt: skip
    result = passes.combined(ran.batches, ran.in_run, the_plan, out_path, ledger_path,
                             the_plan.price, ran.held_before)  # fmt: skip
    result = replace(result, settlement=ran.settled, held_back=len(ran.held), uploaded=uploaded)
    return passes.left_for_next_run(result)


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
    return await account.fetch_credits(
        api_key=preflight.api_key(api_key), api_base=preflight.api_base(api_base)
    )


credits = _blocking(credits_async)
credits.__doc__ = """`credits_async`, for code that is not async: the balance in USD, a float."""
credits.__name__ = credits.__qualname__ = "credits"


# -- settlement ---------------------------------------------------------------------------


async def reconcile_async(
    out: str | os.PathLike[str],
    *,
    api_key: str | None = None,
    api_base: str | None = None,
    history_base: str | None = None,
    history_lag: float = settle.HISTORY_LAG_S,
    manifest: preflight.ManifestSource | None = None,
) -> settle.SettleReport:
    """Settle every ambiguous attempt in the ledgers of `out` from the request history,
    appending settlement lines (and downloading billed images) and rewriting nothing.
    Each ledger it appends to is locked for the while; one another run holds is left
    alone (`skipped_ledgers`). Output paths come from `manifest`, else from the
    manifest each ledger's `run` line names (if still there, unchanged), else
    `recovered/{job_id}.{ext}`. Recorded v2 request ids are polled first (at the API
    base with `/v1` made `/v2`). Never raises for the history: see `unavailable`."""
    if store.is_url(out):
        raise InputError(f"{out}: reconcile takes a local output folder; a run into an object "
                         "store settles its ledger itself, under its lease, when it runs "
                         "again")  # fmt: skip
    out_path = Path(out)
    paths = ledger.ledgers_in(out_path)
    if not paths:
        raise InputError(f"{out_path}: no ledger there (looked for ledger*.jsonl)")
    targets = None
    if manifest is not None:
        loaded = preflight.load(manifest, out_path)
        targets = settle.Targets()
        for job in grid.expand(loaded, check_paths=False):
            targets.add(job.job_id, out_path, job.output)
    base = preflight.api_base(api_base)
    report = await settle.settle_out(
        paths, api_key=preflight.api_key(api_key),
        history_base=preflight.history_base(history_base, base),
        lag=history_lag, targets=targets, queue_base=queue_client.v2_base(base),
        assets=uploads.digests_by_url([out_path]),
    )  # fmt: skip
    if report.unavailable is not None:
        log.warning("batchgen: %s; nothing settled", report.unavailable)
    return report


reconcile = _blocking(reconcile_async)
reconcile.__doc__ = """`reconcile_async`, for code that is not async. Returns the SettleReport."""
reconcile.__name__ = reconcile.__qualname__ = "reconcile"


# -- the report -------------------------------------------------------------------------


def report(*ledgers: str | os.PathLike[str]) -> summaries.Summary:
    """What happened, from ledgers alone: ledger files, or folders standing for every
    `ledger*.jsonl` in them (the current folder when none is given), or object store
    URLs (`s3://bucket/prefix`: every ledger's segments there)."""
    return summaries.summarize(
        ledger_files([str(item) if store.is_url(item) else Path(item) for item in ledgers])
    )


def ledger_files(given: list[Path | str]) -> list[Path]:
    """Ledger files, or folders standing for every ledger*.jsonl in them; a store URL
    stands for the ledgers under it (read whole, for the readers of ledger files)."""
    paths: list[Path] = []
    for item in given or [Path(".")]:
        if isinstance(item, str) and store.is_url(item):
            from batchgen.store import reading

            paths += cast(list[Path], reading.ledgers_at(item))
            continue
        item = Path(item)
        found = ledger.ledgers_in(item) if item.is_dir() else [item] if item.exists() else []
        if not found:
            raise InputError(f"{item}: no ledger there (looked for ledger*.jsonl)")
        paths += found
    return paths


# -- the rules, in the order a run meets them -------------------------------------------
