"""The request history: what was billed, with the inputs as sent. The key is required.

    GET /inference-request/request-history   ?page=1&per_page=20 (1..100)
        &from_date=YYYY-MM-DD&to_date=YYYY-MM-DD (UTC, inclusive; at most 31 days; default the
        last 7 days to today) &model_name=... (a substring) &status=COMPLETED|FAILED|PENDING
        &sort_order=desc|asc (default desc: newest first)
        -> {"data": [row, ...], "page", "per_page", "total"}
    GET /inference-request/request-history/{request_id}   one row, any age; 404 if none

A row: request_id, model_name, model_status, credits_deduction (USD; 0 unless billed),
request_body (as sent), generation_url (the public output, for COMPLETED), latency_ms,
created_at (ISO 8601 UTC) and, for failures, error. It covers v1 and v2 requests alike; a row
shows history_lag seconds after the request starts, and each change to it that long after the
change (the real service allows up to 30 s).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from aiohttp import web

from batchgen.emulator.gateway import check_key
from batchgen.emulator.records import HISTORY_STATUSES, Record, iso_utc
from batchgen.emulator.state import STATE, Refusal, State
from batchgen.emulator.storage import output_url

PATH: Final = "/inference-request/request-history"
MAX_PER_PAGE: Final = 100
DEFAULT_PER_PAGE: Final = 20
MAX_WINDOW_DAYS: Final = 31
DEFAULT_WINDOW: Final = timedelta(days=7)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(PATH, _list)
    router.add_get(PATH + "/{request_id}", _one)


async def _list(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        check_key(request, state)
        state.stats.history_calls += 1
        query = _Query(request.query, state.now())
    except Refusal as refusal:
        return refusal.response()
    moment = state.now() - state.config.history_lag
    records = state.records.newest_first() if query.newest_first else state.records.oldest_first()
    matches = [
        (record, status)
        for record in records
        if (status := record.status_at(moment)) is not None and query.matches(record, status)
    ]
    start = (query.page - 1) * query.per_page
    rows = [_row(request, state, r, s) for r, s in matches[start : start + query.per_page]]
    answer = {"data": rows, "page": query.page, "per_page": query.per_page, "total": len(matches)}
    return web.json_response(answer)


async def _one(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        check_key(request, state)
    except Refusal as refusal:
        return refusal.response()
    state.stats.history_calls += 1
    record = state.records.get(request.match_info["request_id"])
    status = None if record is None else record.status_at(state.now() - state.config.history_lag)
    if record is None or status is None:
        return web.json_response({"error": "Request not found"}, status=404)
    return web.json_response(_row(request, state, record, status))


class _Query:
    """The history's query parameters, checked: 400 naming the parameter otherwise."""

    def __init__(self, params: Any, now: float) -> None:
        self.page = _integer(params, "page", 1, 1, None)
        self.per_page = _integer(params, "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
        today = datetime.fromtimestamp(now, UTC).date()
        self.to_date = _date(params, "to_date") or today
        self.from_date = _date(params, "from_date") or self.to_date - DEFAULT_WINDOW
        if self.from_date > self.to_date:
            raise Refusal(400, "from_date must not be after to_date")
        if (self.to_date - self.from_date).days + 1 > MAX_WINDOW_DAYS:
            raise Refusal(400, f"the date window may span at most {MAX_WINDOW_DAYS} days")
        self.model_name = params.get("model_name") or None
        self.status = params.get("status") or None
        if self.status is not None and self.status not in HISTORY_STATUSES:
            raise Refusal(400, f"status must be one of {', '.join(HISTORY_STATUSES)}")
        order = params.get("sort_order", "desc")
        if order not in ("desc", "asc"):
            raise Refusal(400, "sort_order must be desc or asc")
        self.newest_first = order == "desc"

    def matches(self, record: Record, status: str) -> bool:
        day = datetime.fromtimestamp(record.created_at, UTC).date()
        return (
            self.from_date <= day <= self.to_date
            and (self.model_name is None or self.model_name in record.model)
            and (self.status is None or status == self.status)
        )


def _integer(params: Any, name: str, default: int, low: int, high: int | None) -> int:
    text = params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise Refusal(400, f"{name} must be an integer {bounds}, not {text!r}")
    return value


def _date(params: Any, name: str) -> date | None:
    text = params.get(name)
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise Refusal(400, f"{name} must be a date YYYY-MM-DD, not {text!r}") from None


def _row(request: web.Request, state: State, record: Record, status: str) -> dict[str, Any]:
    completed = status == "COMPLETED"
    row: dict[str, Any] = {
        "request_id": record.request_id,
        "model_name": record.model,
        "model_status": status,
        "credits_deduction": record.cost if completed else 0,
        "request_body": record.body,
        "generation_url": output_url(request, state, record) if completed else None,
        "latency_ms": None,
        "created_at": iso_utc(record.created_at),
    }
    if status != "PENDING" and record.finished_at is not None:
        row["latency_ms"] = round((record.finished_at - record.created_at) * 1000)
    if status == "FAILED":
        row["error"] = record.error
    return row
