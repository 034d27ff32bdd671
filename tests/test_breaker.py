"""The circuit breaker in simulated time: a fake clock that only sleeping moves (only one
waiter ever sleeps, the rest wait on it), so outages of minutes take milliseconds."""

from __future__ import annotations

import asyncio
import random

import pytest

from batchgen import retry
from batchgen.breaker import Breaker
from batchgen.errors import AnswerProblem, ApiError, ApiStatusError, BadAnswerError, TransportError
from batchgen.planning import format_duration
from tests.runs import FakeSleep


def breaker(
    sleep: FakeSleep, *, threshold: int = 3, limit: float = 600.0, seed: int = 1
) -> Breaker:
    return Breaker(
        threshold=threshold,
        outage_limit=limit,
        clock=sleep.clock,
        sleep=sleep,
        rng=random.Random(seed),
    )


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (TransportError("cannot connect", sent=False, reason="connection refused"), True),
        (TransportError("timed out waiting", sent=True, reason="timed out"), True),
        (TransportError("connection failed", sent=True), True),
        (TransportError("dead kept-alive connection", sent=False, stale=True), False),
        (ApiStatusError(502, "bad gateway"), True),
        (ApiStatusError(503, "unavailable"), True),
        (ApiStatusError(504, "gateway timeout"), True),
        (ApiStatusError(500, "internal error"), False),  # the service itself: the budget's
        (ApiStatusError(429, "slow down"), False),
        (ApiStatusError(400, "bad seed"), False),
        (ApiStatusError(401, "bad key"), False),
        (BadAnswerError(AnswerProblem.TRUNCATED, "cut"), False),  # a 200: it answered
    ],
)
def test_what_counts_as_an_outage(error: ApiError, outage: bool) -> None:
    assert retry.is_outage(error) is outage


def test_outage_reason_is_a_few_words() -> None:
    refused = TransportError("cannot connect to http://x: [Errno 111] ...", sent=False,
                             reason="connection refused")  # fmt: skip
    assert retry.outage_reason(refused) == "connection refused"
    assert retry.outage_reason(ApiStatusError(503, "down for maintenance")) == "HTTP 503"


@pytest.mark.parametrize(
    ("events", "opens_at"),
    [
        ("fff", 3),  # three outage failures in a row open it
        ("ffaff", None),  # an answer in between: the service is reachable
        ("ffaffff", 6),
        ("ff", None),
    ],
)
def test_it_opens_after_threshold_failures_in_a_row(events: str, opens_at: int | None) -> None:
    b = breaker(FakeSleep(), threshold=3)
    opened = None
    for n, event in enumerate(events, 1):
        if event == "f":
            if b.failed("connection refused", probe=False) and opened is None:
                opened = n
        else:
            b.answered(probe=False)
    assert opened == opens_at and b.is_open is (opens_at is not None)


async def test_probes_go_one_at_a_time_at_growing_jittered_intervals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sleep = FakeSleep()
    b = breaker(sleep, threshold=1, limit=10_000)
    stop = asyncio.Event()
    assert await b.admit(stop) is False  # closed: send as usual
    b.failed("connection refused", probe=False)
    gaps = []
    for _ in range(9):
        before = sleep.now
        assert await b.admit(stop) is True  # the probe
        gaps.append(sleep.now - before)
        b.failed("connection refused", probe=True)
    ceilings = [1, 2, 4, 8, 16, 30, 30, 30, 30]
    assert all(c / 2 <= gap <= c for gap, c in zip(gaps, ceilings, strict=True)), gaps
    assert len(set(gaps)) == len(gaps)  # jittered: shards that failed together spread out
    assert b.probes == 9 and not b.given_up
    b.answered(probe=True)
    assert not b.is_open and await b.admit(stop) is False
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "the service looks unreachable (connection refused): the pool waits, probing it",
        f"the service answers again, after {format_duration(sleep.now)}",
    ]


async def test_the_pool_waits_for_the_one_probe() -> None:
    sleep = FakeSleep()
    b = breaker(sleep, threshold=2)
    stop = asyncio.Event()
    b.failed("HTTP 503", probe=False)
    b.failed("HTTP 503", probe=False)
    admitted: list[bool | None] = []

    async def worker() -> None:
        admitted.append(await b.admit(stop))

    tasks = [asyncio.create_task(worker()) for _ in range(8)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert admitted == [True]  # one probe; seven wait on it
    assert len(sleep.pauses) == 1  # and only one of them slept
    b.answered(probe=True)  # the probe was answered: everyone goes
    await asyncio.gather(*tasks)
    assert admitted == [True] + [False] * 7


async def test_a_probe_not_sent_lets_the_next_one_go_at_once() -> None:
    sleep = FakeSleep()
    b = breaker(sleep, threshold=1)
    stop = asyncio.Event()
    b.failed("connection refused", probe=False)
    assert await b.admit(stop) is True
    waited = sleep.now
    b.release(probe=True)  # e.g. a dead kept-alive connection's free resend
    assert await b.admit(stop) is True and sleep.now == waited


async def test_a_sustained_outage_gives_up_at_the_limit() -> None:
    sleep = FakeSleep()
    b = breaker(sleep, threshold=1, limit=600.0)
    stop = asyncio.Event()
    b.failed("connection refused", probe=False)
    while (probe := await b.admit(stop)) is not None:
        assert probe is True
        b.failed("connection refused", probe=True)
    assert b.given_up and sleep.now == pytest.approx(600.0)  # the last probe at the limit
    assert 20 <= b.probes <= 45  # one every 15..30 s once the interval is capped
    assert b.unreachable_for() == pytest.approx(600.0) and b.reason == "connection refused"


async def test_a_stop_ends_every_wait_at_once() -> None:
    b = Breaker(threshold=1, outage_limit=600.0, clock=lambda: 0.0, sleep=asyncio.sleep)
    stop = asyncio.Event()
    b.failed("connection refused", probe=False)
    waiters = [asyncio.create_task(b.admit(stop)) for _ in range(4)]  # a real 0.5..1 s sleep
    await asyncio.sleep(0.01)
    stop.set()
    done = await asyncio.wait_for(asyncio.gather(*waiters), timeout=0.2)
    assert done == [None] * 4


async def test_a_simulated_pool_sends_only_probes_through_an_outage() -> None:
    """8 workers, each request 0.1 s; the service is down from 10 s to 70 s."""
    sleep = FakeSleep()
    b = breaker(sleep, threshold=5)
    stop = asyncio.Event()
    sent_during = 0
    done = 0

    async def worker() -> None:
        nonlocal sent_during, done
        while done < 2000:
            probe = await b.admit(stop)
            assert probe is not None
            sleep.now += 0.1 / 8  # eight in flight share the clock
            if 10.0 <= sleep.now < 70.0:
                sent_during += 1
                b.failed("connection refused", probe=probe)
            else:
                done += 1
                b.answered(probe=probe)
            await asyncio.sleep(0)

    await asyncio.gather(*(worker() for _ in range(8)))
    assert not b.is_open and not b.given_up
    assert sent_during <= 5 + 8 + 15, sent_during  # the streak, those in flight, the probes
