"""`run`, `plan`, `report`, `gallery` and `inspect` with an object store URL as `--out`.

The same rules as a local run (`library`), on a store: the lease before any state is
read (`lease`), resume state from every ledger under the prefix (their segments, read
in order) and one listing of the objects (an image is done when its object is there
with the recorded size: a store has no cheap way to hash it again), output paths that
another job's image owns, the budget, shards; what earlier runs (and this run's lost
answers) left ambiguous, settled from the request history as on disk (`store_state`).
Images and ledger segments go to the store (`segments.SegmentWriter`); on a clean
finish the run's segments are merged (compaction). Nothing of a store run touches the
local disk but a temporary folder for the gallery's thumbnails.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, cast

from batchgen import events, grid, ledger, objstore, preflight, settle, summaries
from batchgen.batch import BatchConfig, BatchResult, run_batch
from batchgen.errors import BatchgenError, InputError, LedgerError
from batchgen.grid import Job
from batchgen.lease import Lease
from batchgen.manifest import Manifest
from batchgen.objstore import Location, Store, StoredLedger
from batchgen.planning import Plan, make_plan
from batchgen.results import RunResult
from batchgen.runner import RunOptions
from batchgen.segments import SegmentWriter
from batchgen.settle import passes
from batchgen.settle.store import Settlement, StoreState, settle_store
from batchgen.shard import Shard
from batchgen.stops import Stop, StopReason

log = logging.getLogger("batchgen")
T = TypeVar("T")


@dataclass(frozen=True)
class _Prepared:
    manifest: Manifest
    state: StoreState
    plan: Plan
    ledgers: list[StoredLedger]


async def _prepare(
    store: Store,
    source: preflight.ManifestSource,
    *,
    owned: Shard | None,
    retry_failed: bool,
    concurrency: int | None,
    rpm: float | None,
    split_into: int | None = None,
) -> _Prepared:
    location = store.location
    loaded = preflight.load(source, None)  # nothing local is an output here
    try:
        listing = await store.listing(location.root)
        ledgers = await objstore.read_ledgers(store, listing)
    except BatchgenError:
        raise
    except Exception as err:  # the store's own errors, botocore's among them
        raise InputError(f"{location}: cannot read the store: {err}; nothing sent") from None
    state = StoreState(objects=listing)
    for stored in ledgers:
        state.scan(cast(Path, stored))
    jobs: Iterator[Job] = preflight.shard_jobs(loaded, owned, check_paths=True)
    if owners := state.owners(location.folder):
        jobs = preflight.not_owned_by_others(
            jobs, owners, location.folder, loaded.display, exists=state.exists
        )
    the_plan = make_plan(
        manifest=loaded.display, model=loaded.model, price=loaded.price,
        axes=grid.axis_sizes(loaded), jobs=jobs, standing=state.standing,
        retry_failed=retry_failed, concurrency=concurrency, rpm=rpm,
        shard=str(owned) if owned else None, split_into=split_into, skipped=loaded.skipped,
    )  # fmt: skip
    return _Prepared(loaded, state, the_plan, ledgers)


def _ledger_name(owned: Shard | None) -> str:
    return owned.ledger_name if owned else ledger.DEFAULT_NAME


async def run(
    url: str,
    source: preflight.ManifestSource,
    *,
    api_key: str,
    api_base: str,
    owned: Shard | None,
    options: RunOptions,
    rpm: float | None,
    timeout: float,  # noqa: ASYNC109 (per request)
    wait_lock: float,
    emit: events.Listener,
    confirm: Callable[[Plan], bool] | None,
    handle_signals: bool,
    seams: dict[str, Any],
    settlement: Settlement | None = None,
    api: str = "v1",
    typical_latency: float | None = None,
) -> RunResult:
    """`library.run_async` into a store (see the module's docstring). `settlement`:
    settle from the request history first, and what this run's answers left ambiguous
    between its passes (None: `reconcile=False`)."""
    location = Location.parse(url)
    name = _ledger_name(owned)
    ledger_url = location.url(location.key(name))
    store = await Store.open(location)
    try:
        lease = Lease(store, location.key(name + objstore.LEASE_SUFFIX))

        def waiting(line: str) -> None:
            log.info("%s", line)
            emit(events.LockWaiting(line))

        try:
            await lease.acquire(ledger_url, wait=wait_lock, on_wait=waiting)
        except BatchgenError:
            raise
        except Exception as err:  # no bucket, no credentials, no endpoint: nothing was sent
            raise InputError(f"{location}: cannot write the store: {err}; nothing sent") from None
        try:
            leased = _Leased(store, lease, name, api_key, emit, settlement)
            return await _run_leased(
                leased, source, api_base=api_base, owned=owned, options=options, rpm=rpm,
                timeout=timeout, confirm=confirm, handle_signals=handle_signals, seams=seams,
                api=api, typical_latency=typical_latency,
            )  # fmt: skip
        finally:
            await lease.release()
    finally:
        await store.close()


@dataclass
class _Leased:
    """A store run under its lease: the one place its ledger writers are made."""

    store: Store
    lease: Lease
    name: str
    api_key: str
    emit: events.Listener
    settlement: Settlement | None
    writers: list[SegmentWriter] = field(default_factory=list)

    def writer(self) -> SegmentWriter:
        """A new writer of this run's ledger, fenced when the lease is lost."""
        made = SegmentWriter(self.store, self.name, self.store.location.folder)
        self.writers.append(made)
        self.lease.on_lost = made.fence
        if self.lease.lost is not None:
            made.fence(self.lease.lost)
        return made

    async def settle(self, loaded: Manifest, owned: Shard | None) -> settle.SettleReport:
        assert self.settlement is not None
        targets = passes.LazyTargets(loaded, owned, self.store.location.folder)
        return await settle_store(
            self.store, self.name, self.writer, targets, api_key=self.api_key,
            how=self.settlement, emit=self.emit,
        )  # fmt: skip


async def _run_leased(
    leased: _Leased,
    source: preflight.ManifestSource,
    *,
    api_base: str,
    owned: Shard | None,
    options: RunOptions,
    rpm: float | None,
    timeout: float,  # noqa: ASYNC109
    confirm: Callable[[Plan], bool] | None,
    handle_signals: bool,
    seams: dict[str, Any],
    api: str,
    typical_latency: float | None,
) -> RunResult:
    store, name, emit = leased.store, leased.name, leased.emit
    location = store.location
    out_url, ledger_url = location.url(), location.url(location.key(name))
    source = preflight.load(source, None)  # nothing local is an output here
    settled: settle.SettleReport | None = None
    if leased.settlement is not None:  # before any state is read for the plan
        settled = await leased.settle(source, owned)
    prepared = await _prepare(
        store, source, owned=owned, retry_failed=options.retry_failed,
        concurrency=options.concurrency, rpm=rpm,
    )  # fmt: skip
    the_plan = prepared.plan
    mine = [stored for stored in prepared.ledgers if stored.name == name]
    cut = None
    if any(cast(Path, stored) in prepared.state.cut for stored in mine):
        cut = prepared.state.open_attempts(owned.owns if owned else None)
    emit(events.RunPlanned(the_plan, cut))
    if confirm is not None and not confirm(the_plan):
        stop = Stop(StopReason.NOT_CONFIRMED, "not confirmed; nothing sent")
        return RunResult(the_plan, out_url, ledger_url, stopped=stop, settlement=settled)
    defer = leased.settlement is not None and (settled is None or settled.unavailable is None)
    batches: list[BatchResult] = []
    in_run: list[settle.SettleReport] = []
    while True:
        last_round = len(batches) + 1 >= passes.SETTLE_ROUNDS
        held = settled.unknown_jobs if settled is not None else frozenset()
        config = BatchConfig(
            manifest=prepared.manifest, out=location.folder, ledger_path=location.folder / name,
            api_base=api_base, api_key=leased.api_key,
            options=replace(options, defer_ambiguous=defer and not last_round), rpm=rpm,
            timeout=timeout, shard=str(owned) if owned else None, writer=leased.writer, api=api,
            **({"typical_latency": typical_latency} if typical_latency is not None else {}),
        )  # fmt: skip
        jobs = (
            job
            for job in preflight.shard_jobs(prepared.manifest, owned, check_paths=False)
            if job.job_id not in held
        )
        batch = await run_batch(
            config, jobs, prepared.state, on_event=emit, handle_signals=handle_signals,
            to_run=prepared.plan.to_run, **seams,
        )  # fmt: skip
        batches.append(batch)
        if not batch.totals.deferred or batch.totals.stopped is not None:
            break
        # Requests whose answers were lost: the history says whether they were billed
        # (their images are fetched and PUT) before anything is sent for them again.
        report = await leased.settle(prepared.manifest, owned)
        in_run.append(report)
        settled = report if settled is None else passes.merged(settled, report)
        defer = report.unavailable is None
        prepared = await _prepare(
            store, source, owned=owned, retry_failed=options.retry_failed,
            concurrency=options.concurrency, rpm=rpm,
        )  # fmt: skip
    writers, lease = leased.writers, leased.lease
    if writers and all(w.failed is None for w in writers) and lease.lost is None:
        try:
            await writers[-1].compact()
        except (OSError, LedgerError) as err:  # the parts stay; readers take either
            log.warning("batchgen: %s: segments not merged: %s", ledger_url, err)
    result = passes.combined(batches, in_run, the_plan, out_url, ledger_url, the_plan.price)
    return replace(result, settlement=settled, held_back=len(held))


def plan(
    url: str,
    source: preflight.ManifestSource,
    *,
    owned: Shard | None,
    retry_failed: bool,
    concurrency: int | None,
    rpm: float | None,
    split_into: int | None,
) -> Plan:
    """`library.plan` against a store: reads only, takes no lease."""

    async def go() -> Plan:
        store = await Store.open(Location.parse(url))
        try:
            prepared = await _prepare(
                store, source, owned=owned, retry_failed=retry_failed,
                concurrency=concurrency, rpm=rpm, split_into=split_into,
            )  # fmt: skip
            return prepared.plan
        finally:
            await store.close()

    return blocking(go())


def ledgers_at(url: str, folder: Path | None = None) -> list[StoredLedger]:
    """The ledgers a URL names: every one under a prefix, or the one it ends with."""
    location = Location.parse(url)
    tail = location.root.rsplit("/", 1)[-1]
    only = None
    if tail.startswith("ledger") and tail.endswith(".jsonl") and "/" in location.root:
        location, only = Location(location.protocol, location.root.rsplit("/", 1)[0]), tail
    found, _ = blocking(objstore.load(location, folder))
    found = [stored for stored in found if only is None or stored.name == only]
    if not found:
        raise InputError(f"{url}: no ledger there (looked for ledger*.jsonl and its segments)")
    return found


def report(items: list[str]) -> summaries.Summary:
    return summaries.summarize(cast(list[Path], [s for url in items for s in ledgers_at(url)]))


def write_gallery(url: str, output: str | None = None) -> str:
    """The contact sheet and its thumbnails, made in a temporary folder from the store's
    ledgers and the images whose thumbnails are missing, then PUT beside the ledgers:
    `gallery.html`, `thumbs/...`; its links stay relative."""
    from batchgen import gallery

    location = Location.parse(url)
    page_name = "gallery.html"
    if output is not None:
        target = Location.parse(output)
        folder, _, page_name = target.root.rpartition("/")
        if target.protocol != location.protocol or folder != location.root or not page_name:
            raise InputError(f"-o {output}: a store's gallery goes in its own prefix ({location}/)")
    with tempfile.TemporaryDirectory(prefix="batchgen-gallery-") as tmp:
        return blocking(_gallery(location, Path(tmp), page_name, gallery))


async def _gallery(location: Location, tmp: Path, page_name: str, gallery: Any) -> str:
    store = await Store.open(location)
    try:
        listing = await store.listing(location.root)
        ledgers = await objstore.read_ledgers(store, listing, folder=tmp)
        if not ledgers:
            raise InputError(f"{location}: no ledger there (looked for ledger*.jsonl)")
        thumbs = gallery.Thumbs(tmp / "thumbs", gallery.THUMB_PX)
        have = {
            key.rsplit("/", 1)[-1] for key in listing if key.startswith(location.key("thumbs/"))
        }
        cells, _ = gallery.collect(cast(list[Path], ledgers))
        wanted: list[tuple[Path, str]] = []  # images whose thumbnails are still to make
        for cell in cells.values():
            if cell.status != "succeeded" or cell.output is None:
                continue
            key = location.key(cell.output.relative_to(tmp).as_posix())
            if thumbs.output_thumb(cell).name not in have and key in listing:
                wanted.append((cell.output, key))
        images = await store.get_many([key for _, key in wanted])
        staged = [(path, data) for (path, _), data in zip(wanted, images, strict=True)]
        made, page = await asyncio.to_thread(
            _make_gallery, gallery, ledgers, thumbs, have, staged, tmp / page_name
        )
        await asyncio.gather(
            *(store.put(location.key(f"thumbs/{name}"), data) for name, data in made)
        )
        await store.put(location.key(page_name), page)
        return location.url(location.key(page_name))
    finally:
        await store.close()


def _make_gallery(
    gallery: Any,
    ledgers: list[StoredLedger],
    thumbs: Any,
    have: set[str],
    staged: list[tuple[Path, bytes]],
    page_path: Path,
) -> tuple[list[tuple[str, bytes]], bytes]:
    """Blocking, in the temporary folder: the thumbnails the store lacks and the page."""
    thumbs.folder.mkdir(parents=True, exist_ok=True)
    for name in have:
        (thumbs.folder / name).touch()  # there already: made once, never again
    for path, data in staged:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    page = gallery.write_gallery(cast(list[Path], ledgers), page_path)
    made = [
        (p.name, p.read_bytes())
        for p in thumbs.folder.iterdir()
        if p.name not in have and p.stat().st_size
    ]
    return made, Path(page).read_bytes()


def read_object(url: str) -> bytes:
    location = Location.parse(url)

    async def go() -> bytes | None:
        store = await Store.open(location)
        try:
            return await store.get(location.root)
        finally:
            await store.close()

    try:
        data = blocking(go())
    except Exception as err:
        raise InputError(f"{url}: cannot read: {err}") from None
    if data is None:
        raise InputError(f"{url}: no such object")
    return data


def blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from blocking code: here when no loop runs in this
    thread, else in a thread of its own (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
