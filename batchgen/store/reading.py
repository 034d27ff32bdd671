"""Reading a store from blocking code (`report`, `gallery`, `inspect`): the ledgers a URL
names, their report, one object; and `blocking`, which runs a store's coroutine to its
end whether or not a loop runs in this thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

from batchgen import summaries
from batchgen.errors import InputError
from batchgen.store.ledgers import StoredLedger, load
from batchgen.store.location import Location
from batchgen.store.objects import Store

T = TypeVar("T")


def ledgers_at(url: str, folder: Path | None = None) -> list[StoredLedger]:
    """The ledgers a URL names: every one under a prefix, or the one it ends with."""
    location = Location.parse(url)
    tail = location.root.rsplit("/", 1)[-1]
    only = None
    if tail.startswith("ledger") and tail.endswith(".jsonl") and "/" in location.root:
        location, only = Location(location.protocol, location.root.rsplit("/", 1)[0]), tail
    found, _ = blocking(load(location, folder))
    found = [stored for stored in found if only is None or stored.name == only]
    if not found:
        raise InputError(f"{url}: no ledger there (looked for ledger*.jsonl and its segments)")
    return found


def report(items: list[str]) -> summaries.Summary:
    return summaries.summarize(cast(list[Path], [s for url in items for s in ledgers_at(url)]))


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
