"""A client-side rate that finds the server's limit when nobody says what it is.

Modelled on the AWS SDKs' "adaptive" retry mode (CUBIC, as TCP uses for its window):

- slow start: until the first 429, the rate is 8 requests/s doubled every half
  second, or twice the rate answers come back, whichever is higher; and beside
  that rate, TCP's slow start: one more request in flight for every answer.
  A pool of 32 workers does not open with 30 refusals, yet a fast service is at
  full speed within a few round trips (the in-flight window, clocked by its
  answers) and a slow one (latency-bound) within about two seconds (the rate);
- on a 429: W = the rate at which requests sent over the last round trip (at least
  a second) were let through, counted by when they were sent (so a limit on
  requests in flight, whose refusals come back at once and whose successes come
  back 11 s later, is measured as well as a token bucket), and the rate drops to
  0.7 W; one cut per round trip, since the answers to requests sent before a cut
  say nothing new. In the run's first second that window holds a request or two
  and measures nothing (one 429 as the very first answer read as "nothing gets
  through" and cut to 3 a minute): W is then at least the slow-start rate the
  request was sent at, K half a second and the in-flight ceiling left unset, so an
  early 429 is a brief slow-down and a real limit is measured a round trip later;
- on every other answer: rate(t) = W (1 + 0.3 ((t - K) / K)^3), t the seconds
  since the cut: a climb back to W that flattens out near it, then a probe above.
  Unlike TCP and the SDKs, K is counted in requests (K = 40 / W s, within 1..10 s), so a
  5/s limit and a 20/s one spend the same small share of requests above the limit;
- beside the rate, after the first 429: a ceiling on requests in flight, set to
  those in flight at each cut and raised by one every four round trips (AIMD on a
  window, as TCP's congestion avoidance): a limit on requests in flight (Ideogram's
  ~10) is then held at, not probed every round trip. In simulation at 11 s a
  request, 32 workers against a cap of 10 get 97% of it with 2.3% of requests
  answered 429 (83% and 9.4% on the rate alone); against Segmind Pro's 50 a minute,
  5.8% answered 429 instead of 19%;
- never more than twice the rate answers arrive at (over a round trip, at least a
  second: at 11 s a request, a one-second window mostly sees no answer at all and
  would starve the pool), nor below 3 requests a minute.

Requests are spaced evenly at 1/rate, GCRA style, with a tolerance of 5 ms: at
5/s that is a bucket of one token, no bursts for the server's token bucket to
punish; at 1,000/s it lets five go together. Without it, pacing is bound by the
event loop's timers (epoll sleeps in whole milliseconds): measured at 880 jobs/s
against a server that could answer 2,700.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

Clock = Callable[[], float]


class CubicRate:
    BETA = 0.7
    PROBE_REQUESTS = 40
    K_MIN_S, K_MAX_S = 1.0, 10.0  # seconds: long climbs would starve slow, long-latency runs
    MIN_RATE = 0.05  # requests/s
    START_RATE = 8.0
    SLOW_START_DOUBLING_S = 0.5
    RAMP_EVERY_S = 0.02  # how often slow start recomputes its rate
    TOLERANCE_S = 0.005  # how early a request may go: a few timer ticks
    MAX_GROWTH = 2.0
    CEILING_GROWTH = 0.25  # in-flight ceiling: +1 every 4 round trips' worth of answers
    HISTORY = 10_000  # timestamps kept for the rate estimates

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.throttled = False  # no 429 seen yet: slow start
        self.rate = self.START_RATE
        self._started = clock()
        self._next_ramp = self._started
        self._w_max = 0.0
        self._k = 1.0
        self._last_cut = -math.inf
        self._scheduled = -math.inf  # when the last request was due (GCRA's virtual time)
        self._answers: deque[float] = deque()  # when answers (any but 429) arrived
        self._sends: deque[float] = deque()  # when requests were sent
        self._refused: deque[float] = deque()  # when the requests answered 429 were sent
        self._in_flight = 0
        self._round_trip = 0.0  # smoothed seconds from send to answer (as TCP's SRTT)
        self._slow_start_allowance = 0  # slow start: in flight allowed beyond the rate's say
        self._ceiling = math.inf  # after a 429: no more in flight than this

    def delay(self) -> float:
        """Seconds until the next request may go, at the rate as it is now (a waiter
        asks again, so a rate that grows while it waits shortens its wait)."""
        now = self._clock()
        if not self.throttled and now >= self._next_ramp:
            self._next_ramp = now + self.RAMP_EVERY_S
            elapsed = now - self._started
            by_time = self.START_RATE * 2 ** min(elapsed / self.SLOW_START_DOUBLING_S, 30)
            window = min(max(elapsed, self.RAMP_EVERY_S), 1.0)
            by_answers = self.MAX_GROWTH * _count_since(self._answers, now - window) / window
            self.rate = max(by_time, by_answers)
        if not self.throttled and self._in_flight < self._slow_start_allowance:
            return 0.0
        wait = max(0.0, self._scheduled + 1.0 / self.rate - self.TOLERANCE_S - now)
        if self._in_flight + 1 > self._ceiling:  # full: ask again about when one answers
            return max(wait, min(1.0, max(0.01, self._round_trip / self._ceiling)))
        return wait

    def take(self) -> None:
        """The caller sends now. Its slot is 1/rate after the last one's, or now if
        the pool was idle: an idle spell earns no burst (nor do sends the slow-start
        window let through ahead of the rate)."""
        now = self._clock()
        due = max(self._scheduled + 1.0 / self.rate, now)
        self._scheduled = min(due, now + self.TOLERANCE_S)
        self._in_flight += 1
        _push(self._sends, now, self.HISTORY)

    def release(self) -> None:
        """A slot taken but not used: the caller did not send after all."""
        self._in_flight = max(0, self._in_flight - 1)

    def on_answer(self, sent_at: float | None = None) -> None:
        """Any answer but a 429: the limit let it through. `sent_at`, given for
        successes only (a timeout's wait says nothing of the service's pace), feeds
        the round-trip estimate."""
        now = self._clock()
        _push(self._answers, now, self.HISTORY)
        if sent_at is not None:
            sample = max(0.0, now - sent_at)
            self._round_trip = (
                sample if not self._round_trip else (0.875 * self._round_trip + 0.125 * sample)
            )
        self._in_flight = max(0, self._in_flight - 1)
        self._slow_start_allowance += 1
        if self.throttled:
            self._ceiling += self.CEILING_GROWTH / self._ceiling
            phase = (now - self._last_cut - self._k) / self._k
            cubic = self._w_max * (1 + (1 - self.BETA) * phase**3)
            # over a round trip (at least a second), or the run so far when shorter
            window = max(min(max(1.0, self._round_trip), now - self._started), self.RAMP_EVERY_S)
            arriving = _count_since(self._answers, now - window) / window
            self._set(min(cubic, self.MAX_GROWTH * max(arriving, self.MIN_RATE)))

    def on_throttle(self, sent_at: float | None = None) -> None:
        now = self._clock()
        sent = now if sent_at is None else sent_at
        _push(self._refused, sent, self.HISTORY)
        self._in_flight = max(0, self._in_flight - 1)
        if sent < self._last_cut:
            return  # sent before the last cut: already answered for
        window = max(min(max(1.0, now - sent), now - self._started), 0.1)  # not before we began
        since = now - window
        refused = sum(1 for when in self._refused if when >= since)  # 429s come back unordered
        let_through = _count_since(self._sends, since) - refused
        accepted = max(let_through / window, self.MIN_RATE)
        early = window < 1.0  # the run's first second: a request or two to measure by
        if early:
            # Too few sends to say anything (one 429 as the very first answer would
            # measure ~0 and drop the rate to MIN_RATE): W is at least the slow-start
            # rate it was sent at, and the climb back to it takes half a second, a brief
            # slow-down. A real limit is measured by the next cut, a round trip on.
            accepted = max(accepted, min(self.rate, self._slow_start_rate(sent - self._started)))
        self._w_max = accepted
        self._k = (
            self.SLOW_START_DOUBLING_S
            if early
            else min(self.K_MAX_S, max(self.K_MIN_S, self.PROBE_REQUESTS / accepted))
        )
        self._last_cut = now
        self.throttled = True
        self._set(accepted * self.BETA)
        if not early:  # in-flight at a cut says nothing either, that early
            self._ceiling = max(1.0, float(self._in_flight))

    def _slow_start_rate(self, elapsed: float) -> float:
        return self.START_RATE * 2 ** min(max(elapsed, 0.0) / self.SLOW_START_DOUBLING_S, 30)

    def _set(self, rate: float) -> None:
        self.rate = max(self.MIN_RATE, rate)


def _push(stamps: deque[float], when: float, limit: int) -> None:
    stamps.append(when)
    if len(stamps) > limit:
        stamps.popleft()


def _count_since(stamps: deque[float], since: float) -> int:
    count = 0
    for when in reversed(stamps):
        if when < since:
            break
        count += 1
    return count
