"""Retry policy and pacing: pure functions and small state machines, table-tested."""

from __future__ import annotations

import asyncio
import random

import pytest

from batchgen import retry
from batchgen.errors import ApiStatusError
from batchgen.pacing import Pacer, RetryBudget
from batchgen.retry import Verdict

NOW = 1_800_000_000.0  # a fixed "now" for date arithmetic


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (None, Verdict.RETRY),
        (500, Verdict.RETRY),
        (502, Verdict.RETRY),
        (503, Verdict.RETRY),
        (504, Verdict.RETRY),
        (429, Verdict.THROTTLED),
        (401, Verdict.STOP_RUN),
        (403, Verdict.STOP_RUN),
        (404, Verdict.STOP_RUN),
        (406, Verdict.STOP_RUN),
        (400, Verdict.FAIL_JOB),
        (413, Verdict.FAIL_JOB),
        (422, Verdict.FAIL_JOB),
    ],
)
def test_classify(status: int | None, verdict: Verdict) -> None:
    assert retry.classify(status) is verdict


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"x-rate-limit-reset-at-utc": "garbage"}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert retry.parse_retry_after(headers, now=NOW) == expected


def test_retry_after_dates_are_relative_to_now() -> None:
    from datetime import UTC, datetime

    now = datetime(2027, 1, 15, 8, 0, 0, tzinfo=UTC).timestamp()
    http_date = {"Retry-After": "Fri, 15 Jan 2027 08:00:10 GMT"}
    assert retry.parse_retry_after(http_date, now=now) == pytest.approx(10)
    iso = {"x-rate-limit-reset-at-utc": "2027-01-15T08:00:30Z"}
    assert retry.parse_retry_after(iso, now=now) == pytest.approx(30)
    assert retry.parse_retry_after({"Retry-After": "3", **iso}, now=now) == 3  # Retry-After wins


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 8, 20])
def test_backoff_is_full_jitter_under_an_exponential_cap(attempt: int) -> None:
    rng = random.Random(attempt)
    ceiling = min(retry.BACKOFF_CAP_S, retry.BACKOFF_BASE_S * 2 ** (attempt - 1))
    delays = [retry.backoff_delay(attempt, rng=rng) for _ in range(500)]
    assert all(0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling * 0.8 and min(delays) < ceiling * 0.2  # spread over the range


def test_the_server_word_wins_over_our_backoff() -> None:
    assert retry.retry_delay(5, 1.5) == 1.5
    assert retry.retry_delay(1, None, rng=random.Random(1)) <= retry.BACKOFF_BASE_S


def test_error_from_response_reads_json_and_text() -> None:
    error = ApiStatusError.from_response(400, b'{"error": "seed is bad"}', {"Retry-After": "4"})
    assert (error.status, error.message, error.retry_after) == (400, "seed is bad", 4.0)
    html = ApiStatusError.from_response(405, b"<html>Method Not Allowed</html>", {})
    assert "Method Not Allowed" in html.message


def test_retry_budget_allows_a_fifth_more_plus_a_minimum() -> None:
    now = [0.0]
    budget = RetryBudget(ratio=0.2, minimum=2, window=10.0, clock=lambda: now[0])
    for _ in range(10):
        budget.first_attempt()
    granted = sum(budget.try_retry() for _ in range(10))
    assert granted == 2 + 2  # minimum + 20% of 10
    now[0] = 11.0  # the window slid past everything
    assert budget.try_retry()


async def test_a_429_pauses_the_whole_pool() -> None:
    now = [100.0]
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds
        await asyncio.sleep(0)

    pacer = Pacer(600, sleep=sleep, clock=lambda: now[0], cooldown=2.0)
    assert pacer.throttled(None) == 2.0
    assert pacer.throttled(None) == 4.0  # consecutive 429s lengthen the pause
    await asyncio.gather(*(pacer.wait_turn() for _ in range(5)))  # every worker waits
    assert now[0] == pytest.approx(104.0) and len(pauses) >= 1
    pacer.answered()
    assert pacer.throttled(None) == 2.0  # a success resets the streak
    assert pacer.throttled(7.0) == 7.0  # the server's Retry-After is honoured
