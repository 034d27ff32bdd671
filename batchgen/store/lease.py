"""The run lock on an object store: a lease object beside the ledger.

A store has no flock, and a pod that dies keeps nothing open, so the lock is a lease:
`ledger.jsonl.lease`, created exclusively (If-None-Match: *), naming its holder (pid,
host, since) and how long it lasts. The holder renews it in a background task every
quarter of that (If-Match: the version it wrote, so a renewal never overwrites another
run's lease). A second run finds a live lease and refuses (LockedError, exit 3), or
with --wait-lock polls. A crashed holder stops renewing; once the lease is older than
its term by the store's own clock (the answer's Date against the object's
Last-Modified, so the pods' clocks need not agree), the next run takes it over, with
If-Match on the version it read, so of two runs taking over at once one wins.

A holder that cannot renew within its term, or finds its lease replaced, has lost it:
its ledger writer is fenced (nothing more is sent; the runner stops), and its segment
numbers, created exclusively, could not overwrite the new holder's anyway.

The term is 60 s (`BATCHGEN_LEASE_SECONDS` changes it, for tests). Backends other than
S3 fall back to read-compare-write, which is racy only within a store's round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from batchgen import runlock
from batchgen.errors import LedgerError
from batchgen.runlock import Holder
from batchgen.store.objects import Conflict, Store

log = logging.getLogger("batchgen")

DEFAULT_TERM_S: Final = 60.0
POLL_S: Final = 1.0


def term() -> float:
    try:
        return max(1.0, float(os.environ.get("BATCHGEN_LEASE_SECONDS", DEFAULT_TERM_S)))
    except ValueError:
        return DEFAULT_TERM_S


class Lease:
    """Hold with `async with lease:` after `await lease.acquire(...)`."""

    def __init__(self, store: Store, key: str, *, term_s: float | None = None) -> None:
        self.store, self.key = store, key
        self.url = store.location.url(key)
        self.term = term_s or term()
        self.since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.lost: LedgerError | None = None
        self.on_lost: Callable[[LedgerError], None] | None = None
        self.renewals = 0
        self._tag: str | None = None
        self._task: asyncio.Task[None] | None = None

    def _body(self) -> bytes:
        return json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": self.since,
                "renewed": time.time(),
                "term": self.term,
            }
        ).encode()

    async def acquire(
        self, ledger_name: str, *, wait: float = 0.0, on_wait: Callable[[str], None] | None = None
    ) -> None:
        deadline = time.monotonic() + wait
        told = False
        while True:
            try:
                self._tag = await self.store.create_versioned(self.key, self._body())
                break
            except Conflict:
                pass
            current = await self.store.read_versioned(self.key)
            if current is None:
                continue  # released meanwhile
            data, tag, age = current
            holder, its_term, renewed = _holder(data)
            if age is None:  # no server clock: the holder's own
                age = time.time() - renewed if renewed is not None else 0.0
            if age > its_term:
                with contextlib.suppress(Conflict):
                    self._tag = await self.store.replace(self.key, self._body(), tag)
                    log.info("batchgen: took over %s: %s stopped renewing it %.0f s ago",
                             self.url, holder, age)  # fmt: skip
                    break
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise runlock.refusal(ledger_name, holder, wait)
            if on_wait is not None and not told:
                on_wait(runlock.waiting_line(ledger_name, holder, wait))
                told = True
            await asyncio.sleep(min(POLL_S, remaining))
        self._task = asyncio.create_task(self._renew(), name="lease-renewal")

    async def _renew(self) -> None:
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.term / 4)
            try:
                assert self._tag is not None
                self._tag = await self.store.replace(self.key, self._body(), self._tag)
                renewed = time.monotonic()
                self.renewals += 1
            except Conflict:
                self._lose(f"{self.url} was taken over by another run")
                return
            except Exception as err:  # the store's own errors, botocore's among them
                if time.monotonic() - renewed > self.term * 0.75:
                    self._lose(f"cannot renew {self.url}: {err}")
                    return
                log.warning("batchgen: cannot renew %s (trying again): %s", self.url, err)

    def _lose(self, why: str) -> None:
        self.lost = LedgerError(f"lost the ledger's lease ({why}); stopping")
        log.warning("batchgen: %s", self.lost)
        if self.on_lost is not None:
            self.on_lost(self.lost)

    async def release(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.lost is not None or self._tag is None:
            return
        with contextlib.suppress(Exception):
            current = await self.store.read_versioned(self.key)
            if current is not None and current[1] == self._tag:
                await self.store.remove([self.key])


def _holder(data: bytes) -> tuple[Holder, float, float | None]:
    try:
        found: dict[str, Any] = json.loads(data)
        holder = Holder(int(found["pid"]), str(found.get("host") or ""), found.get("since"))
        return holder, float(found.get("term", DEFAULT_TERM_S)), found.get("renewed")
    except (ValueError, KeyError, TypeError):
        return Holder(), DEFAULT_TERM_S, None
