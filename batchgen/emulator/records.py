"""What the service remembers of each request that reached the model: one `Record` per request,
v1 or v2, kept for the request history (any age), the output URLs (`output_ttl`) and the v2
status and result URLs (`record_ttl`).

Memory stays bounded by what is distinct: a body is kept as sent, but an `image_file` string
that many requests share (a 5 MB image used by 1,000 jobs) is kept once, and no image bytes are
kept at all: an output is drawn again from its record when fetched (pictures are deterministic).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

Api = Literal["v1", "v2"]
State = Literal["QUEUED", "PROCESSING", "COMPLETED", "FAILED"]
HISTORY_STATUSES: Final = ("COMPLETED", "FAILED", "PENDING")
_INTERN_ABOVE: Final = 1024  # image_file strings longer than this are kept once


@dataclass(slots=True, eq=False)
class Record:
    """One request that reached the model. Times are wall-clock seconds."""

    request_id: str
    api: Api
    model: str
    body: dict[str, Any]  # as sent
    fingerprint: str
    seed: int
    created_at: float
    status: State
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    cost: float = 0.0
    remaining_credits: float | None = None

    def start(self, now: float) -> None:
        self.status, self.started_at = "PROCESSING", now

    def complete(self, now: float, cost: float, remaining_credits: float | None) -> None:
        self.status, self.finished_at = "COMPLETED", now
        self.cost, self.remaining_credits = cost, remaining_credits

    def fail(self, now: float, error: str) -> None:
        self.status, self.finished_at, self.error = "FAILED", now, error

    def status_at(self, moment: float) -> str | None:
        """The history's status for this request as it stood at `moment`; None: no row yet."""
        if self.created_at > moment:
            return None
        if self.finished_at is not None and self.finished_at <= moment:
            return self.status
        return "PENDING"


def iso_utc(moment: float) -> str:
    stamp = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class Records:
    """Every record by id and in order of arrival, plus the v2 ones still live (pollable)."""

    def __init__(self, *, record_ttl: float, wall_clock: Callable[[], float]) -> None:
        self._ttl = record_ttl
        self._now = wall_clock
        self._all: list[Record] = []
        self._by_id: dict[str, Record] = {}
        self._live: dict[str, Record] = {}
        self._expiry: deque[tuple[float, str]] = deque()
        self._images: dict[str, str] = {}

    def open(
        self,
        *,
        request_id: str,
        api: Api,
        model: str,
        body: Mapping[str, Any],
        fingerprint: str,
        seed: int,
    ) -> Record:
        now = self._now()
        stored = dict(body)
        image = stored.get("image_file")
        if isinstance(image, str) and len(image) > _INTERN_ABOVE:
            stored["image_file"] = self._images.setdefault(image, image)
        status: State = "QUEUED" if api == "v2" else "PROCESSING"
        record = Record(request_id, api, model, stored, fingerprint, seed, now, status)
        if api == "v1":
            record.started_at = now
        self._all.append(record)
        self._by_id[request_id] = record
        if api == "v2":
            self._expire(now)
            self._live[request_id] = record
            self._expiry.append((now + self._ttl, request_id))
        return record

    def get(self, request_id: str) -> Record | None:
        """Any record, of any age (the history and the outputs)."""
        return self._by_id.get(request_id)

    def live(self, request_id: str) -> Record | None:
        """A v2 record whose status and result URLs still answer."""
        self._expire(self._now())
        return self._live.get(request_id)

    def newest_first(self) -> Iterator[Record]:
        return reversed(self._all)

    def oldest_first(self) -> Iterator[Record]:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def _expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, request_id = self._expiry.popleft()
            self._live.pop(request_id, None)
