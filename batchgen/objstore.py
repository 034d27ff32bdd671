"""Object stores as `--out`: any fsspec URL (`s3://bucket/prefix`, `gs://`, `az://`).

A plain path (or `file://`) keeps the local code path exactly (temp file, fsync, rename,
flock); a URL goes through this module, with fsspec's async backends used inside the
run's own event loop. Credentials and endpoints come from each backend's own standard
configuration (for S3: AWS_* variables, AWS_ENDPOINT_URL for MinIO or moto, ~/.aws);
batchgen adds none of its own.

What a run keeps on a store, under the prefix:

    p0/prompt-101-84acae90.jpg                one PUT per image (atomic by nature)
    ledger.jsonl.d/000001.jsonl ...           the ledger: immutable segments, one per
                                              group commit, each created exclusively
    ledger.jsonl.d/000001-000042.jsonl        a clean finish merges them (compaction)
    ledger.jsonl.lease                        the run lock: a lease, renewed while running
    ledger.shard-1-of-4.jsonl.d/...           each shard its own
    gallery.html, thumbs/...                  the contact sheet, links relative

This module holds the store's few operations (`Store`), where things are (`Location`),
and reading a ledger back (`read_ledgers`): the segments in order, as the lines of one
local file would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from batchgen.errors import BatchgenError, InputError, LedgerError

log = logging.getLogger("batchgen")

# protocol -> (the extra that installs its backend, the package)
EXTRAS: Final = {
    "s3": ("s3", "s3fs"),
    "s3a": ("s3", "s3fs"),
    "gs": ("gcs", "gcsfs"),
    "gcs": ("gcs", "gcsfs"),
    "az": ("azure", "adlfs"),
    "abfs": ("azure", "adlfs"),
    "abfss": ("azure", "adlfs"),
}
_URL: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
SEGMENTS_SUFFIX: Final = ".d"  # ledger.jsonl.d/ holds ledger.jsonl's segments
LEASE_SUFFIX: Final = ".lease"
_SEGMENT: Final = re.compile(r"^(\d+)(?:-(\d+))?\.jsonl$")


def is_url(value: object) -> bool:
    """Whether `value` names an object store rather than a local path (file:// is local)."""
    if not isinstance(value, str):
        return False
    match = _URL.match(value)
    return match is not None and match[1].lower() != "file"


def local(value: str) -> Path:
    """A plain path, or a file:// URL as the plain path it names."""
    match = _URL.match(value)
    if match is not None and match[1].lower() == "file":
        rest = match[2]
        return Path(rest if rest.startswith("/") else "/" + rest.split("/", 1)[-1])
    return Path(value)


def location_arg(value: str) -> str | Path:
    """argparse type: a URL stays a string (Path would fold its `//`), the rest a Path."""
    return value.rstrip("/") if is_url(value) else local(value)


@dataclass(frozen=True)
class Location:
    """Where a run's things are on a store: the protocol and `bucket/prefix`."""

    protocol: str
    root: str  # bucket/prefix, no slash at either end

    @classmethod
    def parse(cls, url: str) -> Location:
        match = _URL.match(url)
        if match is None:
            raise InputError(f"{url}: not a URL")
        protocol, root = match[1].lower(), match[2].strip("/")
        if not root:
            raise InputError(f"{url}: name a bucket (and a prefix): {protocol}://bucket/prefix")
        check_backend(protocol)
        return cls(protocol, root)

    def url(self, key: str | None = None) -> str:
        return f"{self.protocol}://{key or self.root}"

    def key(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    @property
    def folder(self) -> Path:
        """The virtual folder a run's paths hang from (never touched on the local disk):
        the records' `folder`, and the Runner's `out`."""
        return Path(self.root)

    def __str__(self) -> str:
        return self.url()


def check_backend(protocol: str) -> None:
    """InputError naming the extra when the scheme's fsspec backend is not installed."""
    extra, package = EXTRAS.get(protocol, (None, None))
    hint = f"pip install 'batchgen[{extra}]'" if extra else "install its fsspec backend"
    try:
        import fsspec
    except ImportError:
        raise InputError(f"{protocol}:// needs batchgen[{extra or 's3'}]: {hint}") from None
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError:
        raise InputError(
            f"{protocol}:// needs batchgen[{extra}]: {hint}"
            if extra
            else f"{protocol}:// needs its fsspec backend ({package or 'unknown'}): {hint}"
        ) from None
    except ValueError:
        raise InputError(f"{protocol}:// is not a storage scheme fsspec knows") from None


# -- the store's few operations ---------------------------------------------------------


class Conflict(Exception):
    """A conditional write lost: the object exists (create) or changed (if-match)."""


@dataclass
class Store:
    """An fsspec async filesystem, made inside the running loop, and its few uses.

    `requests` counts what was asked of the store, by kind (PUT, GET, LIST, DELETE)."""

    location: Location
    fs: Any = None
    requests: dict[str, int] = field(default_factory=dict)
    exclusive: bool = True  # the backend creates exclusively (If-None-Match: *)

    @classmethod
    async def open(cls, location: Location) -> Store:
        import fsspec
        from fsspec.asyn import AsyncFileSystem

        kind = fsspec.get_filesystem_class(location.protocol)
        if issubclass(kind, AsyncFileSystem):
            fs = kind(asynchronous=True, skip_instance_cache=True, loop=asyncio.get_running_loop())
        else:  # a blocking backend, wrapped to be awaited
            from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

            fs = AsyncFileSystemWrapper(kind(skip_instance_cache=True))
        store = cls(location, fs)
        store.exclusive = "mode" in inspect.signature(fs._pipe_file).parameters
        if not store.exclusive:
            log.warning(
                "batchgen: %s:// cannot create objects exclusively; ledger segments fall back "
                "to check-then-write (the lease still keeps runs apart)",
                location.protocol,
            )
        return store

    async def close(self) -> None:
        creator = getattr(self.fs, "_s3creator", None)  # s3fs's aiobotocore client
        if creator is not None:
            await creator.__aexit__(None, None, None)
            self.fs._s3creator = None
            self.fs._s3 = None
        session = getattr(self.fs, "session", None)  # gcsfs's aiohttp session
        if session is not None and hasattr(session, "close") and creator is None:
            result = session.close()
            if inspect.isawaitable(result):
                await result

    def _count(self, kind: str) -> None:
        self.requests[kind] = self.requests.get(kind, 0) + 1

    async def put(self, key: str, data: bytes) -> None:
        self._count("PUT")
        await self.fs._pipe_file(key, data)

    async def create(self, key: str, data: bytes) -> None:
        """Write `key` only if no object has that name. Raises Conflict if one has."""
        if not self.exclusive:  # check, then write: a narrow race the lease covers
            if await self.get(key) is not None:
                raise Conflict(key)
            await self.put(key, data)
            return
        self._count("PUT")
        with _refused_as_conflict(key):
            await self.fs._pipe_file(key, data, mode="create")

    async def get(self, key: str) -> bytes | None:
        self._count("GET")
        try:
            data: bytes = await self.fs._cat_file(key)
        except FileNotFoundError:
            return None
        return data

    async def get_many(self, keys: list[str]) -> list[bytes]:
        """Several objects at once, a few at a time; a missing one is an error."""
        limit = asyncio.Semaphore(16)

        async def one(key: str) -> bytes:
            async with limit:
                data = await self.get(key)
            if data is None:
                raise Vanished(f"{self.location.url(key)}: vanished while being read")
            return data

        return list(await asyncio.gather(*(one(key) for key in keys)))

    async def listing(self, prefix: str) -> dict[str, int]:
        """Every object under `prefix` (recursively): key -> size. Never cached."""
        self._count("LIST")
        self.fs.invalidate_cache()
        try:
            found = await self.fs._find(prefix, detail=True)
        except FileNotFoundError:
            return {}
        return {
            str(name): int(info.get("size") or 0)
            for name, info in found.items()
            if info.get("type", "file") != "directory"
        }

    async def remove(self, keys: list[str]) -> None:
        if keys:
            self._count("DELETE")
            await self.fs._rm(keys)

    # -- the lease's conditional writes (S3: If-Match / If-None-Match) ------------------

    @property
    def is_s3(self) -> bool:
        return hasattr(self.fs, "_call_s3")

    async def read_versioned(self, key: str) -> tuple[bytes, str, float | None] | None:
        """(body, version tag, age in seconds by the store's own clock), or None."""
        if not self.is_s3:
            data = await self.get(key)
            return None if data is None else (data, _digest(data), None)
        bucket, name, _ = self.fs.split_path(key)
        self._count("GET")
        try:
            answer = await self.fs._call_s3("get_object", Bucket=bucket, Key=name)
        except FileNotFoundError:
            return None
        async with answer["Body"] as body:
            data = await body.read()
        age = None
        headers = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        modified = answer.get("LastModified")
        if modified is not None and "date" in headers:
            from email.utils import parsedate_to_datetime

            age = (parsedate_to_datetime(headers["date"]) - modified).total_seconds()
        return data, str(answer["ETag"]), age

    async def replace(self, key: str, data: bytes, tag: str) -> str:
        """Overwrite `key` only if it is still at version `tag`; the new tag. Conflict
        if another writer changed it (S3: If-Match; elsewhere: read, compare, write)."""
        if not self.is_s3:
            current = await self.read_versioned(key)
            if current is None or current[1] != tag:
                raise Conflict(key)
            await self.put(key, data)
            return _digest(data)
        bucket, name, _ = self.fs.split_path(key)
        self._count("PUT")
        with _refused_as_conflict(key, FileNotFoundError):  # gone counts as changed
            answer = await self.fs._call_s3(
                "put_object", Bucket=bucket, Key=name, Body=data, IfMatch=tag
            )
        return str(answer["ETag"])

    async def create_versioned(self, key: str, data: bytes) -> str:
        """Exclusive create; the new object's version tag. Conflict if it exists."""
        if not self.is_s3:
            await self.create(key, data)
            return _digest(data)
        bucket, name, _ = self.fs.split_path(key)
        self._count("PUT")
        with _refused_as_conflict(key):
            answer = await self.fs._call_s3(
                "put_object", Bucket=bucket, Key=name, Body=data, IfNoneMatch="*"
            )
        return str(answer["ETag"])


@contextlib.contextmanager
def _refused_as_conflict(key: str, *also: type[OSError]) -> Iterator[None]:
    """A conditional write the store refused (the object is there, or has changed since
    it was read) as Conflict; any other error as it came."""
    refused: tuple[type[OSError], ...] = (FileExistsError, *also)
    try:
        yield
    except refused:
        raise Conflict(key) from None
    except OSError as err:
        if _precondition(err):
            raise Conflict(key) from None
        raise


def _precondition(err: OSError) -> bool:
    """Whether a backend's error is an HTTP 412 (a condition that did not hold)."""
    response = getattr(err.__cause__, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return bool(error.get("Code") == "PreconditionFailed" or status == 412)
    text = str(err).lower()
    return "precondition" in text or "pre-condition" in text


def _digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# -- ledgers on a store ---------------------------------------------------------------


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


MAX_REREADS: Final = 5


class Vanished(LedgerError):
    """An object listed a moment ago is gone (merged by a compaction meanwhile)."""


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
