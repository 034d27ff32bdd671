"""Every exception batchgen raises on purpose.

    BatchgenError
    ├── InputError            bad manifest, CSV, flag or file: exit 2, nothing sent
    │                         (carries a list of Problem, all reported together)
    ├── LedgerError           a ledger that cannot be trusted (corrupt middle line)
    ├── LockedError           another run holds the ledger's lock: exit 3, nothing sent
    ├── ServiceError          a side surface (the credit balance) refused the key or
    │                         could not be reached: exit 3, nothing sent
    └── ApiError              something the service (or the wire) said
        ├── ApiStatusError    a non-200 answer: status, message, retry_after
        │   └── BadAnswerError  a 200 that is not a whole image: billed all the same
        └── TransportError    timeout or connection failure; may have been billed
            │                 (`sent`), or never reached the service (`stale`)
            └── QueuedRequestLost  a v2 request was queued (it will bill) but its
                              answer could not be had by polling: settle it by its id

Whether an ApiError is retried, fails the job, or stops the whole run is decided
in one place, `retry.verdict` (by status, by what was wrong with a 200, by whether
the request reached the service), not by the exception type.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One rule broken by one value, located as precisely as we know."""

    where: str  # "jobs/night.yaml:12" or "jobs/rows.csv row 3"
    key: str  # the parameter or manifest key, "" when the whole file is at fault
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class BatchgenError(Exception):
    """Base of every error batchgen raises on purpose."""


class InputError(BatchgenError):
    """The user's input is wrong. Carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("", "", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class LedgerError(BatchgenError):
    """The ledger cannot be read safely; resuming from it could pay twice."""


class LockedError(BatchgenError):
    """Another run holds the lock on the ledger this run would write (`runlock`).
    Nothing was read or sent: running now would resume from state that run is changing,
    and pay twice for whatever both sent."""


class ServiceError(BatchgenError):
    """A call beside the generation API (the credit balance) that the service refused or
    that could not reach it. The message names the status or the failure, never the key."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class ApiError(BatchgenError):
    """The service, or the network on the way to it, did not give us an image."""

    status: int | None = None  # the HTTP status, when the service answered
    retry_after: float | None = None  # seconds to wait, as the service asked (capped)
    wait_note: str | None = None  # why that wait differs from what was asked, in words
    problem: AnswerProblem | None = None  # what was wrong with a 200, for BadAnswerError


class ApiStatusError(ApiError):
    """A non-200 answer from the service."""

    status: int

    def __init__(
        self,
        status: int,
        message: str,
        retry_after: float | None = None,
        wait_note: str | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.wait_note = wait_note
        super().__init__(f"HTTP {status}: {message}")

    @classmethod
    def from_response(
        cls, status: int, body: bytes, headers: Mapping[str, str], *, now: float | None = None
    ) -> ApiStatusError:
        """Build from a raw answer: JSON `{"error": ...}` when present, else the text."""
        from batchgen.retry import server_wait  # local: retry imports errors

        message = _error_message(body)
        retry_after, note = server_wait(headers, now=now)
        return cls(status, message, retry_after, note)


class AnswerProblem(enum.Enum):
    """Why a 200 answer is not an image we can keep. Every one was billed."""

    TRUNCATED = "truncated"  # cut short or undecodable: the bytes were lost, try again
    NOT_IMAGE = "not_image"  # HTML, JSON, empty: fail the job now; the next run tries again
    TOO_LARGE = "too_large"  # over the response cap: fail the job; resending pays again


class BadAnswerError(ApiStatusError):
    """A 200 whose body is not a whole image. The service billed it all the same.
    `request_id`: the answer's `x-request-id`, by which the request history has the
    image a cut-off body lost; `cost`: what its `x-cost` says was charged."""

    problem: AnswerProblem
    request_id: str | None = None
    cost: float | None = None

    def __init__(self, problem: AnswerProblem, message: str) -> None:
        super().__init__(200, message)
        self.problem = problem


class TransportError(ApiError):
    """Timeout or connection failure. `sent` tells whether the request may have reached
    the service; `stale` that it went out on a kept-alive connection the server had
    already given up on (closed before any byte of an answer): it was never processed."""

    def __init__(
        self, message: str, *, sent: bool, stale: bool = False, reason: str | None = None
    ) -> None:
        self.sent = sent
        self.stale = stale
        self.reason = reason or message  # in a few words: "connection refused", "timed out"
        super().__init__(message)


class QueuedRequestLost(TransportError):
    """A v2 request the service queued (so it will complete and bill) whose outcome could
    not be had by polling (its record expired, or the polls kept failing). Possibly
    billed, and not an outage: sending it again might pay twice, so it is settled by its
    `request_id` from the request history instead."""

    def __init__(self, message: str, *, request_id: str) -> None:
        super().__init__(message, sent=True, reason="lost track of a queued request")
        self.request_id = request_id


def _error_message(body: bytes) -> str:
    text = body[:2000].decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text or "(empty body)"
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            if key in data:
                return str(data[key])
    return text


def failure_text(status: int | None, message: str) -> str:
    """How a failure reads to a person: `HTTP 400: bad seed`, or the message alone
    when the service never answered (a timeout, a connection error)."""
    return f"HTTP {status}: {message}" if status else message
