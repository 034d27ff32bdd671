"""Pacing shared by every worker: the rate, the window in flight, what a 429 does to them.

`Flow` (adaptive.py) holds both: a rate (--rpm's, exactly, or one it finds) and a window
of requests in flight sized by Little's law (rate x observed latency, under the in-flight
ceiling 429s revealed and --concurrency). A 429 is the pool's signal, so it slows
everyone, not just the worker that saw it:

- a 429 at the in-flight ceiling is the cap: the window holds there, nothing pauses;
- fixed (`--rpm` given), any other 429 pauses the whole pool (Retry-After when the
  server gives one, else a cool-down that doubles while the 429s continue and resets
  on an answer): the limit we were told is not the one we met;
- adaptive (no `--rpm`): the flow cuts its rate (CUBIC-style); a Retry-After still
  pauses the pool.

Workers wait their turn one at a time (a FIFO lock), so a turn wakes one waiter, not the
pool. Every wait here ends at once when the run stops (`wait_turn(stop)`): nothing more
will be sent, so nothing is worth waiting for.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

from batchgen import retry
from batchgen.adaptive import CubicRate, Flow

__all__ = ["CubicRate", "Flow", "Pacer", "RetryBudget", "until"]

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
        max_in_flight: int | None = None,
        first_window: int | None = None,
    ) -> None:
        self.flow = Flow(rpm, clock=clock, max_in_flight=max_in_flight, first_window=first_window)
        self.fixed = rpm is not None
        self._sleep = sleep
        self._clock = clock
        self._cooldown = cooldown
        self._cool_until = 0.0
        self._streak = 0
        self._noted = False  # a capped wait was logged since the last plain answer
        self._turns = asyncio.Lock()  # one waiter decides at a time, FIFO
        self._answer = asyncio.Event()  # set when an answer may have opened the window

    @property
    def adaptive(self) -> Flow | None:
        """The flow when it finds the rate itself (no --rpm)."""
        return None if self.fixed else self.flow

    async def wait_turn(self, stop: asyncio.Event | None = None) -> bool:
        """Wait for this worker's turn to send. False, with no turn taken, when `stop`
        is set first (a 429's pause, the rate's spacing, a full window: every wait ends
        at once)."""
        async with self._turns:
            while True:
                if stop is not None and stop.is_set():
                    return False
                remaining = self._cool_until - self._clock()
                if remaining > 0:
                    if not await self._pause(self._sleep(remaining), stop):
                        return False
                    continue
                delay = self.flow.delay()
                if delay <= 0:
                    self.flow.take()  # no await since delay() said 0: the slot is ours
                    return True
                if math.isinf(delay):  # the window is full: until an answer comes back
                    self._answer.clear()
                    if not await self._pause(self._answer.wait(), stop):
                        return False
                elif not await self._pause(self._first(self._sleep(delay)), stop):
                    return False

    async def _first(self, sleep: Awaitable[None]) -> None:
        """The sleep, or an answer first (it may open the window, or quicken the rate)."""
        self._answer.clear()
        waits = (asyncio.ensure_future(sleep), asyncio.ensure_future(self._answer.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    @staticmethod
    async def _pause(wait: Awaitable[object], stop: asyncio.Event | None) -> bool:
        if stop is None:
            await wait
            return True
        return await until(wait, stop)

    def release_turn(self) -> None:
        """The turn `wait_turn` gave was not used (the run is stopping, or the budget
        is spent): it must not count as in flight."""
        self.flow.release()
        self._answer.set()

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
        """Slow the whole pool down; returns the pause chosen (0: the window or the rate
        was cut). `retry_after` is already capped (retry.server_wait); `note` says so."""
        self.note(note)
        kind = self.flow.on_throttle(sent_at)
        self._answer.set()
        if not self.fixed:
            pause = retry_after or 0.0
        elif retry_after is not None:
            pause = retry_after
        elif kind == "cap":
            pause = 0.0  # the in-flight cap: the window holds at it, nobody waits
        else:
            self._streak += 1
            pause = min(retry.BACKOFF_CAP_S, self._cooldown * 2.0 ** (self._streak - 1))
        self._cool_until = max(self._cool_until, self._clock() + pause)
        return pause

    def answered(self, sent_at: float | None = None) -> None:
        """The service answered with anything but a 429; `sent_at` for a success."""
        self._streak = 0
        if sent_at is not None:
            self._noted = False
        self.flow.on_answer(sent_at)
        self._answer.set()


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
