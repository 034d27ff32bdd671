"""Reading a ledger back from a store: its segments named and chosen in order (a merged
object stands for the parts it covers), read whole into a `StoredLedger` that the
local readers take in place of a path, as the lines of one local file would be."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from batchgen.errors import BatchgenError, InputError, LedgerError
from batchgen.store.location import SEGMENTS_SUFFIX, Location
from batchgen.store.objects import Store, Vanished

_SEGMENT: Final = re.compile(r"^(\d+)(?:-(\d+))?\.jsonl$")
MAX_REREADS: Final = 5


def segment_name(first: int, last: int | None = None) -> str:
    return (
        f"{first:06d}.jsonl" if last is None or last == first else f"{first:06d}-{last:06d}.jsonl"
    )


def segment_range(name: str) -> tuple[int, int] | None:
    match = _SEGMENT.match(name)
    if match is None:
        return None
    first = int(match[1])
    return first, int(match[2]) if match[2] else first


def covering(names: list[str]) -> list[tuple[str, int, int]]:
    """The segments to read, in order: a merged object stands for the parts it covers,
    which a compaction cut short may have left behind."""
    ranges = sorted(
        ((name, *found) for name in names if (found := segment_range(name)) is not None),
        key=lambda item: (item[1], -item[2]),
    )
    chosen: list[tuple[str, int, int]] = []
    covered = 0
    for name, first, last in ranges:
        if last <= covered:
            continue  # inside a merged object already read
        if first <= covered:  # overlapping a merged object partly: never written so
            raise LedgerError(f"{name}: ledger segments overlap; fix before resuming")
        chosen.append((name, first, last))
        covered = last
    return chosen


@dataclass(frozen=True, eq=False)
class StoredLedger:
    """A ledger read from a store, for the code that reads local ledgers: `ledger.read`,
    `LedgerState.scan`, `summaries.summarize` and `gallery.collect` take it in place of
    a path (it has the `parent` and `name` they use, and its own lines)."""

    url: str
    parent: Path  # the folder its records' outputs are relative to
    name: str
    chunks: tuple[bytes, ...]  # the segments' bytes, in order

    def ledger_lines(self) -> Iterator[tuple[int, bytes]]:
        number = 0
        for chunk in self.chunks:
            for line in chunk.splitlines(keepends=True):
                number += 1
                if not line.endswith(b"\n"):
                    break  # an object is written whole: only a foreign one could end so
                if line.strip():
                    yield number, line

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:
        return self.url

    def __lt__(self, other: object) -> bool:  # sorted() beside each other, as paths are
        return str(self) < str(other)


def ledger_names(listing: dict[str, int], location: Location) -> dict[str, list[str]]:
    """The ledgers at the top of a prefix: name -> its objects' keys (segments, or one
    plain `ledger*.jsonl` object copied there), from one listing."""
    found: dict[str, list[str]] = {}
    top = location.root + "/"
    for key in listing:
        if not key.startswith(top):
            continue
        rest = key[len(top) :]
        head, _, tail = rest.partition("/")
        if head.startswith("ledger") and head.endswith(".jsonl" + SEGMENTS_SUFFIX) and tail:
            if "/" not in tail and segment_range(tail) is not None:
                found.setdefault(head.removesuffix(SEGMENTS_SUFFIX), []).append(key)
        elif not tail and head.startswith("ledger") and head.endswith(".jsonl"):
            found.setdefault(head, []).append(key)
    return found


async def read_ledgers(
    store: Store, listing: dict[str, int], folder: Path | None = None
) -> list[StoredLedger]:
    """Every ledger at the top of the store's prefix, read whole (segments in order).

    Another run may be merging its segments meanwhile (a shard reads its siblings'
    ledgers): a part that vanished between the listing and its read was merged, so the
    ledger's segments are listed again and read again."""
    location = store.location
    ledgers = []
    for name, keys in sorted(ledger_names(listing, location).items()):
        prefix = f"{location.root}/{name}{SEGMENTS_SUFFIX}"
        for attempt in range(MAX_REREADS):
            plain = [key for key in keys if key.endswith("/" + name)]
            parts = [key.rsplit("/", 1)[1] for key in keys if key not in plain]
            order = plain + [f"{prefix}/{part}" for part, _, _ in covering(parts)]
            try:
                chunks = await store.get_many(order)
                break
            except Vanished:
                if attempt + 1 >= MAX_REREADS:
                    raise LedgerError(f"{location.url(prefix)}: its segments keep changing "
                                      "while being read") from None  # fmt: skip
                keys = [key for key in keys if key.endswith("/" + name)]
                keys += list(await store.listing(prefix))
        url = location.url(location.key(name))
        ledgers.append(StoredLedger(url, folder or location.folder, name, tuple(chunks)))
    return ledgers


async def load(
    location: Location, folder: Path | None = None
) -> tuple[list[StoredLedger], dict[str, int]]:
    """(every ledger under `location`, the listing it was read from)."""
    store = await Store.open(location)
    try:
        listing = await store.listing(location.root)
        return await read_ledgers(store, listing, folder), listing
    except BatchgenError:
        raise
    except Exception as err:  # the store's own errors, botocore's among them
        raise InputError(f"{location}: cannot read: {err}") from None
    finally:
        await store.close()
