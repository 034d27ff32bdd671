"""Pacing shared by every worker: the rate limit, and what a 429 does to it.

A 429 is the pool's signal to slow down, so it slows everyone, not just the worker
that saw it. Two modes:

- fixed (`--rpm` given): aiolimiter at that rate; a 429 pauses the whole pool
  (Retry-After when the server gives one, else a cool-down that doubles while the
  429s continue and resets on an answer);
- adaptive (no `--rpm`): a client-side rate that finds the limit (`adaptive.py`,
  CUBIC-style like the AWS SDKs' adaptive mode). A Retry-After still pauses the pool.

Every wait here ends at once when the run stops (`wait_turn(stop)`): nothing more
will be sent, so nothing is worth waiting for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from aiolimiter import AsyncLimiter

from batchgen import retry
from batchgen.adaptive import CubicRate

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

log = logging.getLogger("batchgen")


async def until(wait: Awaitable[object], stop: asyncio.Event) -> bool:
    """Await `wait` unless `stop` is set first, then cancel it: True when it finished."""
    if stop.is_set():
        if asyncio.iscoroutine(wait):
            wait.close()
        return False
    task = asyncio.ensure_future(wait)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        task.result()  # its exception, if it raised one
        return True
    return False


class Pacer:
    def __init__(
        self,
        rpm: float | None,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        cooldown: float = retry.THROTTLE_COOLDOWN_S,
    ) -> None:
        # A burst of one: aiolimiter lets max_rate through at once, and a minute's
        # quota at start-up is exactly the burst a per-minute limit punishes.
        self._limiter = AsyncLimiter(1, 60.0 / rpm) if rpm else None
        self.adaptive = None if rpm else CubicRate(clock=clock)
        self._sleep = sleep
        self._clock = clock
        self._cooldown = cooldown
        self._cool_until = 0.0
        self._streak = 0
        self._noted = False  # a capped wait was logged since the last plain answer

    async def wait_turn(self, stop: asyncio.Event | None = None) -> bool:
        """Wait for this worker's turn to send. False, with no turn taken, when `stop`
        is set first (a 429's pause, the rate's spacing: every wait ends at once)."""
        while (remaining := self._cool_until - self._clock()) > 0:
            if not await self._pause(self._sleep(remaining), stop):
                return False
        if self._limiter is not None:
            if stop is None or self._limiter.has_capacity():
                await self._limiter.acquire()  # does not wait: no task needed
            elif not await until(self._limiter.acquire(), stop):
                return False
        elif self.adaptive is not None:
            while (delay := self.adaptive.delay()) > 0:
                if not await self._pause(self._sleep(delay), stop):
                    return False
            self.adaptive.take()  # no await since delay() said 0: the slot is ours
        return True

    @staticmethod
    async def _pause(wait: Awaitable[None], stop: asyncio.Event | None) -> bool:
        if stop is None:
            await wait
            return True
        return await until(wait, stop)

    def release_turn(self) -> None:
        """The turn `wait_turn` gave was not used (the run is stopping, or the budget
        is spent): the adaptive rate must not count it as in flight."""
        if self.adaptive is not None:
            self.adaptive.release()

    def now(self) -> float:
        return self._clock()

    def note(self, wait_note: str | None) -> None:
        """Say once, in plain words, that a wait the service asked for was capped; not
        again until a success comes back (a night of 429s logs one line)."""
        if wait_note is not None and not self._noted:
            self._noted = True
            log.warning("%s", wait_note)

    def throttled(
        self,
        retry_after: float | None,
        sent_at: float | None = None,
        *,
        note: str | None = None,
    ) -> float:
        """Slow the whole pool down; returns the pause chosen (0: the rate was cut).
        `retry_after` is already capped (retry.server_wait); `note` says so."""
        self.note(note)
        if self.adaptive is not None:
            self.adaptive.on_throttle(sent_at)
            pause = retry_after or 0.0
        elif retry_after is None:
            self._streak += 1
            pause = min(retry.BACKOFF_CAP_S, self._cooldown * 2.0 ** (self._streak - 1))
        else:
            pause = retry_after
        self._cool_until = max(self._cool_until, self._clock() + pause)
        return pause

    def answered(self, sent_at: float | None = None) -> None:
        """The service answered with anything but a 429; `sent_at` for a success."""
        self._streak = 0
        if sent_at is not None:
            self._noted = False
        if self.adaptive is not None:
            self.adaptive.on_answer(sent_at)


class RetryBudget:
    """Retries may add at most `ratio` of the first attempts (plus `minimum`) over a
    sliding window (gRPC/Finagle style), so an outage ends in a fast, clear stop
    rather than a retry storm."""

    def __init__(
        self,
        *,
        ratio: float = retry.RETRY_BUDGET_RATIO,
        minimum: int = retry.RETRY_BUDGET_MIN,
        window: float = retry.RETRY_BUDGET_WINDOW_S,
        clock: Clock = time.monotonic,
    ) -> None:
        self.ratio, self.minimum, self.window, self._clock = ratio, minimum, window, clock
        self._firsts: deque[float] = deque()
        self._retries: deque[float] = deque()

    def _prune(self, now: float) -> None:
        for stamps in (self._firsts, self._retries):
            while stamps and stamps[0] <= now - self.window:
                stamps.popleft()

    def first_attempt(self) -> None:
        self._firsts.append(self._clock())

    def try_retry(self) -> bool:
        """Spend one retry if the budget allows it."""
        now = self._clock()
        self._prune(now)
        if len(self._retries) >= self.minimum + self.ratio * len(self._firsts):
            return False
        self._retries.append(now)
        return True
