"""Retry policy and pacing: pure functions and small state machines, table-tested."""

from __future__ import annotations

import asyncio
import random

import pytest

from batchgen import retry
from batchgen.errors import AnswerProblem, ApiError, ApiStatusError, BadAnswerError, TransportError
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
        (301, Verdict.STOP_RUN),  # never followed: the key would go where Location says
        (302, Verdict.STOP_RUN),
        (307, Verdict.STOP_RUN),
        (308, Verdict.STOP_RUN),
    ],
)
def test_classify(status: int | None, verdict: Verdict) -> None:
    assert retry.classify(status) is verdict


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (BadAnswerError(AnswerProblem.TRUNCATED, "cut"), Verdict.RETRY),
        (BadAnswerError(AnswerProblem.NOT_IMAGE, "html"), Verdict.FAIL_FOR_NOW),
        (BadAnswerError(AnswerProblem.TOO_LARGE, "huge"), Verdict.FAIL_JOB),
        (TransportError("dead kept-alive connection", sent=False, stale=True), Verdict.RESEND),
        (TransportError("lost answer", sent=True), Verdict.RETRY),
        (TransportError("cannot connect", sent=False), Verdict.RETRY),
        (ApiStatusError(307, "redirect"), Verdict.STOP_RUN),
        (ApiStatusError(429, "slow down"), Verdict.THROTTLED),
    ],
)
def test_verdict_reads_what_went_wrong(error: ApiError, verdict: Verdict) -> None:
    assert retry.verdict(error) is verdict


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"Retry-After": "3600"}, 3600.0),  # uncapped here; server_wait caps it
        # "no hint": our own backoff, never a storm of back-to-back requests
        ({"Retry-After": "0"}, None),
        ({"Retry-After": "-3"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "-inf"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "Fri, 15 Jan 2027 07:00:00 GMT"}, None),  # a date in the past
        ({"x-rate-limit-reset-at-utc": "2020-01-01T00:00:00Z"}, None),
        ({"x-rate-limit-reset-at-utc": "garbage"}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert retry.parse_retry_after(headers, now=NOW) == expected


MORNING = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
CLOCK_SLOW = MORNING - 3600  # our clock, an hour behind the service's


@pytest.mark.parametrize(
    ("headers", "now", "wait", "note"),
    [
        ({}, MORNING, None, None),
        ({"Retry-After": "5"}, MORNING, 5.0, None),
        ({"Retry-After": "60"}, MORNING, 60.0, None),
        (
            {"Retry-After": "3600"},
            MORNING,
            60.0,
            "waiting 60 s: the service asked for 3600 s (Retry-After); capped",
        ),
        ({"Retry-After": "inf"}, MORNING, None, None),
        ({"Retry-After": "0"}, MORNING, None, None),
        # years ahead: capped, whatever the clocks say
        (
            {"x-rate-limit-reset-at-utc": "2031-01-01T00:00:00Z"},
            MORNING,
            60.0,
            "waiting 60 s: the service asked for 124992000 s (x-rate-limit-reset-at-utc); capped",
        ),
        # a reset 5 s after the answer's own Date, our clock an hour slow: 5 s, not 3605
        (
            {
                "Date": "Fri, 15 Jan 2027 08:00:00 GMT",
                "x-rate-limit-reset-at-utc": "2027-01-15T08:00:05Z",
            },
            CLOCK_SLOW,
            5.0,
            None,
        ),
        # ... and an hour fast: still 5 s, not "in the past"
        (
            {
                "date": "Fri, 15 Jan 2027 08:00:00 GMT",
                "x-rate-limit-reset-at-utc": "2027-01-15T08:00:05Z",
            },
            MORNING + 3600,
            5.0,
            None,
        ),
        # an HTTP-date Retry-After is measured against Date too
        (
            {
                "Date": "Fri, 15 Jan 2027 08:00:00 GMT",
                "Retry-After": "Fri, 15 Jan 2027 08:00:20 GMT",
            },
            CLOCK_SLOW,
            20.0,
            None,
        ),
        # a Date within its own precision (whole seconds) of our clock: ours is finer
        (
            {
                "Date": "Fri, 15 Jan 2027 08:00:00 GMT",
                "x-rate-limit-reset-at-utc": "2027-01-15T08:00:05.5Z",
            },
            MORNING + 0.7,
            4.8,
            None,
        ),
        # without a Date, our clock is all there is
        ({"x-rate-limit-reset-at-utc": "2027-01-15T08:00:05Z"}, MORNING, 5.0, None),
        # an unreadable Date is no Date
        (
            {"Date": "yesterday", "x-rate-limit-reset-at-utc": "2027-01-15T08:00:05Z"},
            MORNING,
            5.0,
            None,
        ),
    ],
)
def test_server_wait_is_capped_and_read_against_the_answers_date(
    headers: dict[str, str], now: float, wait: float | None, note: str | None
) -> None:
    assert retry.server_wait(headers, now=now) == (pytest.approx(wait) if wait else None, note)


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
    assert retry.retry_delay(5, 3600.0) == retry.MAX_SERVER_WAIT_S
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
    assert pauses[0] == pytest.approx(4.0)  # the cool-down, then 0.1 s apart at 600/min
    assert now[0] == pytest.approx(104.0 + 4 * 0.1, abs=0.03)
    pacer.answered()
    assert pacer.throttled(None) == 2.0  # a success resets the streak
    assert pacer.throttled(7.0) == 7.0  # the server's Retry-After is honoured


def test_a_capped_wait_is_logged_once_until_a_success(caplog: pytest.LogCaptureFixture) -> None:
    note = "waiting 60 s: the service asked for 3600 s (Retry-After); capped"
    pacer = Pacer(600, clock=lambda: 0.0)
    with caplog.at_level("WARNING", logger="batchgen"):
        for _ in range(5):  # a storm of 429s, each asking for an hour
            assert pacer.throttled(60.0, note=note) == 60.0
        pacer.answered()  # an error answer: the storm goes on
        pacer.throttled(60.0, note=note)
        assert [r.getMessage() for r in caplog.records] == [note]
        pacer.answered(sent_at=0.0)  # a success ends it; the next storm is told again
        pacer.throttled(60.0, note=note)
    assert [r.getMessage() for r in caplog.records] == [note, note]
