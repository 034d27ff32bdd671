"""The circuit breaker: the whole pool waits out an outage instead of burning retries.

The breaker and the retry budget divide the work by what the failures look like:

- an outage: requests fail without an answer from the service (cannot connect, the
  connection lost, timed out) or with a gateway's 502, 503 or 504 (`retry.is_outage`).
  `threshold` of them in a row, with no answer from the service in between (every
  worker failing), open the breaker: nothing is sent then but one probe at a time, at
  growing intervals (1, 2, 4 … 30 s, each jittered to 50..100% of itself), and the
  first answer of any kind (an image, a 400, a 429, a 500) closes it. Attempts that
  fail while it is open are the outage's, not the job's: they use up neither the job's
  attempts nor the retry budget. An outage that outlasts `outage_limit` seconds (the
  last probe goes at exactly that moment) stops the run.
- a broken service: reachable, answering 500 to everything at once. Not an outage (a
  probe would be answered at once, and close the breaker): the retry budget stops
  such a run within a few requests.

Time comes from an injected clock and sleep, so tests simulate outages without waiting;
every wait ends at once when the run stops (`stop`).
"""

from __future__ import annotations

import asyncio
import logging
import random

from batchgen import retry
from batchgen.pacing import Clock, Sleep, until
from batchgen.planning import format_duration

log = logging.getLogger("batchgen")


class Breaker:
    def __init__(
        self,
        *,
        threshold: int = retry.BREAKER_FAILURES,
        outage_limit: float = retry.OUTAGE_LIMIT_S,
        clock: Clock,
        sleep: Sleep,
        rng: random.Random | None = None,
        first_probe: float = retry.BREAKER_PROBE_FIRST_S,
        longest_probe: float = retry.BREAKER_PROBE_CAP_S,
    ) -> None:
        self.threshold = max(1, threshold)
        self.outage_limit = outage_limit
        self._clock, self._sleep, self._rng = clock, sleep, rng or random.Random()
        self._first, self._cap = first_probe, longest_probe
        self._streak = 0  # outage failures in a row
        self._since: float | None = None  # when the streak's first failure came back
        self._open = False
        self._interval = first_probe
        self._next_probe = 0.0
        self._probing = False  # the one probe is in flight
        self._sleeper = False  # one waiter sleeps until the next probe; the rest wait on it
        self._changed = asyncio.Event()
        self.reason = ""  # the last outage failure, in a few words
        self.probes = 0
        self.opened = 0  # how many times it opened
        self.given_up = False

    @property
    def is_open(self) -> bool:
        return self._open

    def unreachable_for(self) -> float:
        """Seconds since the first failure of the current outage (0 when there is none)."""
        return 0.0 if self._since is None else self._clock() - self._since

    async def admit(self, stop: asyncio.Event) -> bool | None:
        """Wait until a request may go: False when the breaker is closed (send as
        usual), True for the one probe of an open breaker, None when the run stops or
        the outage outlasted its limit (send nothing)."""
        while True:
            if stop.is_set() or self.given_up:
                return None
            if not self._open:
                return False
            if self._probing or self._sleeper:
                await until(self._changed.wait(), stop)
                continue
            wait = self._next_probe - self._clock()
            if wait > 0:
                self._sleeper = True
                try:
                    await until(self._sleep(wait), stop)
                finally:
                    self._sleeper = False
                    self._wake()  # if this waiter was cut, another one takes over
                continue
            self._probing = True
            self.probes += 1
            return True

    def failed(self, reason: str, *, probe: bool) -> bool:
        """An outage failure came back (`retry.is_outage`). True when the breaker is
        open (now, or already): the attempt counts against neither its job nor the
        retry budget. Check `given_up` then."""
        now = self._clock()
        if self._since is None:
            self._since = now
        self._streak += 1
        self.reason = reason
        if probe:
            self._probing = False
        if not self._open:
            if self._streak < self.threshold:
                return False
            self._open = True
            self.opened += 1
            log.warning("the service looks unreachable (%s): the pool waits, probing it", reason)
            self._interval = self._first
            self._schedule(now)
        elif probe:
            if now - self._since >= self.outage_limit:
                self.given_up = True
            self._interval = min(self._cap, 2 * self._interval)
            self._schedule(now)
        self._wake()
        return True

    def answered(self, *, probe: bool) -> None:
        """The service answered (anything but an outage failure): it is reachable."""
        if self._open:
            log.warning(
                "the service answers again, after %s", format_duration(self.unreachable_for())
            )
            self._open = False
            self._wake()
        self._streak = 0
        self._since = None
        if probe:
            self._probing = False

    def release(self, *, probe: bool) -> None:
        """An admitted request that says nothing about the service (it was not sent,
        or a dead kept-alive connection's free resend): a probe may go again."""
        if probe:
            self._probing = False
            self._wake()

    def _schedule(self, now: float) -> None:
        assert self._since is not None
        jittered = self._interval * self._rng.uniform(0.5, 1.0)
        self._next_probe = min(now + jittered, self._since + self.outage_limit)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
