"""How many requests go out, and how fast: a rate and a window of requests in flight.

Little's law ties them: to send R requests a second to a service that takes L seconds
to answer, R x L of them are in flight. So the number in flight is controlled, not a
fixed pool's size: `Flow` holds a rate (given by --rpm, or found, below) and lets a
request go when its turn at that rate has come *and* fewer than the window are in
flight, where

    window = min(ceil(rate x L + 1), the in-flight ceiling, max_in_flight)

L is the p90 of recent successes' latencies (or the age of the oldest request in
flight, when that is longer: before the first answer it is all there is), the
ceiling is what 429s have shown the service allows in flight (Ideogram's ~10 per
organisation), and `max_in_flight` is --concurrency, the pool's size, which bounds
the money a crash can cost. At 11 s an image and Segmind Pro's 50 a minute that is
about 10 in flight; at 1,200 a minute, the ceiling.

Every constant about time is in round trips (the smoothed latency of successes) or in
requests, never in seconds, so the controller behaves the same at 11 s an image as at
1.1 s (the tests simulate both scales).

The rate. With --rpm it is that, exactly: requests are spaced at 60/rpm (GCRA), with
no start-up burst; a request the window held back may go up to half a spacing late and
the next keeps the original schedule (so a window that is briefly full costs no
throughput), while an idle pool earns no burst. Without --rpm it is found:

- slow start (until the first 429): a window of 2, one more for every answer (it
  doubles every round trip, as TCP's), paced at twice the window per round trip. An
  explicit --concurrency N opens it at N instead (`first_window`): the user said how
  many may be in flight, as a fixed pool of N always did, and a 429 among them is
  what it always is, a signal; without it, a limit nobody stated is probed for;
- a 429 is told apart from the in-flight cap: it is the cap when it came with more
  requests in flight than any recent request let through (answered, or still in flight
  a quarter of a round trip on, past where a 429 would have come back), or with the
  ceiling's count; the ceiling is then that count, lowered by at most one at a time (a
  rate 429 mistaken for the cap would otherwise hold the pool below the rate for good),
  and the rate is left alone. Otherwise it is the rate: when in doubt, a cut, which is
  recovered from in two round trips.
  The first 429 of slow start cannot be told apart (both grow together there), so it
  is taken for both, the ceiling provisionally;
- on a rate 429, once per round trip (the answers to requests sent before a cut say
  nothing new): W = the rate at which requests sent over the last round trip (or the
  last 10 sends, if longer) got past the rate limit (a cap's 429 did), counted by when
  they were sent; the rate drops to 0.9 W (a token bucket keeps no queue to drain:
  sending just under its rate is enough), is back at W within R = 2 round trips (or 20
  requests' worth, if longer), rate(t) = W (1 - 0.1 (1 - t / R)^3), then probes above
  it slowly, rate(t) = W (1 + 0.1 ((t - R) / K)^3), K = 120 requests' worth at W,
  within 3..30 round trips. W is the lower median of the last three measurements when
  that is higher (one round trip's count is noisy: a low one would otherwise hold the
  rate down until the slow probe found the limit again);
- the ceiling grows by one after 4 round trips of being what held the pool back
  without a 429 (16 once a 429 has confirmed it), so a cap is held at, not probed every
  round trip;
- never more than twice the rate answers arrive at (over a round trip), nor below 3
  requests a minute.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable

Clock = Callable[[], float]


class Flow:
    BETA = 0.9
    PROBE_REQUESTS = 120  # the probe above W: 10% over it after this many requests' worth
    K_MIN_REQUESTS = 30
    K_MIN_RTT, K_MAX_RTT = 3.0, 30.0  # ... within these round trips
    RECOVER_RTT, RECOVER_REQUESTS = 2.0, 20  # back to W after a cut: 2 round trips or
    # 20 requests' worth, whichever is longer (a round trip of few requests is no sample)
    MIN_RATE = 0.05  # requests/s
    INITIAL_WINDOW = 2
    OKS_RTT = 2.0  # fixed: a 429 is the cap's when more were in flight than for those let
    # through over the last 2 round trips (not slow start's small counts of long ago)
    MARGIN = 1.0  # requests in flight beyond rate x latency
    CATCH_UP = 0.5  # how late (in spacings) a request the window held may go, on schedule
    TOLERANCE_S = 0.005  # how early a request may go: a few timer ticks ...
    TOLERANCE_SHARE = 0.01  # ... and never more than 1% of a spacing (scale-free)
    MAX_GROWTH = 2.0
    SLOW_START_PACE = 1.5  # slow start sends its window over 2/3 of a round trip
    CEILING_PROBE_RTT = 4  # round trips at the ceiling before it grows by one
    CEILING_CONFIRMED_RTT = 16  # ... once a 429 has confirmed it
    DOOR_RTT = 0.25  # a 429 comes back within this much of a round trip: refused at the door
    MEASURE_SENDS = 10  # W is measured over at least this many sends
    SAMPLES = 64  # latencies kept for the p90
    HISTORY = 10_000  # timestamps kept for the rate estimates

    def __init__(
        self,
        rpm: float | None = None,
        *,
        clock: Clock = time.monotonic,
        max_in_flight: int | None = None,
        first_window: int | None = None,
    ) -> None:
        self._clock = clock
        self.fixed = rpm is not None
        self.rate = rpm / 60.0 if rpm else math.inf  # slow start paces by the window
        self.max_in_flight = float(max_in_flight) if max_in_flight else math.inf
        self.throttled = False  # a rate 429 seen (adaptive: slow start is over)
        self._started = clock()
        self._cwnd = float(first_window or self.INITIAL_WINDOW)  # slow start's window
        self._w_max = 0.0
        self._measured: deque[float] = deque(maxlen=3)  # W at the last cuts
        self._k = 1.0
        self._last_cut = -math.inf
        self._due = -math.inf  # when the last request was due (GCRA's virtual time)
        self._held = False  # a request is waiting because the window is full
        self._ceiling_held = False  # ... and the ceiling is why
        self._answers: deque[float] = deque()  # when answers (any but 429) arrived
        self._sends: deque[float] = deque()  # when requests were sent
        self._refused: deque[float] = deque()  # when the requests answered 429 were sent
        self._flying: deque[tuple[float, int]] = deque()  # (sent at, others in flight then)
        self._latencies: deque[float] = deque(maxlen=self.SAMPLES)
        self._p90_known = 0.0
        self._p90_stale = False  # a sample came since: sort again when it is asked for
        self._round_trip = 0.0  # smoothed seconds from send to answer (as TCP's SRTT)
        self.ceiling = math.inf  # what 429s have shown the service allows in flight
        self._confirmed = False  # a 429 came at the ceiling: it is the cap
        self._credit = 0  # successes while the ceiling held the pool back
        # (sent at, others in flight then) of requests let through
        self._oks: deque[tuple[float, int]] = deque(maxlen=self.SAMPLES)
        self.cap_429s = self.rate_429s = 0

    # -- what the pool asks -------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._flying)

    @property
    def round_trip(self) -> float:
        return self._round_trip

    @property
    def _p90(self) -> float:
        """The p90 of recent successes' latencies, sorted only when asked for: slow start
        never asks, and sorting on every answer was a measurable share of a busy loop."""
        if self._p90_stale:
            self._p90_known = _quantile(self._latencies, 0.9)
            self._p90_stale = False
        return self._p90_known

    def latency(self, now: float | None = None) -> float:
        """L of Little's law: the p90 of recent successes, or the oldest request's age
        when longer (at most twice the p90; before any answer, all there is)."""
        now = self._clock() if now is None else now
        oldest = now - self._flying[0][0] if self._flying else 0.0
        p90 = self._p90
        if not p90:
            return oldest
        return max(p90, min(oldest, 2.0 * p90))

    def window(self, now: float | None = None) -> float:
        """Requests that may be in flight now."""
        now = self._clock() if now is None else now
        if not self.fixed and not self.throttled:
            wanted = self._cwnd
        else:
            wanted = math.ceil(self.current_rate(now) * self.latency(now) + self.MARGIN)
        return max(1.0, min(wanted, self.ceiling, self.max_in_flight))

    def current_rate(self, now: float | None = None) -> float:
        if not self.fixed and not self.throttled:  # slow start: twice the window a round trip
            if not self._round_trip:
                return math.inf
            return self.SLOW_START_PACE * self._cwnd / self._round_trip
        return self.rate

    def delay(self) -> float:
        """Seconds until the next request may go; math.inf: when an answer comes back (a
        waiter asks again then, so a rate that grows while it waits shortens its wait)."""
        now = self._clock()
        window = self.window(now)
        if self.in_flight >= window:
            self._held = True
            self._ceiling_held = window >= self.ceiling
            return self._window_opens(now)
        rate = self.current_rate(now)
        if math.isinf(rate):
            return 0.0
        spacing = 1.0 / rate
        early = self._early(spacing)
        return max(0.0, self._due + spacing - early - now)

    def _window_opens(self, now: float) -> float:
        """When the window, full now, grows by itself: the oldest request's age, past the
        p90, lengthens L; else only an answer opens it."""
        if self.window(now) >= min(self.ceiling, self.max_in_flight):
            return math.inf
        rate = self.current_rate(now)
        if not self._flying or math.isinf(rate) or (not self.fixed and not self.throttled):
            return math.inf
        needed = (self.in_flight - self.MARGIN) / rate + 1e-6  # L that admits one more
        age = now - self._flying[0][0]
        p90 = self._p90
        if p90 and needed > 2.0 * p90:
            return math.inf
        return max(needed - age, 1e-3)

    def _early(self, spacing: float) -> float:
        """How early a request may go: timer ticks at high rates (epoll sleeps in whole
        milliseconds), 1% of a spacing at low ones (so it is the same at every scale)."""
        if spacing < 20 * self.TOLERANCE_S:
            return self.TOLERANCE_S
        return self.TOLERANCE_SHARE * spacing

    def take(self) -> None:
        """The caller sends now. Its slot is 1/rate after the last one's; one the window
        held back may go up to half a spacing late and keep the schedule; an idle pool
        earns no burst."""
        now = self._clock()
        rate = self.current_rate(now)
        if math.isinf(rate):
            self._due = now
        else:
            spacing = 1.0 / rate
            due = self._due + spacing
            earliest = now - self.CATCH_UP * spacing if self._held else now
            early = self._early(spacing)
            self._due = min(max(due, earliest), now + early)
        self._held = False
        self._flying.append((now, self.in_flight))
        _push(self._sends, now, self.HISTORY)

    def release(self) -> None:
        """A slot taken but not used: the caller did not send after all."""
        if self._flying:
            self._flying.pop()

    # -- what the service said ----------------------------------------------------

    def _land(self, sent_at: float | None) -> int:
        """One request is no longer in flight: the others in flight when it was sent."""
        if not self._flying:
            return 0
        if sent_at is not None:
            # the last one taken at or before it: the caller reads its clock after `take`
            # (nothing else is taken in between: no await there)
            for n in range(len(self._flying) - 1, -1, -1):
                when, others = self._flying[n]
                if when <= sent_at:
                    del self._flying[n]
                    return others
        return self._flying.popleft()[1]

    def on_answer(self, sent_at: float | None = None) -> None:
        """Any answer but a 429: the limit let it through. `sent_at`, given for
        successes only (a timeout's wait says nothing of the service's pace), feeds
        the latency estimates."""
        now = self._clock()
        others = self._land(sent_at)
        _push(self._answers, now, self.HISTORY)
        if sent_at is None:
            return
        self._oks.append((sent_at, others))
        sample = max(0.0, now - sent_at)
        self._latencies.append(sample)
        self._p90_stale = True
        self._round_trip = (
            sample if not self._round_trip else (0.875 * self._round_trip + 0.125 * sample)
        )
        if not self.fixed and not self.throttled:
            self._cwnd += 1.0
        if self._ceiling_held:
            self._ceiling_held = False
            self._credit += 1
            rounds = self.CEILING_CONFIRMED_RTT if self._confirmed else self.CEILING_PROBE_RTT
            if self._credit >= rounds * self.ceiling:
                self.ceiling += 1
                self._credit = 0
        if not self.fixed and self.throttled:
            cubic = self._climb(now - self._last_cut)
            window = self._measure_window(now, self._answers)
            arriving = _count_since(self._answers, now - window) / window
            self._set(min(cubic, self.MAX_GROWTH * max(arriving, self.MIN_RATE)))

    def on_throttle(self, sent_at: float | None = None) -> str:
        """A 429: 'cap' when it is the in-flight ceiling (the rate is left alone), else
        'rate' (adaptive: the rate is cut, once a round trip)."""
        now = self._clock()
        sent = now if sent_at is None else sent_at
        others = self._land(sent_at)
        if not self._round_trip:  # nothing answered yet: nothing to measure by
            self._cwnd = max(1.0, min(self._cwnd, float(others)))
            self.rate_429s += 1
            return "rate"
        ok = self._let_through(now)
        known = self.ceiling - 1 if math.isfinite(self.ceiling) else 0
        if (
            (self.throttled or self.fixed)
            and others >= 1
            and (others > max(ok, known - 1) or others >= self.ceiling)
        ):
            # more in flight than nearly every recent request let through had, or the
            # ceiling's count: the cap
            self._confirmed = self._confirmed or self.ceiling <= others + 1
            self.ceiling = max(1.0, min(self.ceiling, float(others)), known)
            self._credit = 0
            self.cap_429s += 1
            return "cap"
        self.rate_429s += 1
        _push(self._refused, sent, self.HISTORY)  # the cap's got past the rate limit
        if self.fixed or sent < self._last_cut:
            return "rate"  # fixed: the pool pauses; else sent before the last cut
        window = self._measure_window(now)
        since = now - window
        refused = sum(1 for when in self._refused if when >= since)  # 429s come back unordered
        let_through = _count_since(self._sends, since) - refused
        # what got through; leaving slow start, nearly the rate it was refused at (a
        # real limit is measured by the next cut, a round trip on)
        accepted = max(let_through / window, self.MIN_RATE)
        if let_through < 2 and len(self._answers) >= 2:  # too few to say: the last answers'
            accepted = max(accepted, 2.0 / max(now - self._answers[-2], 1e-3))
        if not self.throttled:  # slow start's window held its sends back: it measures low
            accepted = max(accepted, self.BETA * self.current_rate(now))
        if self.throttled:  # a measurement (slow start's exit is a guess)
            self._measured.append(accepted)
        # back to W: this cut's measure, or the recent ones' median when higher (one
        # round trip's count is noisy, and a limit that fell shows itself by a 429)
        measured = sorted(self._measured) or [accepted]
        self._w_max = max(accepted, measured[(len(measured) - 1) // 2])  # the lower median
        rtt = self._round_trip
        # 120 requests' worth, within 3..30 round trips (or 30 requests, when fewer than
        # one is in flight: then requests, not round trips, are what a probe is made of)
        longest = max(self.K_MAX_RTT * rtt, self.K_MIN_REQUESTS / accepted)
        self._k = min(longest, max(self.K_MIN_RTT * rtt, self.PROBE_REQUESTS / accepted))
        self._last_cut = now
        self.throttled = True
        self._set(accepted * self.BETA)
        return "rate"

    def _climb(self, since_cut: float) -> float:
        """The rate `since_cut` seconds after a cut: back to W within RECOVER_RTT round
        trips (concave), then a probe above it at K's pace (convex)."""
        back = max(self.RECOVER_RTT * self._round_trip, self.RECOVER_REQUESTS / self._w_max)
        if since_cut < back:
            return self._w_max * (1 - (1 - self.BETA) * (1 - since_cut / back) ** 3)
        return self._w_max * (1 + (1 - self.BETA) * ((since_cut - back) / self._k) ** 3)

    def _let_through(self, now: float) -> float:
        """The in-flight count a 429 must exceed to be the cap's. Adaptive: the most any
        of the last SAMPLES requests let through had, answered or still in flight past
        the door (DOOR_RTT on, a 429 would have come back): a 429 at a count the service
        has accepted is the rate's. Fixed (--rpm: the rate is known, so lean to the
        cap): the 3rd quartile over the last OKS_RTT round trips (at least MEASURE_SENDS
        requests), as answers are read after the service freed the slot and may count
        one or two more in flight than the service did."""
        if not self.fixed:
            door = now - self.DOOR_RTT * self._round_trip
            counts = [others for _, others in self._oks]
            counts += [others for when, others in self._flying if when < door]
            return max(counts, default=0)
        since = now - self.OKS_RTT * self._round_trip
        recent = [others for when, others in self._oks if when >= since]
        if len(recent) < self.MEASURE_SENDS:
            recent = [others for _, others in list(self._oks)[-self.MEASURE_SENDS :]]
        return _quantile(recent, 0.75) if recent else 0

    def _measure_window(self, now: float, stamps: deque[float] | None = None) -> float:
        """A round trip, or the last MEASURE_SENDS sends (answers) if they span longer;
        never before the run began."""
        stamps = self._sends if stamps is None else stamps
        span = now - stamps[-min(len(stamps), self.MEASURE_SENDS)] if stamps else 0.0
        window = max(self._round_trip, span)
        return max(min(window, now - self._started), 1e-3)

    def _set(self, rate: float) -> None:
        self.rate = max(self.MIN_RATE, rate)


def CubicRate(*, clock: Clock = time.monotonic) -> Flow:
    """The adaptive flow, as it was first called."""
    return Flow(clock=clock)


def _quantile(samples: Iterable[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


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
