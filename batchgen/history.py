"""A small client of Segmind's request history (shared/api/segmind-surfaces.md): what the
service billed, with each request's body as sent, and the public output images.

    GET {history_base}/inference-request/request-history
        ?page=N&per_page=100&from_date=YYYY-MM-DD&to_date=YYYY-MM-DD&model_name=...
    GET {history_base}/inference-request/request-history/{request_id}

Both take the key (`x-api-key`) and never follow a redirect (the key goes to the history
host only). Answers are read under every accepted wrapper: `{"data": [...]}`,
`{"items": [...]}` or a bare list; rows are de-duplicated on `request_id` (a request with
several outputs appears once per output). A `generation_url` is public: it is fetched
without the key (redirects followed, since no key travels), read up to a size cap, and
checked as the v1 client checks an answer (`api.image_problem`).

Anything that means "the history cannot tell us" (401, 403, 404 on the list, other
non-200 answers, connection errors, timeouts, an answer that is not JSON rows) raises
`HistoryUnavailable`: the settlement engine turns it into a typed result, and callers
warn once and carry on as they would without a history.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aiohttp

from batchgen import api, refusals, retry

HISTORY_BASE: Final = "https://api.spotprod.segmind.com"
PATH: Final = "/inference-request/request-history"
PER_PAGE: Final = 100
MAX_WINDOW_DAYS: Final = 31  # the service refuses a wider date window
MAX_PAGES: Final = 200  # 20,000 rows: far more than one night's window of a key
TIMEOUT_S: Final = 30.0
USER_AGENT: Final = "batchgen"
READ_CHUNK: Final = 256 * 1024


class HistoryUnavailable(Exception):
    """The history could not be read (refused, unreachable, or not making sense)."""


class DownloadError(Exception):
    """A public output could not be fetched whole (expired, not an image, too large)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One request as the history reports it."""

    request_id: str
    status: str  # COMPLETED | FAILED | PENDING (anything else is kept as given)
    cost: float  # credits_deduction: USD charged, 0 unless billed
    body: Mapping[str, Any] | None  # the request body as sent
    generation_url: str | None
    created_at: float | None  # epoch seconds, UTC
    model: str | None = None
    error: str | None = None


def history_base(given: str | None = None) -> str:
    """`given`, else $SEGMIND_HISTORY_BASE, else Segmind's."""
    base = given or os.environ.get("SEGMIND_HISTORY_BASE") or HISTORY_BASE
    return base.strip().rstrip("/")


def parse_time(text: object) -> float | None:
    """An ISO 8601 time (a `Z` or an offset; naive is UTC) as epoch seconds; None if not one."""
    if not isinstance(text, str) or not text:
        return None
    return retry.iso_seconds(text)


def parse_row(value: object) -> Row | None:
    """A row from its JSON, or None when it has no request id."""
    if not isinstance(value, Mapping):
        return None
    request_id = value.get("request_id") or value.get("id")
    if not isinstance(request_id, str) or not request_id:
        return None
    body = value.get("request_body")
    if isinstance(body, str):  # some services keep the body as a JSON string
        try:
            body = json.loads(body)
        except ValueError:
            body = None
    try:
        cost = float(value.get("credits_deduction") or 0.0)
    except (TypeError, ValueError):
        cost = 0.0
    url = value.get("generation_url")
    if isinstance(url, list):
        url = url[0] if url else None
    status = value.get("model_status") or value.get("status")
    model = value.get("model_name")
    error = value.get("error")
    return Row(
        request_id=request_id,
        status=str(status).upper() if status is not None else "PENDING",
        cost=cost,
        body=body if isinstance(body, Mapping) else None,
        generation_url=url if isinstance(url, str) and url else None,
        created_at=parse_time(value.get("created_at")),
        model=model if isinstance(model, str) else None,
        error=error if isinstance(error, str) else None,
    )


def rows_of(answer: object) -> tuple[list[Row], int | None]:
    """The rows of one page under any accepted wrapper, and the `total` when given."""
    total = None
    if isinstance(answer, list):
        items: object = answer
    elif isinstance(answer, Mapping):
        items = next((answer[k] for k in ("data", "items", "rows") if k in answer), None)
        if isinstance(items, Mapping):  # {"data": {"items": [...]}}
            items = next((items[k] for k in ("items", "data", "rows") if k in items), None)
        raw_total = answer.get("total")
        total = raw_total if isinstance(raw_total, int) else None
    else:
        items = None
    if not isinstance(items, list):
        raise HistoryUnavailable("the request history answered something that is not rows")
    return [row for item in items if (row := parse_row(item)) is not None], total


def dedupe(rows: Iterable[Row]) -> list[Row]:
    """One row per request id, the first seen kept (pages come newest first)."""
    seen: dict[str, Row] = {}
    for row in rows:
        seen.setdefault(row.request_id, row)
    return list(seen.values())


class History:
    """The request history of one key, and the public outputs. Use as `async with`."""

    def __init__(
        self,
        *,
        api_key: str,
        base: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = TIMEOUT_S,
        max_bytes: int = retry.MAX_RESPONSE_BYTES,
    ) -> None:
        self.base = history_base(base)
        self._key = api_key
        self._own = session is None
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.max_bytes = max_bytes
        self.calls = 0

    async def __aenter__(self) -> History:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._own and self._session is not None:
            await self._session.close()

    @property
    def key(self) -> str:
        return self._key

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use History as `async with`"
        return self._session

    async def _get_json(
        self, url: str, params: Mapping[str, str] | None = None, *, missing_ok: bool = False
    ) -> Any:
        """The JSON of a keyed GET; None for a 404 when `missing_ok` (one row by id).
        Raises HistoryUnavailable."""
        self.calls += 1
        try:
            async with self.session.get(
                url,
                params=params,
                headers={"x-api-key": self._key, "Accept": "application/json"},
                allow_redirects=False,  # the key goes to the history host only
                timeout=self._timeout,
            ) as response:
                if response.status == 404 and missing_ok:
                    return None
                if response.status != 200:
                    raise HistoryUnavailable(_refusal(response.status, self.base))
                return json.loads(await response.read())
        except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError) as err:
            raise HistoryUnavailable(
                f"the request history at {self.base} cannot be reached ({type(err).__name__})"
            ) from None
        except ValueError:
            raise HistoryUnavailable(
                "the request history answered something that is not JSON"
            ) from None

    async def scan(self, *, since: float, until: float, model: str | None = None) -> list[Row]:
        """Every row created at or after `since` (epoch seconds), newest first, paging
        100 at a time within the dates of [since, until] and stopping at the first
        page that reaches back past `since`. De-duplicated on request id."""
        start = datetime.fromtimestamp(since, UTC).date()
        end = datetime.fromtimestamp(until, UTC).date() + timedelta(days=1)  # clocks differ
        start = max(start, end - timedelta(days=MAX_WINDOW_DAYS - 1))
        params = {"per_page": str(PER_PAGE), "from_date": start.isoformat(),
                  "to_date": end.isoformat()}  # fmt: skip
        if model:
            params["model_name"] = model
        rows: list[Row] = []
        for page in range(1, MAX_PAGES + 1):
            answer = await self._get_json(f"{self.base}{PATH}", {**params, "page": str(page)})
            found, total = rows_of(answer)
            rows += found
            if not found or (len(found) < PER_PAGE and total is None):
                break
            if total is not None and page * PER_PAGE >= total:
                break
            times = [row.created_at for row in found if row.created_at is not None]
            if times and min(times) < since:
                break  # newest first: the rest is older than the window
        return [row for row in dedupe(rows) if row.created_at is None or row.created_at >= since]

    async def row(self, request_id: str) -> Row | None:
        """One row by its id; None when the history has none (404)."""
        url = f"{self.base}{PATH}/{request_id}"
        answer = await self._get_json(url, missing_ok=True)
        if isinstance(answer, Mapping) and isinstance(answer.get("data"), Mapping):
            answer = answer["data"]
        return parse_row(answer)

    async def download(self, url: str) -> bytes:
        """The public output at `url`, without the key: a whole image, at most
        `max_bytes`. Raises DownloadError."""
        return await download(self.session, url, timeout=self._timeout, max_bytes=self.max_bytes)


async def download(
    session: aiohttp.ClientSession,
    url: str,
    *,
    timeout: aiohttp.ClientTimeout | None = None,  # noqa: ASYNC109 (aiohttp's, per request)
    max_bytes: int = retry.MAX_RESPONSE_BYTES,
) -> bytes:
    """A public output image at `url`, fetched WITHOUT the key (no x-api-key header; the
    session must not carry one), redirects followed since no key travels: a whole image
    (`api.image_problem`), at most `max_bytes`. Raises DownloadError."""
    if not api.is_url(url):
        raise DownloadError(f"the output URL {url!r} is not an http(s) URL")
    try:
        async with session.get(
            url, timeout=timeout or aiohttp.ClientTimeout(total=TIMEOUT_S)
        ) as response:
            if response.status != 200:
                raise DownloadError(f"the output answered HTTP {response.status}")
            declared = response.content_length
            if declared is not None and declared > max_bytes:
                raise DownloadError(f"the output is {declared:,} bytes; the cap is {max_bytes:,}")
            data = bytearray()
            while chunk := await response.content.read(READ_CHUNK):
                data += chunk
                if len(data) > max_bytes:
                    raise DownloadError(f"the output went past the cap of {max_bytes:,} bytes")
    except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError) as err:
        raise DownloadError(f"the output could not be fetched ({type(err).__name__})") from None
    payload = bytes(data)
    if declared is not None and len(payload) != declared:
        raise DownloadError(f"the output is {len(payload):,} of {declared:,} bytes")
    problem = api.image_problem(payload)
    if problem is not None:
        raise DownloadError(problem)
    return payload


def _refusal(status: int, base: str) -> str:
    return refusals.refusal(f"the request history at {base}", status, forbidden="read it",
                            missing="not found there", host="history")  # fmt: skip
