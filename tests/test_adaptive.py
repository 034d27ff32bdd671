"""The flow finds a limit nobody told it, and holds one it was told, in simulated time (no
sleeping), at 11 s an image as at 1.1 s: its constants are in round trips."""

from __future__ import annotations

import heapq
import itertools
import math

import pytest

from batchgen.pacing import CubicRate, Flow
from tests.flowsim import simulate

PRO = 50 / 60  # Segmind Pro: 50 requests a minute
CAP = 10  # Ideogram: about 10 images in flight per organisation


@pytest.mark.parametrize(
    ("limit", "workers", "latency", "seconds", "max_429"),
    [
        (5.0, 32, 0.2, 60, 0.10),  # the bench's hidden limits
        (20.0, 32, 0.2, 60, 0.05),
        (5.0, 8, 0.05, 60, 0.10),
        (PRO, 10, 11.0, 900, 0.05),  # Segmind Pro's 50 a minute at the real 11 s latency
        (PRO, 64, 11.0, 900, 0.05),  # ... with far more workers than it needs
        (5.0, 32, 2.0, 120, 0.05),  # ten in flight needed to reach the limit
    ],
)
def test_finds_a_hidden_limit(
    limit: float, workers: int, latency: float, seconds: float, max_429: float
) -> None:
    got = simulate(rate=limit, workers=workers, latency=latency, seconds=seconds)
    assert got.achieved >= 0.85 and got.share_429 < max_429, (got.achieved, got.share_429)


# The operating point: 11 s an image, 50 a minute, 10 in flight, and the same scaled by
# 1/10 and 1/2 (the bench's emulator runs). Limit: min(rate, cap / latency); rate x latency
# = 9.2 in flight. A run of 60 round trips.
SCALES = [1.0, 0.5, 0.1]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(("told", "floor"), [(False, 0.90), (True, 0.95)])
def test_the_operating_point_at_every_scale(scale: float, told: bool, floor: float) -> None:
    rate = PRO / scale
    got = simulate(rate=rate, latency=11.0 * scale, cap=CAP, jobs=550,
                   rpm=rate * 60 if told else None)  # fmt: skip
    steady = got.ok / (got.seconds - 11.0 * scale) / got.limit  # the last image's wait aside
    assert steady >= floor and got.share_429 < 0.03, (steady, got.share_429)


@pytest.mark.parametrize("told", [False, True])
def test_the_controller_is_scale_free(told: bool) -> None:
    """The same run in round trips at 11 s and at 1.1 s: the same figures (nearly: the
    adaptive run's trajectory is chaotic enough for float rounding to shift a cut)."""
    runs = [
        simulate(
            rate=PRO / s, latency=11.0 * s, cap=CAP, jobs=300, rpm=PRO / s * 60 if told else None
        )
        for s in (1.0, 0.1)
    ]
    assert runs[0].achieved == pytest.approx(runs[1].achieved, rel=0.02 if told else 0.07)
    assert abs(runs[0].share_429 - runs[1].share_429) < 0.01
    assert runs[0].time_to(0.9, window=55) / 11.0 == pytest.approx(
        runs[1].time_to(0.9, window=5.5) / 1.1, abs=1.0 if told else 5.0
    )  # round trips to 90% of the limit


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_held_at_the_cap_when_the_rate_allows_more(scale: float) -> None:
    """1,200 a minute at 11 s: the cap binds. Its 429s are told from the rate's: after
    slow start's, the rate is never cut for them."""
    latency = 11.0 * scale
    made: list[Flow] = []

    def flow(clock: object) -> Flow:
        made.append(Flow(clock=clock, max_in_flight=64))  # type: ignore[arg-type]
        return made[-1]

    got = simulate(rate=20 / scale, latency=latency, cap=CAP, jobs=600, make_flow=flow)
    assert got.achieved >= 0.90 and got.share_429 < 0.03, (got.achieved, got.share_429)
    assert made[0].ceiling == CAP and made[0].rate_429s <= 2


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_a_free_key_with_rpm_from_the_first_minute(scale: float) -> None:
    """5 a minute, told: paced from the start, no burst, no 429."""
    got = simulate(rate=5 / 60, latency=11.0 * scale, rpm=5, jobs=5)
    assert got.refused == 0 and got.done_at[-1] <= 60.0, got.done_at


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_a_429_is_cut_once_a_round_trip_and_recovered_from_in_a_few(scale: float) -> None:
    """After each cut past slow start's exit, the rate is back at 0.97 W (W: what got
    through) within 1.25 round trips, and at 95% of the limit within 1.5 (at 11 s an image as
    at 1.1 s)."""
    rtt, limit = 11.0 * scale, PRO / scale
    cuts: list[tuple[float, float]] = []  # (when, W)
    back: dict[float, list[float]] = {}  # cut -> [back at 0.97 W, at 0.95 of the limit]

    class Counting(Flow):
        def on_throttle(self, sent_at: float | None = None) -> str:
            before = self._last_cut
            kind = super().on_throttle(sent_at)
            if self._last_cut != before:
                cuts.append((self._clock(), self._w_max))
            return kind

        def on_answer(self, sent_at: float | None = None) -> None:
            super().on_answer(sent_at)
            if cuts and cuts[-1][0] == self._last_cut:
                when, w = cuts[-1]
                seen = back.setdefault(when, [math.inf, math.inf])
                if self.rate >= 0.97 * w:
                    seen[0] = min(seen[0], self._clock() - when)
                if self.rate >= 0.95 * limit:
                    seen[1] = min(seen[1], self._clock() - when)

    simulate(rate=limit, latency=rtt, cap=CAP, jobs=550,
             make_flow=lambda c: Counting(clock=c, max_in_flight=64))  # fmt: skip
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(cuts)]
    assert cuts and min(gaps, default=math.inf) >= 0.8 * rtt, gaps  # once a round trip
    steady = [back[when] for when, _ in cuts[2:-1]]  # slow start's exit and its measure aside
    assert len(steady) >= 3 and all(w <= 1.25 * rtt and lim <= 1.5 * rtt for w, lim in steady), [
        (w / rtt, lim / rtt) for w, lim in steady
    ]


def test_a_fast_service_is_not_held_back() -> None:
    """No limit to find, 16 workers, 2 ms answers, 1 ms timers: 8,000 a second are
    possible, and within 2 s the pacer lets nearly all of them through."""
    got = simulate(rate=None, workers=16, latency=0.002, seconds=2.0, burst=1e9,
                   timer_tick=0.001, jitter=0.0)  # fmt: skip
    assert got.ok / 2.0 >= 0.85 * 16 / 0.002 and got.refused == 0, got.ok


def test_slow_start_doubles_the_window_every_round_trip() -> None:
    now = [0.0]
    flow = CubicRate(clock=lambda: now[0])
    assert flow.window() == 2 and not flow.throttled
    for step in range(1, 4):  # each round trip answers the whole window
        sent = [now[0]] * int(flow.window())
        for _ in sent:
            flow.take()
        now[0] += 1.0
        for when in sent:
            flow.on_answer(when)
        assert flow.window() == 2 * 2**step
    assert flow.current_rate() == pytest.approx(1.5 * 16 / 1.0)  # paced over the round trip


def test_a_429_cuts_the_rate_and_answers_grow_it_back() -> None:
    now = [0.0]
    flow = CubicRate(clock=lambda: now[0])
    for step in range(40):  # 10 requests a second for 4 s, each answered in 0.1 s
        now[0] = step * 0.1
        flow.take()
        now[0] += 0.05
        flow.on_answer(now[0] - 0.05)
    now[0] += 0.05
    flow.take()
    assert flow.on_throttle(now[0]) == "rate"  # nothing else in flight: not a cap
    assert flow.throttled and flow.rate < 1.5 * 42 / 0.05  # below slow start's pace
    start = now[0]
    for step in range(1, 12):  # a round trip on, 10 a second get through, one is refused
        now[0] = start + step * 0.1
        flow.take()
        flow.on_answer(now[0] - 0.05)
    flow.take()
    assert flow.on_throttle(now[0]) == "rate"
    cut = flow.rate
    assert cut == pytest.approx(0.9 * 10, rel=0.25)  # measured: 0.9 W
    start = now[0]
    for step in range(1, 60):  # answers keep arriving at 10 a second
        now[0] = start + step * 0.1
        flow.take()
        flow.on_answer(now[0] - 0.05)
    assert flow.rate > cut


def test_the_window_follows_littles_law_under_the_ceiling() -> None:
    now = [0.0]
    flow = Flow(600, clock=lambda: now[0], max_in_flight=64)  # told: 10 a second
    for step in range(100):  # answered after 2 s each: 20 in flight
        now[0] = step * 0.1
        flow.take()
        if step >= 20:
            flow.on_answer(now[0] - 2.0)
    assert flow.window() == math.ceil(10 * 2.0 + 1)  # rate x p90 + 1
    flow.take()
    now[0] += 0.01
    flow.take()
    assert flow.on_throttle(now[0]) == "cap"  # refused with more in flight than ever let through
    assert flow.window() == flow.ceiling == flow.in_flight
    assert math.isinf(flow.delay())  # full: until an answer comes back
    assert Flow(600, clock=lambda: 0.0, max_in_flight=4).window() <= 4  # --concurrency bounds it


def test_a_turn_can_be_given_back() -> None:
    now = [0.0]
    flow = CubicRate(clock=lambda: now[0])
    flow.take()
    flow.take()
    assert math.isinf(flow.delay())  # a window of 2 to begin with: full
    flow.release()  # a turn not used (the run is stopping): it does not count as in flight
    assert flow.delay() == 0


def finish_time(jobs: int, *, refused_first: int, workers: int = 8, latency: float = 0.01) -> float:
    """Simulated seconds until `jobs` are answered 200 when the first `refused_first`
    requests are answered 429 and every later one is let through."""
    now = [0.0]
    flow = CubicRate(clock=lambda: now[0])
    events = [(0.0, n, "send") for n in range(workers)]
    parked: list[int] = []
    sent = done = 0
    sent_at = [0.0] * workers
    while events:
        when, worker, kind = heapq.heappop(events)
        now[0] = when
        if kind == "send":
            if sent - min(sent, refused_first) >= jobs:
                continue
            delay = flow.delay()
            if math.isinf(delay):
                parked.append(worker)
                continue
            if delay > 0:
                heapq.heappush(events, (when + delay, worker, "send"))
                continue
            flow.take()
            sent += 1
            sent_at[worker] = when
            answer = "429" if sent <= refused_first else "ok"
            heapq.heappush(events, (when + latency, worker, answer))
            continue
        if kind == "ok":
            done += 1
            flow.on_answer(sent_at[worker])
            if done == jobs:
                return when
        else:
            flow.on_throttle(sent_at[worker])
        heapq.heappush(events, (when, worker, "send"))
        events.extend((when, n, "send") for n in parked)
        heapq.heapify(events)
        parked.clear()
    raise AssertionError("never finished")


def test_one_429_as_the_very_first_answer_is_a_brief_slow_down() -> None:
    """Nothing answered yet, nothing to measure by: the window closes on it, no cut."""
    assert finish_time(20, refused_first=0) < 0.2
    assert finish_time(20, refused_first=1) < 0.3
    assert finish_time(200, refused_first=1) < 1.0  # and it climbs on


def test_an_early_cut_still_finds_a_hard_limit() -> None:
    """A limit of 1 a second, which refuses nearly everything slow start sends, is found."""
    got = simulate(rate=1.0, workers=32, latency=0.05, seconds=60)
    assert got.achieved >= 0.9, (got.achieved, got.share_429)


def test_an_answer_finds_its_request_when_the_clock_was_read_after_the_turn() -> None:
    """The runner reads `sent_at` just after `take`: the answer is still that request's,
    so a cap's 429 is told by the in-flight count its own request saw."""
    now = [0.0]
    flow = Flow(600, clock=lambda: now[0], max_in_flight=64)
    for step in range(30):  # 10 a second, answered after 1 s: 10 in flight
        now[0] = step * 0.1
        if step >= 10:
            flow.on_answer(now[0] - 1.0 + 1e-6)
        flow.take()
    now[0] += 0.01
    flow.take()
    assert flow.on_throttle(now[0] + 1e-6) == "cap"  # 10 others, more than any let through
    assert flow.ceiling == 10
