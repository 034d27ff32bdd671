"""`run` with an object store URL as `--out`: the same rules as a local run (`library`),
on a store.

The lease before any state is read (`lease`), then the plan (`planning.prepare`): resume
state from every ledger under the prefix and one listing of the objects, output paths
another job's image owns, the budget, shards; what earlier runs (and this run's lost
answers) left ambiguous, settled from the request history as on disk (`settle.store`).
Images and ledger segments go to the store (`segments.SegmentWriter`); on a clean
finish the run's segments are merged (compaction). Nothing of a store run touches the
local disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from batchgen import events, ledger, preflight, settle
from batchgen.batch import BatchConfig, BatchResult, run_batch
from batchgen.errors import BatchgenError, InputError, LedgerError
from batchgen.manifest import Manifest
from batchgen.planning import Plan
from batchgen.results import RunResult
from batchgen.runner import RunOptions
from batchgen.settle import passes
from batchgen.settle.store import Settlement, settle_store
from batchgen.shard import Shard
from batchgen.stops import Stop, StopReason
from batchgen.store.lease import Lease
from batchgen.store.location import LEASE_SUFFIX, Location
from batchgen.store.objects import Store
from batchgen.store.planning import prepare
from batchgen.store.segments import SegmentWriter

log = logging.getLogger("batchgen")


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
        lease = Lease(store, location.key(name + LEASE_SUFFIX))

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

    async def settle(
        self, loaded: Manifest, owned: Shard | None, *, then: str = passes.GOING_ON
    ) -> settle.SettleReport:
        assert self.settlement is not None
        targets = passes.LazyTargets(loaded, owned, self.store.location.folder)
        return await settle_store(
            self.store, self.name, self.writer, targets, api_key=self.api_key,
            how=self.settlement, emit=self.emit, then=then,
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
    prepared = await prepare(
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

    async def run_pass(defer: bool, held: frozenset[str], used: passes.Used) -> BatchResult:
        config = BatchConfig(
            manifest=prepared.manifest, out=location.folder, ledger_path=location.folder / name,
            api_base=api_base, api_key=leased.api_key,
            options=used.options(options, defer=defer), rpm=rpm,
            timeout=timeout, shard=str(owned) if owned else None, writer=leased.writer, api=api,
            **({"typical_latency": typical_latency} if typical_latency is not None else {}),
        )  # fmt: skip
        jobs = (
            job
            for job in preflight.shard_jobs(prepared.manifest, owned, check_paths=False)
            if job.job_id not in held and used.runs(job.job_id)
        )
        return await run_batch(
            config, jobs, prepared.state, on_event=emit, handle_signals=handle_signals,
            to_run=used.to_run(prepared.plan.to_run, held), **seams,
        )  # fmt: skip

    async def settle_pass() -> settle.SettleReport:
        # Requests whose answers were lost: the history says whether they were billed
        # (their images are fetched and PUT) before anything is sent for them again.
        return await leased.settle(prepared.manifest, owned, then=passes.LEFT_FOR_NEXT_RUN)

    async def replan() -> None:
        nonlocal prepared
        prepared = await prepare(
            store, source, owned=owned, retry_failed=options.retry_failed,
            concurrency=options.concurrency, rpm=rpm,
        )  # fmt: skip

    ran = await passes.run_passes(
        run_pass, settle_pass, replan, settled=settled,
        defer=leased.settlement is not None and (settled is None or settled.unavailable is None),
        price=the_plan.price,
    )  # fmt: skip
    writers, lease = leased.writers, leased.lease
    if writers and all(w.failed is None for w in writers) and lease.lost is None:
        try:
            await writers[-1].compact()
        except (OSError, LedgerError) as err:  # the parts stay; readers take either
            log.warning("batchgen: %s: segments not merged: %s", ledger_url, err)
    result = passes.combined(ran.batches, ran.in_run, the_plan, out_url, ledger_url,
                             the_plan.price, ran.held_before)  # fmt: skip
    return passes.left_for_next_run(
        replace(result, settlement=ran.settled, held_back=len(ran.held))
    )
