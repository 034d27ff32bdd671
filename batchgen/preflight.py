"""Every rule a run meets before its first request, in the order it meets them.

The key and the API's address; the shard and the rate; the ledger it writes and the lock
on it (taken before any state is read); the manifest, loaded so that outputs are never
inputs; the resume state from every ledger under `out`; output paths another job's paid
image owns; room on disk. `library.run_async` (and `store.running` for object stores) applies
them; nothing here sends a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yarl

from batchgen import (
    api,
    durable,
    events,
    grid,
    ledger,
    manifest,
    outputs,
    queue_client,
    runlock,
    shard,
    uploads,
)
from batchgen import history as history_client
from batchgen.errors import InputError, Problem
from batchgen.grid import Job
from batchgen.manifest import Manifest
from batchgen.planning import ImageTally, Plan, make_plan

log = logging.getLogger("batchgen")

MAX_OWNER_PROBLEMS = 10  # a whole folder of them says the same thing


ManifestSource = str | os.PathLike[str] | Manifest


@dataclass(frozen=True)
class Prepared:
    """Everything checked before a single request: manifest, ledgers, collisions, shard."""

    manifest: Manifest
    shard: shard.Shard | None
    ledger_path: Path
    state: ledger.LedgerState
    plan: Plan
    tally: ImageTally | None = None  # with upload_images: the images of the jobs to run

    def jobs(self) -> Iterator[Job]:
        return shard_jobs(self.manifest, self.shard, check_paths=False)


def api_key(given: str | None) -> str:
    key = (given if given is not None else os.environ.get("SEGMIND_API_KEY", "")).strip()
    if not key:
        raise InputError(
            "SEGMIND_API_KEY is not set: export it, or pass --api-key-file FILE "
            "(try `batchgen demo` to run against the bundled emulator without a key)"
        )
    return key


def api_base(given: str | None) -> str:
    """`given`, else $SEGMIND_API_BASE, else Segmind's: an http(s) URL with a host."""
    where = "--api-base"
    if given is None:
        given, where = os.environ.get("SEGMIND_API_BASE"), "SEGMIND_API_BASE"
    if given is None:
        return api.API_BASE
    return http_url(given, where, f"{api.API_BASE} or http://127.0.0.1:8000/v1")


def http_url(given: str, where: str, example: str) -> str:
    try:
        url = yarl.URL(given.strip())
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise InputError(f"{where} {given!r} is not an http(s) URL with a host (e.g. {example})")
    return given.strip()


def queue_base(which: str, base: str) -> str | None:
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


def parse_shard(spec: str | None, count: int | None) -> shard.Shard | None:
    return None if spec is None else shard.parse(spec, shard_count=count, environ=os.environ)


def rate(rpm: float | None, rpm_total: float | None, owned: shard.Shard | None) -> float | None:
    """`rpm` is this process's own limit; `rpm_total` is the key's, shared by N shards."""
    if rpm_total is not None:
        return float(rpm_total) / (owned.count if owned else 1)
    return rpm


def written_ledger(owned: shard.Shard | None, out: Path | None, given: Path | None) -> Path:
    """The one ledger a run appends to (and locks): `ledger`, else its shard's under out."""
    name = owned.ledger_name if owned else ledger.DEFAULT_NAME
    return given or (out / name if out else Path(name))


@contextlib.asynccontextmanager
async def locked(ledger_path: Path, wait: float, emit: events.Listener) -> AsyncIterator[None]:
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


def no_ledger_option(given: object) -> None:
    if given is not None:
        raise InputError("--ledger cannot be given with an object store --out: its ledgers "
                         "live under the prefix")  # fmt: skip


def as_path(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else Path(value)


def load(source: ManifestSource, out: Path | None) -> Manifest:
    if isinstance(source, Manifest):
        return source
    return manifest.load(Path(source), exclude=(out,))  # outputs are never inputs


def shard_jobs(loaded: Manifest, owned: shard.Shard | None, *, check_paths: bool) -> Iterator[Job]:
    for job in grid.expand(loaded, check_paths=check_paths):
        if owned is None or owned.owns(job.job_id):
            yield job


def prepare(
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
) -> Prepared:
    loaded = load(source, out)
    ledger_path = written_ledger(owned, out, ledger_file)
    paths = {ledger_path} if ledger_file else set()
    if out is not None:
        paths |= {*ledger.ledgers_in(out), ledger_path}  # resume sees every shard's work
    state = ledger.load_state(sorted(paths))
    jobs = shard_jobs(loaded, owned, check_paths=True)  # drained once, before sending
    if out is not None and (owners := state.owners(out)):
        jobs = not_owned_by_others(jobs, owners, out, loaded.display)
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
    return Prepared(loaded, owned, ledger_path, state, the_plan, tally)


def not_owned_by_others(
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


def check_room(out: Path, images: int) -> None:
    """Before the first request: `out` can be written and has room to start."""
    if images and (problem := durable.room_problem(out, images)) is not None:
        raise InputError(f"{problem}; nothing sent")


def cut_in_flight(prepared: Prepared) -> int | None:
    """When this ledger's last run never ended (killed, or the machine died): how many
    of its requests had no recorded outcome. None when the last run ended."""
    if prepared.ledger_path not in prepared.state.cut:
        return None
    return prepared.state.open_attempts(prepared.shard.owns if prepared.shard else None)


def storage_base(given: str | None, api_base: str) -> str:
    """`given`, else $SEGMIND_STORAGE_BASE, else Segmind's asset storage; but for a custom
    API base (an emulator, a proxy) without either, that base's root, as for the history."""
    if given is None:
        given = os.environ.get("SEGMIND_STORAGE_BASE") or None
        where = "SEGMIND_STORAGE_BASE"
    else:
        where = "--storage-base"
    if given is not None:
        return http_url(given, where, uploads.STORAGE_BASE).rstrip("/")
    if api_base.rstrip("/") == api.API_BASE:
        return uploads.STORAGE_BASE
    return api_base.rstrip("/").removesuffix("/v1")


def history_base(given: str | None, api_base: str) -> str:
    """`given`, else $SEGMIND_HISTORY_BASE, else Segmind's; but for a custom API base
    (an emulator, a proxy) without either, that base's root: the key goes nowhere new."""
    if given or os.environ.get("SEGMIND_HISTORY_BASE"):
        return history_client.history_base(given)
    if api_base.rstrip("/") == api.API_BASE:
        return history_client.HISTORY_BASE
    return api_base.rstrip("/").removesuffix("/v1")
