"""The library's front door: `plan`, `run`, `run_async`, `report` (and `jobs`).

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
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import yarl

from batchgen import api, events, grid, ledger, manifest, outputs, retry, runlock, shard, summaries
from batchgen.batch import BatchConfig, BatchResult, run_batch
from batchgen.errors import InputError, Problem
from batchgen.grid import Job
from batchgen.manifest import Manifest
from batchgen.pacing import Clock, Sleep
from batchgen.planning import Plan, make_plan
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
    out: Path
    ledger: Path
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

    @classmethod
    def of(cls, batch: BatchResult, plan: Plan, out: Path, ledger_path: Path) -> RunResult:
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
) -> Plan:
    """What a batch holds, what is already done (from every ledger in `out`, or the one
    `ledger`), what the rest will cost and about how long it takes. No network.

    `shard` ("I/N" or "auto") plans one shard; `shard_count` alone plans the split.
    Raises InputError (every problem of the manifest at once) or LedgerError."""
    owned = _shard(shard, shard_count)
    return _prepare(
        manifest, out=_path(out), ledger_file=_path(ledger), owned=owned,
        retry_failed=retry_failed, concurrency=concurrency,
        rpm=_rate(rpm, rpm_total, owned), split_into=shard_count if owned is None else None,
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

    Raises InputError for bad input (nothing sent), LockedError when another run holds
    the ledger (nothing sent), LedgerError for a ledger that cannot be trusted."""
    emit = on_event or events.ignore
    key = _key(api_key)
    base = _base(api_base)
    owned = _shard(shard, shard_count)
    out_path = Path(out)
    ledger_path = _written_ledger(owned, out_path, _path(ledger))
    async with _locked(ledger_path, wait_lock, emit):  # before any state is read
        prepared = _prepare(
            manifest, out=out_path, ledger_file=_path(ledger), owned=owned,
            retry_failed=retry_failed, concurrency=concurrency, rpm=_rate(rpm, rpm_total, owned),
        )  # fmt: skip
        the_plan = prepared.plan
        _check_room(out_path, the_plan.to_run)
        emit(events.RunPlanned(the_plan, _cut_in_flight(prepared)))
        if confirm is not None and not confirm(the_plan):
            stop = Stop(StopReason.NOT_CONFIRMED, "not confirmed; nothing sent")
            return RunResult(the_plan, out_path, ledger_path, stopped=stop)
        config = BatchConfig(
            manifest=prepared.manifest,
            out=out_path,
            ledger_path=ledger_path,
            api_base=base,
            api_key=key,
            options=RunOptions(concurrency, max_cost, max_attempts, retry_failed, outage_limit),
            rpm=_rate(rpm, rpm_total, owned),
            timeout=timeout,
            shard=str(owned) if owned else None,
        )
        seams: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
        if clock is not None:
            seams["clock"] = clock
        batch = await run_batch(
            config, prepared.jobs(), prepared.state, on_event=emit,
            handle_signals=handle_signals, to_run=the_plan.to_run, **seams,
        )  # fmt: skip
    return RunResult.of(batch, the_plan, out_path, ledger_path)


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


# -- the report -------------------------------------------------------------------------


def report(*ledgers: str | os.PathLike[str]) -> summaries.Summary:
    """What happened, from ledgers alone: ledger files, or folders standing for every
    `ledger*.jsonl` in them (the current folder when none is given)."""
    return summaries.summarize(ledger_files([Path(item) for item in ledgers]))


def ledger_files(given: list[Path]) -> list[Path]:
    """Ledger files, or folders standing for every ledger*.jsonl in them."""
    paths: list[Path] = []
    for item in given or [Path(".")]:
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
    try:
        url = yarl.URL(given.strip())
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise InputError(
            f"{where} {given!r} is not an http(s) URL with a host "
            f"(e.g. {api.API_BASE} or http://127.0.0.1:8000/v1)"
        )
    return given.strip()


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
    )
    return _Prepared(loaded, owned, ledger_path, state, the_plan)


def _not_owned_by_others(
    jobs: Iterator[Job], owners: dict[str, tuple[str, ledger.JobRecord]], out: Path, display: str
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
            if record.output_path is None or not record.output_path.exists():
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
