"""`plan` on a store, and what a store run plans from: the resume state of every ledger
under the prefix (their segments, read in order) and one listing of the objects (an
image is done when its object is there with the recorded size: a store has no cheap way
to hash it again), output paths another job's image owns, shards. Reads only: no lease.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from batchgen import grid, preflight
from batchgen.errors import BatchgenError, InputError
from batchgen.grid import Job
from batchgen.manifest import Manifest
from batchgen.planning import Plan, make_plan
from batchgen.settle.store import StoreState
from batchgen.shard import Shard
from batchgen.store.ledgers import StoredLedger, read_ledgers
from batchgen.store.location import Location
from batchgen.store.objects import Store
from batchgen.store.reading import blocking


@dataclass(frozen=True)
class Prepared:
    manifest: Manifest
    state: StoreState
    plan: Plan
    ledgers: list[StoredLedger]


async def prepare(
    store: Store,
    source: preflight.ManifestSource,
    *,
    owned: Shard | None,
    retry_failed: bool,
    concurrency: int | None,
    rpm: float | None,
    split_into: int | None = None,
) -> Prepared:
    location = store.location
    loaded = preflight.load(source, None)  # nothing local is an output here
    try:
        listing = await store.listing(location.root)
        ledgers = await read_ledgers(store, listing)
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
    return Prepared(loaded, state, the_plan, ledgers)


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
            prepared = await prepare(
                store, source, owned=owned, retry_failed=retry_failed,
                concurrency=concurrency, rpm=rpm, split_into=split_into,
            )  # fmt: skip
            return prepared.plan
        finally:
            await store.close()

    return blocking(go())
