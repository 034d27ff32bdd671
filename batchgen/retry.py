"""When to retry, how long to wait: small pure functions, table-tested.

All the numbers live in the constants block below.
"""

from __future__ import annotations

import email.utils
import enum
import math
import random
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

from batchgen.errors import AnswerProblem, ApiError, QueuedRequestLost, TransportError

MAX_ATTEMPTS: Final = 6  # tries per job that count: 5xx, timeouts, connection errors
MAX_THROTTLED: Final = 60  # 429 answers one job may see before it gives up
BACKOFF_BASE_S: Final = 1.0
BACKOFF_CAP_S: Final = 60.0
THROTTLE_COOLDOWN_S: Final = 2.0  # pool-wide pause after a 429 without Retry-After
RETRY_BUDGET_RATIO: Final = 0.2  # retries may add at most 20% over first attempts ...
RETRY_BUDGET_MIN: Final = 10  # ... plus this many, in ...
RETRY_BUDGET_WINDOW_S: Final = 60.0  # ... a sliding window of this length
REQUEST_TIMEOUT_S: Final = 120.0  # the model takes ~11 s; leave room for queueing upstream
CONNECT_TIMEOUT_S: Final = 15.0
MAX_SERVER_WAIT_S: Final = 60.0  # the longest single wait a Retry-After or reset-at may ask
MAX_RESPONSE_BYTES: Final = 50 * 1024 * 1024  # a 1024x1024 image is ~1 MB; read no further
MAX_STALE_RESENDS: Final = 3  # free resends per job after a dead kept-alive connection
# A server's close that crossed our request on the wire arrives within a round trip of the
# send; a kept-alive connection that dies later had its request read (maybe billed).
STALE_WINDOW_S: Final = 0.5
CLOCK_SKEW_S: Final = 2.0  # an answer's Date (whole seconds) further off: trust its clock
BREAKER_FAILURES: Final = 5  # outage failures in a row (at most --concurrency) open the breaker
BREAKER_PROBE_FIRST_S: Final = 1.0  # then one probe after this, doubling while it fails ...
BREAKER_PROBE_CAP_S: Final = 30.0  # ... up to this (each jittered to 50..100%)
OUTAGE_LIMIT_S: Final = 600.0  # --outage-limit: an outage this long stops the run


class Verdict(enum.Enum):
    """What a failed attempt means for its job and for the run."""

    RETRY = "retry"  # try this job again after a backoff
    RESEND = "resend"  # it never reached the service: send again at once, costs no attempt
    THROTTLED = "throttled"  # slow the whole pool down, then retry; not the job's fault
    FAIL_JOB = "fail_job"  # this job can never succeed as written
    FAIL_FOR_NOW = "fail_for_now"  # give up on it in this run; the next run tries again
    STOP_RUN = "stop_run"  # every job would fail: stop dispatching, resumable later


_STOP_RUN: Final = frozenset({401, 403, 404, 406})
_RETRY: Final = frozenset({500, 502, 503, 504})
# A 502/504 may be answered after the work was done and billed (no idempotency key).
POSSIBLY_BILLED: Final = frozenset({502, 504})
# What a gateway says when the service behind it is down; a 500 is the service itself.
_OUTAGE: Final = frozenset({502, 503, 504})


_FOR_PROBLEM: Final = {
    AnswerProblem.TRUNCATED: Verdict.RETRY,
    AnswerProblem.NOT_IMAGE: Verdict.FAIL_FOR_NOW,
    AnswerProblem.TOO_LARGE: Verdict.FAIL_JOB,
}


def classify(status: int | None) -> Verdict:
    """Decide by HTTP status; None means a timeout or connection error.

    A redirect stops the run: batchgen never follows one (the key would go wherever
    `Location` points), so every job would get the same answer."""
    if status is None or status in _RETRY:
        return Verdict.RETRY
    if status == 429:
        return Verdict.THROTTLED
    if status in _STOP_RUN or 300 <= status < 400:
        return Verdict.STOP_RUN
    return Verdict.FAIL_JOB


def verdict(error: ApiError) -> Verdict:
    """Decide for one failed attempt: by what was wrong with a 200, by whether the request
    ever reached the service, else by status."""
    if error.problem is not None:
        return _FOR_PROBLEM[error.problem]
    if isinstance(error, TransportError) and error.stale:
        return Verdict.RESEND
    return classify(error.status)


def is_outage(error: ApiError) -> bool:
    """The service looks unreachable, not broken: no answer at all (cannot connect, the
    connection lost, timed out) or a gateway's 502/503/504. The circuit breaker's
    business (`breaker.py`); a 500, answered by the service itself, is the retry budget's.
    A dead kept-alive connection (resent for free) says nothing about the service."""
    if isinstance(error, QueuedRequestLost):
        return False  # the submit was answered; its outcome is settled by its id
    if isinstance(error, TransportError):
        return not error.stale
    return error.problem is None and error.status in _OUTAGE


def outage_reason(error: ApiError) -> str:
    """An outage failure in a few words, for the message that ends a long outage."""
    if isinstance(error, TransportError):
        return error.reason
    return f"HTTP {error.status}"


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the service asks us to wait, uncapped, from `Retry-After` (seconds or an
    HTTP date) or Segmind's `x-rate-limit-reset-at-utc` (ISO-8601 or an HTTP date).

    None means "no hint" (use our own backoff): absent, unreadable, zero, negative,
    inf/nan, or a time already past. A date is a wall-clock time, so it is measured
    against the answer's own `Date` header when there is one: a client clock an hour
    slow must not turn a 5 s reset into a 3605 s stall. (Date counts whole seconds, so
    within CLOCK_SKEW_S of our clock ours is the finer one and is used.)"""
    return _asked_wait(headers, now)[0]


def server_wait(
    headers: Mapping[str, str], *, now: float | None = None
) -> tuple[float | None, str | None]:
    """The wait to honour (at most MAX_SERVER_WAIT_S) and, when it was capped, a note
    saying so in plain words; (None, None) when the answer gave no usable hint."""
    asked, source = _asked_wait(headers, now)
    if asked is None or asked <= MAX_SERVER_WAIT_S:
        return asked, None
    note = (
        f"waiting {MAX_SERVER_WAIT_S:g} s: the service asked for {asked:.0f} s ({source}); capped"
    )
    return MAX_SERVER_WAIT_S, note


def _asked_wait(headers: Mapping[str, str], now: float | None) -> tuple[float | None, str]:
    now = time.time() if now is None else now
    date = _header(headers, "date")
    served_at = _timestamp(date) if date is not None else None
    skewed = served_at is not None and abs(served_at - now) > CLOCK_SKEW_S
    reference = served_at if served_at is not None and skewed else now
    value = _header(headers, "retry-after")
    if value is not None:
        try:
            seconds: float | None = float(value)
        except ValueError:
            when = _timestamp(value)
            seconds = None if when is None else when - reference
        return _usable(seconds), "Retry-After"
    value = _header(headers, "x-rate-limit-reset-at-utc")
    if value is not None:
        when = _timestamp(value)
        return _usable(None if when is None else when - reference), "x-rate-limit-reset-at-utc"
    return None, ""


def _usable(seconds: float | None) -> float | None:
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value.strip()
    return None


def _timestamp(value: str) -> float | None:
    """An HTTP date or an ISO-8601 time as a POSIX timestamp (UTC when no zone is given)."""
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return iso_seconds(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def iso_seconds(value: str) -> float | None:
    """An ISO-8601 time (a `Z` or an offset; naive is UTC) as a POSIX timestamp, or None."""
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def backoff_delay(
    attempt: int,
    *,
    base: float = BACKOFF_BASE_S,
    cap: float = BACKOFF_CAP_S,
    rng: random.Random | None = None,
) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(attempt-1))).

    `attempt` is the 1-based number of the attempt that just failed.
    """
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(0, ceiling)


def retry_delay(
    attempt: int, retry_after: float | None, *, rng: random.Random | None = None
) -> float:
    """The server's word wins when it gave one (at most MAX_SERVER_WAIT_S); otherwise
    our own backoff."""
    if retry_after is not None:
        return min(retry_after, MAX_SERVER_WAIT_S)
    return backoff_delay(attempt, rng=rng)
