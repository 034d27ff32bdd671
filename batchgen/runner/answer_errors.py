"""What an error answer tells the runner: the (status, text) its failure is counted
under, whether it was billed, and the reason a run-stopping one gives. Pure."""

from __future__ import annotations

from batchgen import refusals, retry, stops
from batchgen.errors import ApiError, ApiStatusError, TransportError
from batchgen.ledger.schema import Billed
from batchgen.stops import StopReason


def describe_error(error: ApiError) -> tuple[int | None, str]:
    if isinstance(error, ApiStatusError):
        return error.status, error.message
    return None, str(error)


def was_billed(error: ApiError) -> Billed:
    if isinstance(error, TransportError):
        return "maybe" if error.sent else "no"
    if isinstance(error, ApiStatusError):
        if error.status == 200:
            return "billed"  # a 200 that is not a whole image was billed all the same
        if error.status in retry.POSSIBLY_BILLED:
            return "maybe"
    return "no"


def stop_reason(error: ApiError) -> tuple[StopReason, str]:
    if not isinstance(error, ApiStatusError):
        return StopReason.SERVICE, str(error)
    kind = stops.for_status(error.status)
    if kind is StopReason.REDIRECT:
        return kind, error.message  # names the status and where it pointed, never the key
    meaning = refusals.meaning(error.status, forbidden="use this model",
                               missing="the model or endpoint was not found")  # fmt: skip
    reason = f"{meaning} (HTTP {error.status})" if meaning else f"HTTP {error.status}"
    return kind, f"{reason}: {error.message}"
