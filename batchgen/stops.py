"""Why a run stopped early: a typed reason and the words for it.

The runner says why it stops once, at the source, as a `Stop`; the CLI maps the
reason to an exit code in one table, and a library user can branch on it instead
of parsing a message. Every reason leaves a resumable run: rerun the same
command (after fixing the key, topping up credits, freeing disk space...).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StopReason(enum.Enum):
    BUDGET = "budget"  # --max-cost reached
    CREDITS = "credits"  # the account has no credits left (HTTP 406)
    AUTH = "auth"  # the key was refused or may not use the model (HTTP 401, 403)
    NOT_FOUND = "not_found"  # the model or endpoint does not exist (HTTP 404)
    REDIRECT = "redirect"  # the API answered a redirect: never followed, the key stays home
    RETRY_BUDGET = "retry_budget"  # the service keeps failing: retries would storm it
    OUTAGE = "outage"  # the service was unreachable for longer than --outage-limit
    SIGNAL = "signal"  # SIGINT or SIGTERM: in-flight requests finished
    ABORTED = "aborted"  # a second signal: in-flight requests were cut
    WRITE_FAILURE = "write_failure"  # an image or the ledger could not be written
    NOT_CONFIRMED = "not_confirmed"  # the person at the terminal said no: nothing sent
    SERVICE = "service"  # any other answer that makes every job fail
    UPLOAD = "upload"  # --upload-images: the images could not be uploaded; nothing sent
    UNSETTLED = "unsettled"  # ran to its end, but left jobs whose request may still be
    # billed: the next run settles them from the request history first


@dataclass(frozen=True, slots=True)
class Stop:
    reason: StopReason
    message: str

    def __str__(self) -> str:
        return self.message


def for_status(status: int) -> StopReason:
    """The reason a run-stopping HTTP status stands for."""
    if 300 <= status < 400:
        return StopReason.REDIRECT
    return {401: StopReason.AUTH, 403: StopReason.AUTH, 404: StopReason.NOT_FOUND,
            406: StopReason.CREDITS}.get(status, StopReason.SERVICE)  # fmt: skip
