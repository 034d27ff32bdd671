"""The store's few operations (`Store`): an fsspec async filesystem, made inside the
run's own event loop, and what batchgen asks of it: PUT, exclusive create, GET (one or
many), LIST, DELETE, and the lease's conditional writes (S3: If-Match / If-None-Match).
Credentials and endpoints come from each backend's own standard configuration (for S3:
AWS_* variables, AWS_ENDPOINT_URL for MinIO or moto, ~/.aws); batchgen adds none."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from batchgen.errors import LedgerError
from batchgen.store.location import Location

log = logging.getLogger("batchgen")


class Conflict(Exception):
    """A conditional write lost: the object exists (create) or changed (if-match)."""


class Vanished(LedgerError):
    """An object listed a moment ago is gone (merged by a compaction meanwhile)."""


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
