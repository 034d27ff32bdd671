"""What the runner tells the outside world, as frozen values to a callback.

The runner never imports tqdm: the CLI turns these into a progress bar or log lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batchgen.planning import Plan
from batchgen.stops import StopReason

if TYPE_CHECKING:
    from batchgen.settle import SettleReport


@dataclass(frozen=True, slots=True)
class JobStarted:
    job_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class JobRetrying:
    job_id: str
    attempt: int
    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class JobThrottled:
    job_id: str
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class JobFinished:
    job_id: str
    ok: bool
    cost: float
    output: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class LockWaiting:
    """Another run holds the ledger; this one waits for it (`wait_lock`)."""

    message: str


@dataclass(frozen=True, slots=True)
class RunPlanned:
    """Everything is checked and the lock is held; nothing is sent yet. `cut_in_flight`:
    when the ledger's last run never ended (killed), its requests left without an
    outcome (they may have been billed); None when it ended."""

    plan: Plan
    cut_in_flight: int | None


@dataclass(frozen=True, slots=True)
class RunStopping:
    message: str
    reason: StopReason


@dataclass(frozen=True, slots=True)
class Settled:
    """Before anything is sent: what the request history settled of earlier attempts
    (`report.unavailable` says why it could not, and the run goes on without it)."""

    report: SettleReport


@dataclass(frozen=True, slots=True)
class ImagesUploaded:
    """`upload_images`: before anything is sent, the local images of the jobs to run were
    uploaded (`uploaded` of them now, `bytes` in all; `cached` uploaded before)."""

    uploaded: int
    bytes: int
    cached: int


Event = (
    LockWaiting
    | Settled
    | RunPlanned
    | ImagesUploaded
    | JobStarted
    | JobRetrying
    | JobThrottled
    | JobFinished
    | RunStopping
)
Listener = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The listener for callers that do not care."""
