"""Who paid for what, and the limits: `EmulatorStats`, the token bucket, the in-flight slots."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


def fingerprint(body: Mapping[str, Any]) -> str:
    """sha256 of the body's canonical JSON: the identity under which a request is charged."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class EmulatorStats:
    """Who paid for what. `charges` counts charges per request fingerprint over v1 and v2 alike,
    so a test can prove that nobody paid twice. `credits_left` counts credits reserved by
    requests still running; `balance` only what was billed. `in_flight` counts v1 requests and
    v2 requests PROCESSING."""

    price: float
    credits: float | None = None  # the starting balance; None = unlimited
    requests_total: int = 0  # v1 generation answers, by status below
    by_status: dict[int, int] = field(default_factory=dict)
    cut: int = 0  # of the 200s, those cut off halfway (fault_cut): billed, bytes lost
    charges: dict[str, int] = field(default_factory=dict)
    billed_total: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    reserved: int = 0
    v2_submits: int = 0  # v2 submission answers, by status below
    v2_by_status: dict[int, int] = field(default_factory=dict)
    v2_completed: int = 0
    v2_failed: int = 0
    polls: int = 0  # v2 status and result GETs
    history_calls: int = 0
    uploads: int = 0  # upload-asset calls
    assets_uploaded: int = 0  # files in them
    asset_downloads: int = 0
    output_downloads: int = 0
    credit_checks: int = 0

    @property
    def spent(self) -> float:
        return round(self.billed_total * self.price, 6)

    @property
    def credits_left(self) -> float | None:
        if self.credits is None:
            return None
        return round(self.credits - (self.billed_total + self.reserved) * self.price, 6)

    @property
    def balance(self) -> float | None:
        """What get-user-credits reports: the start minus what was billed."""
        return None if self.credits is None else round(self.credits - self.spent, 6)

    def can_afford(self) -> bool:
        left = self.credits_left
        return left is None or round(left - self.price, 6) >= 0

    def record(self, status: int) -> None:
        self.requests_total += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def record_submit(self, status: int) -> None:
        self.v2_submits += 1
        self.v2_by_status[status] = self.v2_by_status.get(status, 0) + 1

    def bill(self, request_fingerprint: str) -> None:
        self.billed_total += 1
        self.charges[request_fingerprint] = self.charges.get(request_fingerprint, 0) + 1

    def double_charged(self) -> list[str]:
        """Fingerprints of requests that were charged more than once."""
        return sorted(fp for fp, count in self.charges.items() if count > 1)

    def as_json(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "by_status": {str(status): n for status, n in sorted(self.by_status.items())},
            "cut": self.cut,
            "charges": dict(self.charges),
            "billed_total": self.billed_total,
            "spent": self.spent,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "credits_left": self.credits_left,
            "v2_submits": self.v2_submits,
            "v2_by_status": {str(status): n for status, n in sorted(self.v2_by_status.items())},
            "v2_completed": self.v2_completed,
            "v2_failed": self.v2_failed,
            "polls": self.polls,
            "history_calls": self.history_calls,
            "uploads": self.uploads,
            "assets_uploaded": self.assets_uploaded,
            "asset_downloads": self.asset_downloads,
            "output_downloads": self.output_downloads,
            "credit_checks": self.credit_checks,
        }


class TokenBucket:
    """Holds up to `burst` tokens, refilled at `rpm / 60` per second; a request takes one."""

    def __init__(self, *, rpm: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rpm / 60.0
        self._capacity = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def take(self) -> float:
        """0.0 when a token was taken, else the seconds until one will be available."""
        if self._refill() >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate

    def full_in(self) -> float:
        """Seconds until the bucket is full again: when the limit has 'reset'."""
        return (self._capacity - self._refill()) / self._rate

    def _refill(self) -> float:
        """Add what has dripped in since the last look; the tokens now held."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now
        return self._tokens


class Slots:
    """The images running at once (`stats.in_flight`), at most `cap` of them (None: no cap).

    A v1 request takes a slot or is refused (`try_take`); a v2 request waits for one (`take`),
    first come first served: a freed slot passes straight to the longest waiter."""

    def __init__(self, stats: EmulatorStats, cap: int | None) -> None:
        self._stats = stats
        self._cap = cap
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        if self._cap is not None and (self._stats.in_flight >= self._cap or self._waiters):
            return False
        stats = self._stats
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        return True

    async def take(self) -> None:
        if self.try_take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give_back()  # the slot was handed over just as we were cancelled
            raise

    def give_back(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # in_flight unchanged: the slot changes hands
                return
        self._stats.in_flight -= 1
