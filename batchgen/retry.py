"""When to retry, how long to wait: small pure functions, table-tested.

All the numbers live in the constants block below.
"""

from __future__ import annotations

import email.utils
import enum
import random
import time
from collections.abc import Mapping
from typing import Final

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


class Verdict(enum.Enum):
    """What a failed attempt means for its job and for the run."""

    RETRY = "retry"  # try this job again after a backoff
    THROTTLED = "throttled"  # slow the whole pool down, then retry; not the job's fault
    FAIL_JOB = "fail_job"  # this job can never succeed as written
    STOP_RUN = "stop_run"  # every job would fail: stop dispatching, resumable later


_STOP_RUN: Final = frozenset({401, 403, 404, 406})
_RETRY: Final = frozenset({500, 502, 503, 504})
# A 502/504 may be answered after the work was done and billed (no idempotency key).
POSSIBLY_BILLED: Final = frozenset({502, 504})


def classify(status: int | None) -> Verdict:
    """Decide by HTTP status; None means a timeout or connection error."""
    if status is None or status in _RETRY:
        return Verdict.RETRY
    if status == 429:
        return Verdict.THROTTLED
    if status in _STOP_RUN:
        return Verdict.STOP_RUN
    return Verdict.FAIL_JOB


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or HTTP date) or Segmind's
    `x-rate-limit-reset-at-utc` (ISO-8601 or HTTP date); None when absent or unreadable."""
    now = time.time() if now is None else now
    value = _header(headers, "retry-after")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            return _seconds_until(value, now)
    value = _header(headers, "x-rate-limit-reset-at-utc")
    if value is not None:
        return _seconds_until(value, now)
    return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value.strip()
    return None


def _seconds_until(value: str, now: float) -> float | None:
    from datetime import UTC, datetime

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


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
    """The server's word wins when it gave one; otherwise our own backoff."""
    if retry_after is not None:
        return min(retry_after, BACKOFF_CAP_S * 5)
    return backoff_delay(attempt, rng=rng)
